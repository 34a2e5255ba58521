"""``features``: market.raw -> engineered (``FeatureEvent``), per-symbol streaming state.

State is a ``FeatureEngine`` (one ``FeatureState`` per symbol and bar type), warmed up
from the ``bars`` table the first time a symbol is seen, so a restarted service emits
the same values as one that never stopped (see ``awet_dagster.streaming.state``).
Stale/duplicate bars are skipped (counted in ``engine.counters``); a bar whose handling
raises goes to the DLQ (bus); a DB outage during warm-up is ``RetryLater``.

Warm-up reads bars written by ``persist_bars``; right after a restart that service may
lag behind this one by a few bars, in which case warm-up sees a shorter history (the
values then differ from an uninterrupted run only through the EMA seeds, which fade).
"""
from __future__ import annotations

from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import FeatureEvent, MarketRawEvent
from awet_dagster.contracts.topics import ENGINEERED, MARKET_RAW
from awet_dagster.streaming import DEFAULT_WARMUP_BARS, FeatureEngine
from awet_kafka.bus import MessageContext
from awet_dagster.streaming.outputs import Output
from live.services._common import (
    LazyConnection,
    LiveService,
    batch_warm_up,
    contract_of,
    db_settings,
    history_reader,
    make_bus,
    time_guard,
)

NAME = "features"


def build(cfg: AwetConfig, endpoints: Any, *, input_topic: str = MARKET_RAW, output_topic: str = ENGINEERED,
          group: str | None = None, name: str = NAME, warmup_bars: int = DEFAULT_WARMUP_BARS,
          **bus_kwargs: Any) -> LiveService:
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    engine = FeatureEngine(history_reader(conn), warmup_bars=warmup_bars)

    def handle(event: MarketRawEvent, ctx: MessageContext) -> list[Output]:
        out = engine.on_bar(event)
        return [Output(output_topic, out)] if out is not None else []

    # Validate the output wiring at start-up: a registered topic must carry FeatureEvent.
    if contract_of(output_topic, FeatureEvent) is not FeatureEvent:
        raise ValueError(f"topic {output_topic!r} does not carry FeatureEvent")
    model = contract_of(input_topic, MarketRawEvent)
    guard = time_guard(cfg)
    return make_bus(
        cfg, endpoints, name=name, topics={input_topic: model}, handler=handle, group=group, guard=guard,
        before_batch=batch_warm_up(engine, conn, model, guard), resources=[conn], component=engine, **bus_kwargs,
    )
