"""``lean_alpha``: market.raw -> alpha.signals (contract ``AlphaSignal``), on state change only.

Runs Lean's RSI, EMA-cross and MACD alpha models per symbol (``AlphaBank``), warmed up
from the ``bars`` table on first sight of a symbol (warm-up feeds the models without
emitting, so a restart does not re-announce a signal the previous instance already
published). Same stale-bar, DLQ and RetryLater rules as the features service.
"""
from __future__ import annotations

from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import AlphaSignal, MarketRawEvent
from awet_dagster.contracts.topics import ALPHA_SIGNALS, MARKET_RAW
from awet_dagster.streaming import DEFAULT_WARMUP_BARS, AlphaBank
from awet_dagster.streaming.state import ALPHA_MODELS
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

NAME = "lean_alpha"


def build(cfg: AwetConfig, endpoints: Any, *, input_topic: str = MARKET_RAW, output_topic: str = ALPHA_SIGNALS,
          group: str | None = None, name: str = NAME, kinds: tuple[str, ...] = tuple(ALPHA_MODELS),
          warmup_bars: int = DEFAULT_WARMUP_BARS, **bus_kwargs: Any) -> LiveService:
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    bank = AlphaBank(history_reader(conn), kinds=kinds, warmup_bars=warmup_bars)

    def handle(event: MarketRawEvent, ctx: MessageContext) -> list[Output]:
        return [Output(output_topic, sig) for sig in bank.on_bar(event)]

    if contract_of(output_topic, AlphaSignal) is not AlphaSignal:
        raise ValueError(f"topic {output_topic!r} does not carry AlphaSignal")
    model = contract_of(input_topic, MarketRawEvent)
    guard = time_guard(cfg)
    return make_bus(
        cfg, endpoints, name=name, topics={input_topic: model}, handler=handle, group=group, guard=guard,
        before_batch=batch_warm_up(bank, conn, model, guard), resources=[conn], component=bank, **bus_kwargs,
    )
