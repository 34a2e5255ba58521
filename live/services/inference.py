"""``inference``: engineered -> predictions, with the champion model, hot-swapped.

Wiring for the core ``Forecaster`` (``awet_dagster.inference.forecaster``, whose module doc
tells the rules: champion source and hot swap, feature windows and their warm-up, one
predict call per batch, one answer per bar, metrics) over ``PostgresPredictionStore``. The
batch pre-pass (the bus's ``before_batch``) hands it the batch's decoded features; each
message's handler publishes the answer prepared for it; the batch's forecasts are written
to ``predictions`` before the Kafka commit. A DB outage is RetryLater.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import FeatureEvent, Prediction
from awet_dagster.contracts.topics import ENGINEERED, PREDICTIONS
from awet_dagster.inference import ChampionSource, PredictorSource
from awet_dagster.inference.forecaster import IDLE_MESSAGE, Forecaster
from awet_dagster.observability.drift import PredictionDrift
from awet_dagster.storage.predictions import PostgresPredictionStore
from awet_dagster.streaming import DEFAULT_WARMUP_BARS
from awet_kafka.bus import MessageContext
from awet_dagster.streaming.outputs import Output
from live.services._common import (
    LazyConnection,
    LiveService,
    contract_of,
    db_outage_is_retry,
    db_settings,
    decoded,
    make_bus,
)

__all__ = ["IDLE_MESSAGE", "NAME", "build"]

NAME = "inference"


def build(cfg: AwetConfig, endpoints: Any, *, input_topic: str = ENGINEERED, output_topic: str = PREDICTIONS,
          group: str | None = None, name: str = NAME, source: PredictorSource | None = None,
          poll_s: float = 30.0, warmup_bars: int = DEFAULT_WARMUP_BARS, tracker: Any = None,
          metrics: Any = None, drift_window: int = 500, drift_min_recent: int | None = None,
          **bus_kwargs: Any) -> LiveService:
    """``source``: where the model comes from (default: the registry's champion, polled every ``poll_s``).
    ``metrics``: a ``awet_dagster.observability.metrics.ServiceMetrics`` for the model metrics (the runner passes it).
    ``drift_window`` / ``drift_min_recent``: ``PredictionDrift`` sizes (reference = the served
    model's first ``drift_window`` median forecasts; PSI of the latest ones once ``drift_min_recent``
    arrived, default ``max(50, drift_window // 10)``)."""
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    if source is None:
        # Here, not at the top: the model package costs 1-2 s to import (numba, polars kernels);
        # a process given its source (tests, tools) does not pay for it.
        from awet_dagster.model.registry import ModelRegistry

        source = ChampionSource(ModelRegistry(cfg), poll_s=poll_s)
    if contract_of(output_topic, Prediction) is not Prediction:
        raise ValueError(f"topic {output_topic!r} does not carry Prediction")
    model = contract_of(input_topic, FeatureEvent)
    inf = Forecaster(cfg, source, PostgresPredictionStore(conn.get), output_topic=output_topic,
                     warmup_bars=warmup_bars, metrics=metrics, drift=PredictionDrift(drift_window, drift_min_recent))
    if tracker is not None:
        bus_kwargs.setdefault("on_metrics", tracker.hook(name, [input_topic]))

    def before_batch(batch: Sequence[Any]) -> None:
        # One predict call for every window the batch completes. A message that does not
        # decode is left to the bus (dead letter).
        events = [((msg.topic(), msg.partition(), msg.offset()), ev) for msg, ev in decoded(batch, model)]
        with db_outage_is_retry(conn, "bars table unavailable for warm-up"):
            inf.prepare(events)

    def handle(event: FeatureEvent, ctx: MessageContext) -> list[Output]:
        return inf.handle((ctx.topic, ctx.partition, ctx.offset))

    def before_commit(contexts: Sequence[MessageContext]) -> None:
        with db_outage_is_retry(conn, "predictions table unavailable"):
            inf.store()

    return make_bus(cfg, endpoints, name=name, topics={input_topic: model}, handler=handle, group=group,
                    before_batch=before_batch, before_commit=before_commit, resources=[conn], component=inf,
                    **bus_kwargs)
