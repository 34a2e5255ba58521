"""``signal``: market.raw (+ predictions, alpha.signals) -> signals.scored, persisted in ``signals``.

Wiring for the core ``BarScorer`` (``awet_dagster.signals.scorer``, whose module doc tells
the rules: one signal per bar, the forecast and alpha-mark waits, calibration, runtime
weights, warm-up) over ``PostgresSignalStore``. Predictions and (``signals.alpha_source:
topic``) alpha.signals reach it through a side ``TopicTail``. A batch's new symbols are
warmed up with one bars read before it is handled; its signals are written to ``signals``
before the Kafka commit (DB commit first, like persist_bars). A DB outage is RetryLater.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import AlphaSignal, MarketRawEvent, Prediction, ScoredSignal
from awet_dagster.contracts.topics import ALPHA_SIGNALS, MARKET_RAW, PREDICTIONS, SIGNALS_SCORED
from awet_dagster.inference import ModelCalibrations
from awet_dagster.signals.scorer import BarScorer
from awet_dagster.storage.signals import PostgresSignalStore
from awet_dagster.streaming import DEFAULT_WARMUP_BARS
from awet_kafka.bus import MessageContext
from awet_dagster.streaming.outputs import Output
from live.services._common import (
    LazyConnection,
    LiveService,
    TailSideInputs,
    contract_of,
    db_outage_is_retry,
    db_settings,
    make_bus,
    tail_for,
    time_guard,
    unseen_first,
)

NAME = "signal"


def build(cfg: AwetConfig, endpoints: Any, *, input_topic: str = MARKET_RAW, output_topic: str = SIGNALS_SCORED,
          predictions_topic: str | None = PREDICTIONS, alpha_topic: str = ALPHA_SIGNALS,
          alpha_source: str | None = None, group: str | None = None, name: str = NAME,
          weights_file: Path | None = None, warmup_bars: int = DEFAULT_WARMUP_BARS,
          prediction_wait_s: float | None = None, tracker: Any = None,
          calibrations: ModelCalibrations | None = None, **bus_kwargs: Any) -> LiveService:
    """``predictions_topic=None``: no model input at all (alphas-only, no side reader).
    ``calibrations``: where model calibrators come from (default: the MLflow registry)."""
    if calibrations is None:
        # Here, not at the top: the model package costs 1-2 s to import (numba, polars kernels).
        from awet_dagster.model.registry import ModelRegistry

        calibrations = ModelCalibrations(ModelRegistry(cfg))
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    scorer = BarScorer(cfg, PostgresSignalStore(conn.get), output_topic=output_topic, guard=time_guard(cfg),
                       alpha_source=alpha_source, weights_file=weights_file, warmup_bars=warmup_bars,
                       prediction_wait_s=prediction_wait_s,
                       calibrations=calibrations)
    model = contract_of(input_topic, MarketRawEvent)
    if contract_of(output_topic, ScoredSignal) is not ScoredSignal:
        raise ValueError(f"topic {output_topic!r} does not carry ScoredSignal")
    if tracker is not None:
        bus_kwargs.setdefault("on_metrics", tracker.hook(name, [input_topic]))
    side: dict[str, Any] = {}
    if predictions_topic:
        side[predictions_topic] = contract_of(predictions_topic, Prediction)
    if scorer.alpha_source == "topic":
        side[alpha_topic] = contract_of(alpha_topic, AlphaSignal)

    def handle(event: Any, ctx: MessageContext) -> list[Output]:
        with db_outage_is_retry(conn, "bars table unavailable for warm-up"):
            return scorer.handle(event)

    def before_batch(batch: Sequence[Any]) -> None:
        first = unseen_first(batch, model, lambda k: scorer.knows(k[0]), scorer.knows, scorer.guard)
        if first:
            with db_outage_is_retry(conn, "bars table unavailable for warm-up"):
                scorer.prepare(first)

    def before_commit(contexts: Sequence[MessageContext]) -> None:
        with db_outage_is_retry(conn, "signals table unavailable"):
            scorer.flush()

    tail = None
    try:
        if side:
            tail = tail_for(cfg, endpoints, name, side, lambda topic, event, ts_ms: scorer.on_side_event(event))
            tail.since_ms = tracker.start_ms if tracker is not None else 0
            scorer.side = TailSideInputs(tail.start())
            if tracker is not None:
                tracker.add_tail(name, tail)
        bus = make_bus(
            cfg, endpoints, name=name, topics={input_topic: model}, guard=scorer.guard, handler=handle,
            group=group, before_batch=before_batch, before_commit=before_commit,
            resources=[r for r in (tail, conn) if r is not None], component=scorer, **bus_kwargs,
        )
        if isinstance(scorer.side, TailSideInputs):
            scorer.side.stop_requested = lambda: bus.stop_requested  # a stop cuts a side-input wait short
        return bus
    except Exception:
        if tail is not None:
            tail.close()
        conn.close()
        raise
