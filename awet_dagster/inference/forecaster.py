"""``Forecaster``: the inference component of the live loop (Kafka-free): feature events in,
one ``Prediction`` per (symbol, ts) out while a model is served. The live ``inference``
service decodes engineered, hands each batch to ``prepare`` and publishes what ``handle``
returns per message; ``store`` writes the batch's forecasts through the ``PredictionStore``
port before the input offsets are committed.

- model: a ``PredictorSource`` (default ``ChampionSource``: the registry's
  ``champion`` alias, re-checked every ``poll_s`` seconds; a new version is downloaded and
  loaded, then swapped in between two bus batches — no restart). With no champion the
  service logs once "no champion model registered: inference idle", keeps its feature
  windows current (so a model promoted later starts predicting at once) and emits nothing.
- windows: the last rows of every (symbol, bar_type)'s FeatureEvents; the predictor's
  preprocessing gives the lookback and the column order. On the first bar of a symbol
  while a model is live, the window is warmed up from the ``bars`` table (features
  recomputed by the same ``FeatureEngine`` the features service runs).
- micro-batching: every window completed by one bus batch goes to ONE ``predict`` call
  (all symbols stacked), before the batch's messages are handled one by one.
- output: while a model is served, one ``Prediction`` per (symbol, ts): a forecast with
  q10/q50/q90 per horizon (simple returns; the model's log-return quantiles mapped by expm1
  and sorted), or ``status="no_forecast"`` with the reason (``window_incomplete``: fewer than
  lookback rows with every required feature, the rule training windows follow;
  ``model_error``), so the signal service knows for every bar whether to wait. Each carries
  the model version, a deterministic event id and the features' correlation id.
- persistence: the batch's forecasts are written to the ``predictions`` table (one row per
  horizon, idempotent on (event id, horizon)) before the Kafka commit.
A model that fails on a batch is logged and counted (``predict_errors``); the batch's
features are not dead-lettered (they are fine, the model is not).

Metrics (``metrics``: the runner's ``ServiceMetrics``): ``awet_model_champion_info{model,
version}`` = 1 for the version served (cleared while idle; ``model:version`` versions are
split, others are reported under model ``champion``), ``awet_model_oos_sharpe{model}`` = the
served version's walk-forward median OOS Sharpe when the source knows it (``oos_sharpe`` of
``ChampionSource``), ``awet_model_prediction_drift`` = ``PredictionDrift`` of the median
forecasts (``drift_window``), and ``awet_model_confidence`` observes
every prediction's TFT confidence at its shortest horizon (``signals.tft.tft_view``: |q50| /
(|q50| + half the q10-q90 spread), the number the signal engine uses for the model component).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import FeatureEvent, Prediction, Quantiles
from awet_dagster.features.spec import is_required
from awet_dagster.inference.predictors import PredictorSource
from awet_dagster.inference.quantiles import to_quantiles
from awet_dagster.inference.windows import FeatureWindows
from awet_dagster.observability.drift import PredictionDrift
from awet_dagster.observability.metrics import ServiceMetrics
from awet_dagster.signals.tft import tft_view
from awet_dagster.streaming.events import bar_to_event, derived_event_id
from awet_dagster.streaming.outputs import Output
from awet_dagster.streaming.state import DEFAULT_WARMUP_BARS, FeatureEngine
from awet_dagster.streaming.warmup import InMemoryBarHistory, histories_by_key

log = logging.getLogger("awet.inference.forecaster")

# ``Prediction.reason`` of a no_forecast answer.
NO_WINDOW = "window_incomplete"  # fewer than lookback complete feature rows yet
MODEL_ERROR = "model_error"

IDLE_MESSAGE = "no champion model registered: inference idle"

#: Where a message came from: (topic, partition, offset); the answer is handed out by it.
MessageKey = tuple[str, int, int]


class PredictionStore(Protocol):
    def last_bars_many(self, wanted: Mapping[str, datetime], bar_type: str,
                       limit: int) -> dict[str, list[dict[str, Any]]]:
        """{symbol: up to ``limit`` bars of ``bar_type`` before wanted[symbol], oldest first}."""
        ...

    def write_predictions(self, predictions: Sequence[Prediction]) -> int:
        """Store ``predictions`` (one row per horizon) in one transaction, idempotently."""
        ...


@dataclass
class InMemoryPredictionStore(InMemoryBarHistory):
    predictions: dict[str, Prediction] = field(default_factory=dict)

    def write_predictions(self, predictions: Sequence[Prediction]) -> int:
        for p in predictions:
            self.predictions.setdefault(p.event_id, p)
        return len(predictions)


class Forecaster:
    """``store`` None: no warm-up from stored bars and nothing persisted (tests, tools).
    ``metrics``: ``awet_dagster.observability.metrics.ServiceMetrics`` or None."""

    def __init__(self, cfg: AwetConfig, source: PredictorSource, store: PredictionStore | None, *,
                 output_topic: str, warmup_bars: int = DEFAULT_WARMUP_BARS, metrics: ServiceMetrics | None = None,
                 drift: PredictionDrift | None = None) -> None:
        self.metrics = metrics
        self.source = source
        self.db = store
        self.output_topic = output_topic
        self.warmup_bars = warmup_bars
        self.windows = FeatureWindows(max(cfg.model.lookback, cfg.model.minute_lookback))
        self.version: str | None = None
        self.drift = drift if drift is not None else PredictionDrift()
        self._idle_logged = False
        self._outputs: dict[MessageKey, list[Output]] = {}
        self._to_store: list[Prediction] = []
        self.counters = {"features": 0, "predictions": 0, "no_forecast": 0, "predict_calls": 0, "predict_errors": 0,
                         "swaps": 0, "warmups": 0, "stored": 0}

    def forget(self) -> None:
        """Drop the feature windows (a rebalance moved partitions: rebuilt from history)."""
        self.windows = FeatureWindows(self.windows.maxlen)

    # ------------------------------------------------------------------ model
    def _model(self) -> tuple[str, Any] | None:
        cur = self.source.current()
        if cur is None:
            if not self._idle_logged:
                log.warning(IDLE_MESSAGE)
                self._idle_logged = True
            if self.version is not None:
                self.version = None
                if self.metrics is not None:
                    self.metrics.clear_champion()
            return None
        version, predictor = cur
        if version != self.version:
            log.info("inference: serving %s (was %s)", version, self.version or "none")
            if self.version is not None:
                self.counters["swaps"] += 1
            self.version = version
            self.drift.reset()  # a new model gets a new reference window
            self._idle_logged = False
            if self.metrics is not None:
                model_name, _, model_version = version.rpartition(":")
                sharpe = getattr(self.source, "oos_sharpe", None)  # ChampionSource: the run's metric
                self.metrics.set_champion(model_name or "champion", model_version,
                                          sharpe if isinstance(sharpe, (int, float)) else None)
            need = int(predictor.preprocessing.encoder_length)
            if need > self.windows.maxlen:
                self.windows = FeatureWindows(need)  # rows re-fill (warm-up on next bar)
        return cur

    def _warm_up(self, first: list[FeatureEvent], length: int) -> None:
        """Recompute the last ``length`` feature rows of each (symbol, bar_type) from the bars
        table, before its first event in this batch: one query per bar type."""
        self.counters["warmups"] += len(first)
        if self.db is None:
            return
        wanted = {(ev.symbol, ev.bar_type): ev.ts for ev in first}
        for bars in histories_by_key(wanted, self.db.last_bars_many, self.warmup_bars + length).values():
            engine = FeatureEngine(None, warmup_bars=0)
            for bar in bars:
                fe = engine.on_bar(bar_to_event(bar, correlation_id="warmup"))
                if fe is not None:
                    self.windows.add(fe.symbol, fe.bar_type, fe.ts, fe.features)

    # ------------------------------------------------------------------ batch pre-pass
    def prepare(self, events: Sequence[tuple[MessageKey, FeatureEvent]]) -> None:
        """Update the windows with the batch's features (each with the key of its message) and
        predict every completed window at once; ``handle(key)`` then hands out the answer."""
        self._outputs.clear()
        model = self._model()
        due: list[tuple[MessageKey, FeatureEvent, Any]] = []
        cold: dict[tuple[str, str], FeatureEvent] = {}  # first event of each symbol without a window
        for _, ev in events:
            key = (ev.symbol, ev.bar_type)
            if model is not None and key not in self.windows:
                cold.setdefault(key, ev)
        if cold:
            self._warm_up(list(cold.values()), int(model[1].preprocessing.encoder_length))
        if model is not None:
            cols = tuple(model[1].preprocessing.feature_columns)
            length = int(model[1].preprocessing.encoder_length)
        for msg_key, ev in events:
            if not self.windows.add(ev.symbol, ev.bar_type, ev.ts, ev.features):
                continue
            self.counters["features"] += 1
            if model is not None:
                # The window AS OF this event: taken before the batch's later events of the
                # symbol are added (taken after, every forecast of a batch holding several bars
                # of a symbol saw its last bar: look-ahead, found by the crash fault test).
                w = self.windows.window(ev.symbol, ev.bar_type, cols, length)
                due.append((msg_key, ev, w))
        if model is None or not due:
            return
        version, predictor = model
        required = [i for i, c in enumerate(cols) if is_required(c)]
        windows: dict[str, Any] = {}
        ids: dict[str, tuple[MessageKey, FeatureEvent]] = {}
        for msg_key, ev, w in due:
            # Only complete windows, as in training (prepare_frame drops warm-up rows): a
            # window with a missing required feature would be scaled to made-up zeros.
            if w is None or np.isnan(w[:, required]).any():
                self._answer(msg_key, ev, version, NO_WINDOW)
                continue
            # One symbol may complete several windows in one batch: key by message.
            name = f"{ev.symbol}|{ev.bar_type}|{ev.ts.isoformat()}"
            windows[name] = w
            ids[name] = (msg_key, ev)
        if not windows:
            return
        try:
            result = predictor.predict(windows)
        except Exception:  # noqa: BLE001 - a broken model must not dead-letter good features
            self.counters["predict_errors"] += 1
            log.exception("inference: %s failed on %d window(s)", version, len(windows))
            for msg_key, ev in ids.values():
                self._answer(msg_key, ev, version, MODEL_ERROR)
            return
        self.counters["predict_calls"] += 1
        for name, per_h in result.items():
            msg_key, ev = ids[name]
            horizons = tuple(sorted(int(h) for h in per_h))
            quantiles = {}
            for h in horizons:
                q10, q50, q90 = to_quantiles(per_h[h])
                quantiles[h] = Quantiles(q10=q10, q50=q50, q90=q90)
            pred = Prediction(
                event_id=derived_event_id("prediction", ev.symbol, ev.bar_type, ev.ts, version),
                correlation_id=ev.correlation_id, symbol=ev.symbol, ts=ev.ts, model_version=version,
                horizons=horizons, quantiles=quantiles,
            )
            self._outputs[msg_key] = [Output(self.output_topic, pred)]
            self._to_store.append(pred)
            self.counters["predictions"] += 1
            if self.metrics is not None:
                q = quantiles[horizons[0]]
                try:
                    self.metrics.prediction(tft_view(q.q10, q.q50, q.q90).confidence)
                except ValueError:  # non-finite quantiles: nothing to observe
                    pass
                drift = self.drift.update(q.q50)
                if drift is not None:
                    self.metrics.set_drift(drift)

    def store(self) -> int:
        """Write the batch's forecasts (before the input offsets are committed; idempotent on
        (event id, horizon), so a redelivered batch writes nothing twice). A store error
        propagates (live: RetryLater, the batch redelivered, its predictions published again
        with the same ids)."""
        rows, self._to_store = self._to_store, []
        if not rows or self.db is None:
            return 0
        self.db.write_predictions(rows)
        self.counters["stored"] += len(rows)
        return len(rows)

    def _answer(self, msg_key: MessageKey, ev: FeatureEvent, version: str, reason: str) -> None:
        """A ``no_forecast`` Prediction: the signal service then scores the bar without the
        model at once instead of waiting for a forecast that will not come."""
        self._outputs[msg_key] = [Output(self.output_topic, Prediction(
            event_id=derived_event_id("prediction", ev.symbol, ev.bar_type, ev.ts, version),
            correlation_id=ev.correlation_id, symbol=ev.symbol, ts=ev.ts, model_version=version,
            status="no_forecast", reason=reason))]
        self.counters["no_forecast"] += 1

    def handle(self, msg_key: MessageKey) -> list[Output]:
        """The answer to the message at ``msg_key`` (prepared by ``prepare``)."""
        return self._outputs.pop(msg_key, [])
