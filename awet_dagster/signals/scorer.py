"""``BarScorer``: the signal component of the live loop (Kafka-free): a bar in, one
``ScoredSignal`` out, persisted.

One ``SignalEngine`` per process, fed bar by bar like ``run_backtest`` (same code path):
- clock: market.raw. EVERY bar yields one ScoredSignal (passed or not): risk needs every
  bar (marks, CVaR history, loss limits), exactly as the backtest calls ``risk.on_bar`` for
  every bar. Event id: deterministic per (symbol, bar_type, ts).
- alphas (``signals.alpha_source``): by default ``"topic"``, the design's path: the
  ``lean_alpha`` service's ``alpha.signals``, delivered by a side reader (``on_side_event``).
  That service answers every bar (its insights, then a ``bar_done`` mark), so each bar waits
  up to ``signals.alpha_wait_s`` for its own mark (from the first bar of a symbol on: the
  alphas always answer, unlike a model that may not exist) and applies every insight with
  ts <= the bar's ts: the same insights the backtest's engine computes itself. A wait that
  runs out (lean_alpha down) suspends the waits until its next mark. ``"internal"``: the
  engine runs the same streaming Lean models in-process (= ``run_backtest(alpha_signals=None)``).
- model: predictions arrive through the side reader into a (symbol, ts) cache. While a model
  is served, inference answers EVERY bar (a forecast, or ``no_forecast`` while the symbol's
  window fills or when the model failed), so a bar whose symbol has had an answer waits up
  to ``signals.prediction_wait_s`` for its own: no race on the first forecast, no wait for
  one that will not come. Without an answer for the symbol yet (no champion) the bar does
  not wait; a wait that times out stops the waiting for that symbol until answers resume.
  No forecast: the TFT component is absent (weights renormalised over the alphas, as in the
  backtest without a prediction for that bar). The horizon traded is
  ``signals.trading_horizon`` (``signals.horizon``, else the shortest), as in the backtest.
  Waits go through the ``SideInputs`` port; a stop request during one is RetryLater.
- calibration: the forecast's model version selects that model's Platt calibrator
  (``calibrations.get(model_version)``: fitted on its walk-forward OOS calls, logged with its
  run); a bar without a forecast, the newest alpha-only calibrator of its bar type
  (``AlphaCalibrations``, ``signals.alpha_calibration``). Each signal names its calibrator.
- runtime weights: ``WeightsFile`` (``awet_dagster.signals.weights_file``).
- warm-up: the first bar of a symbol replays its last stored bars through the engine
  (outputs discarded), so a restart continues with the same SMAs, volume average and alpha
  states; ``prepare`` warms a batch's new symbols up with one read.
- persistence: ``flush`` writes the batch's signals (idempotent on event_id) through the
  store, before the input offsets are committed.
"""
from __future__ import annotations

import bisect
import logging
import math
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from awet_dagster.alphas.signal import bar_duration
from awet_dagster.config import AwetConfig
from awet_dagster.contracts import AlphaSignal, MarketRawEvent, Prediction, ScoredSignal
from awet_dagster.signals.engine import QuantileForecast, SignalEngine
from awet_dagster.signals.tft import trading_horizon
from awet_dagster.signals.weights import EnsembleWeights
from awet_dagster.signals.weights_file import WeightsFile
from awet_dagster.streaming.events import derived_event_id, event_to_bar
from awet_dagster.streaming.outputs import Output
from awet_dagster.streaming.side_inputs import NO_SIDE_INPUTS, SideInputs, wait_or_retry
from awet_dagster.streaming.state import DEFAULT_WARMUP_BARS
from awet_dagster.streaming.time_guard import TimeGuard
from awet_dagster.streaming.warmup import InMemoryBarHistory, histories_by_key

log = logging.getLogger("awet.signals.scorer")

_DIR = {"long": 1, "short": -1, "flat": 0}
_SWEEP_AT = 10_000  # side-input answers kept before the first sweep
_ALPHA_TS = operator.attrgetter("ts")


class SignalStore(Protocol):
    def last_bars_many(self, wanted: Mapping[str, datetime], bar_type: str,
                       limit: int) -> dict[str, list[dict[str, Any]]]:
        """{symbol: up to ``limit`` bars of ``bar_type`` before wanted[symbol], oldest first}."""
        ...

    def latest_alpha_calibration(self, bar_type: str) -> Any:
        """The newest stored alpha-only calibration of ``bar_type`` (``.id``, ``.calibrator``,
        ``.name``, ``.n_calls``, ``.hit_rate``), or None."""
        ...

    def write_signals(self, signals: Sequence[ScoredSignal]) -> int:
        """Store ``signals`` in one transaction, idempotently on event_id."""
        ...


@dataclass
class InMemorySignalStore(InMemoryBarHistory):
    """``SignalStore`` in memory: ``bars`` {symbol: [bar]}, ``calibrations`` {bar_type: stored}."""

    calibrations: dict[str, Any] = field(default_factory=dict)
    signals: dict[str, ScoredSignal] = field(default_factory=dict)

    def latest_alpha_calibration(self, bar_type: str) -> Any:
        return self.calibrations.get(bar_type)

    def write_signals(self, signals: Sequence[ScoredSignal]) -> int:
        for s in signals:
            self.signals.setdefault(s.event_id, s)
        return len(signals)


class AlphaCalibrations:
    """The newest stored alpha-only calibrator of each bar type (fitted by the
    ``<bar_type>/alpha_calibration`` asset), read at the first bar and then at most every
    ``refresh_s``: a re-materialized asset takes effect without a restart."""

    def __init__(self, store: SignalStore, refresh_s: float) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self._next: dict[str, float] = {}
        self._ids: dict[str, int | None] = {}

    def apply(self, engine: SignalEngine, bar_type: str, now: float) -> None:
        if now < self._next.get(bar_type, -math.inf):
            return
        self._next[bar_type] = now + self.refresh_s
        stored = self.store.latest_alpha_calibration(bar_type)
        new_id = stored.id if stored is not None else None
        if bar_type in self._ids and self._ids[bar_type] == new_id:
            return
        self._ids[bar_type] = new_id
        if stored is None:
            engine.set_alpha_calibrator(None, bar_type=bar_type)
            return
        engine.set_alpha_calibrator(stored.calibrator, stored.name, bar_type)
        log.info("signal: alpha-only %s bars calibrated by platt:%s (a=%.4f b=%.4f, %d calls, hit rate %.3f)",
                 bar_type, stored.name, stored.calibrator.a, stored.calibrator.b, stored.n_calls, stored.hit_rate)


class BarScorer:
    """``calibrations``: the served models' calibrators (``.get(model_version)``, e.g.
    ``awet_dagster.inference.ModelCalibrations``) or None (uncalibrated forecasts)."""

    def __init__(self, cfg: AwetConfig, store: SignalStore, *, output_topic: str, guard: TimeGuard,
                 alpha_source: str | None = None, weights_file: Path | None = None,
                 warmup_bars: int = DEFAULT_WARMUP_BARS, prediction_wait_s: float | None = None,
                 persist: bool = True, clock: Callable[[], float] | None = None, calibrations: Any = None,
                 side: SideInputs = NO_SIDE_INPUTS) -> None:
        alpha_source = alpha_source or cfg.signals.alpha_source
        if alpha_source not in ("internal", "topic"):
            raise ValueError("alpha_source must be 'internal' or 'topic'")
        self.alpha_wait_s = cfg.signals.alpha_wait_s
        self.horizon = cfg.signals.horizon
        self.db = store
        self.output_topic = output_topic
        self.alpha_source = alpha_source
        self.engine = SignalEngine(cfg.signals, None, compute_alphas=alpha_source == "internal")
        self.calibrations = calibrations
        path = weights_file or cfg.signals.weights_file or Path(cfg.paths.home) / "signal_weights.json"
        self.weights = WeightsFile(path, EnsembleWeights.from_config(cfg.signals.weights))
        self.warmup_bars = warmup_bars
        self.prediction_wait_s = cfg.signals.prediction_wait_s if prediction_wait_s is None else prediction_wait_s
        self.persist = persist
        self._clock = clock or time.monotonic
        self.side = side
        # (symbol, ts) -> the model's answer: a forecast, or None for "no forecast".
        self._forecasts: dict[tuple[str, datetime], QuantileForecast | None] = {}
        self._model_live: set[str] = set()
        self._alphas: dict[str, list[AlphaSignal]] = {}
        self._alpha_done: set[tuple[str, datetime]] = set()  # bars lean_alpha has answered
        # Sizes above which the two caches are swept of answers to bars already scored. The
        # bound doubles with what a sweep keeps: in a replay the side readers run ahead (their
        # answers are for bars to come), and a fixed bound made every bar sweep the whole cache
        # (measured: 50,000 bars at once, the signal service at 81% of a core, 182 bars/s).
        self._forecasts_bound = self._alpha_done_bound = _SWEEP_AT
        # lean_alpha let a wait run out (down, not deployed): no more waits until it answers again.
        self._alphas_silent = False
        self._last: dict[str, datetime] = {}
        self._warmed: set[str] = set()
        self._buffer: list[ScoredSignal] = []
        self.guard = guard
        self.alpha_calibrations = (AlphaCalibrations(store, cfg.signals.alpha_calibration_refresh_s)
                                   if cfg.signals.alpha_calibration else None)
        self.counters = {"bars": 0, "with_forecast": 0, "prediction_wait_timeouts": 0, "warmup_bars": 0,
                         "skipped_stale": 0, "persisted": 0, "alpha_wait_timeouts": 0}

    def forget(self) -> None:
        """Drop the per-symbol state (a rebalance moved partitions): every symbol is warmed up
        again from the stored bars on its next bar. Side inputs (forecasts, alphas) stay."""
        self.engine.forget_symbols()
        self._last.clear()
        self._warmed.clear()

    def knows(self, symbol: str) -> bool:
        """The symbol was warmed up (a batch pre-pass need not look at its bars)."""
        return symbol in self._warmed

    # ------------------------------------------------------------------ side inputs (reader thread, locked)
    def on_side_event(self, event: Any) -> None:
        if isinstance(event, Prediction):
            key = (event.symbol, event.ts)
            if event.status == "forecast":
                h = trading_horizon(event.horizons, self.horizon)  # the backtest's rule
                q = event.quantiles[h]
                self._forecasts[key] = QuantileForecast(event.model_version, h, q.q10, q.q50, q.q90)
            else:
                self._forecasts[key] = None  # answered: the model has no forecast for this bar
            self._model_live.add(event.symbol)
        elif isinstance(event, AlphaSignal) and self.alpha_source == "topic":
            if event.status == "bar_done":
                self._alpha_done.add((event.symbol, event.ts))
                self._alphas_silent = False
            else:
                # Kept in ts order (arrival order among equal ts): a bar takes its due prefix.
                bisect.insort_right(self._alphas.setdefault(event.symbol, []), event, key=_ALPHA_TS)

    # ------------------------------------------------------------------ warm-up
    def prepare(self, first: Mapping[tuple[str, str], datetime]) -> None:
        """Before a batch: warm up its new symbols ({(symbol, bar_type): ts of its first bar})
        with one read per bar type."""
        for (symbol, _), bars in histories_by_key(first, self.db.last_bars_many, self.warmup_bars).items():
            for bar in bars:
                self.engine.on_bar(bar, correlation_id="warmup")
                self.counters["warmup_bars"] += 1
            if bars:
                self._last[symbol] = bars[-1]["ts"]
            self._warmed.add(symbol)

    # ------------------------------------------------------------------ handler
    def _side_inputs(self, symbol: str, ts: datetime, bar_type: str) -> QuantileForecast | None:
        key = (symbol, ts)
        if symbol in self._model_live and key not in self._forecasts and self.prediction_wait_s > 0:
            if not wait_or_retry(self.side, lambda: key in self._forecasts, self.prediction_wait_s,
                                 "a bar waited for its forecast"):
                self.counters["prediction_wait_timeouts"] += 1
                # The model stopped answering (champion withdrawn, inference down): score
                # without it and stop waiting on every bar until its answers come back.
                self._model_live.discard(symbol)
        if (self.alpha_source == "topic" and not self._alphas_silent and key not in self._alpha_done
                and self.alpha_wait_s > 0):
            if not wait_or_retry(self.side, lambda: key in self._alpha_done, self.alpha_wait_s,
                                 "a bar waited for its alpha mark"):
                self.counters["alpha_wait_timeouts"] += 1
                # lean_alpha is not answering (down, not deployed): score with the insights
                # there are, and wait for no bar until one of its marks arrives again.
                self._alphas_silent = True
        self._alpha_done.discard(key)
        forecast = self._forecasts.pop(key, None)
        if len(self._forecasts) > self._forecasts_bound:  # forecasts of bars already scored (late arrivals)
            for k in [k for k in self._forecasts if k[1] <= self._last.get(k[0], k[1])]:
                del self._forecasts[k]
            self._forecasts_bound = max(_SWEEP_AT, 2 * len(self._forecasts))
        if len(self._alpha_done) > self._alpha_done_bound:  # marks of bars already scored (late arrivals)
            self._alpha_done = {k for k in self._alpha_done if k[1] > self._last.get(k[0], k[1])}
            self._alpha_done_bound = max(_SWEEP_AT, 2 * len(self._alpha_done))
        pending = self._alphas.get(symbol)
        if pending:
            cut = bisect.bisect_right(pending, ts, key=_ALPHA_TS)
            due = pending[:cut]
            del pending[:cut]
            for a in due:
                self.engine.observe_alpha(symbol, a.alpha, _DIR[a.direction], a.ts, a.period * bar_duration(bar_type),
                                          bar_type)
        return forecast

    def handle(self, ev: MarketRawEvent) -> list[Output]:
        symbol, ts = ev.symbol, ev.ts
        if symbol not in self._warmed:  # not seen by a batch pre-pass (handled directly)
            self.prepare({(symbol, ev.bar_type): ts})
        last = self._last.get(symbol)
        if last is not None and ts <= last:
            self.counters["skipped_stale"] += 1
            return []
        self.weights.poll(self.engine, self._clock())
        with self.side.lock():
            forecast = self._side_inputs(symbol, ts, ev.bar_type)
        if forecast is not None and self.calibrations is not None:
            cal = self.calibrations.get(forecast.model_version)
            if cal is not self.engine.calibrator or forecast.model_version != self.engine.calibrator_version:
                self.engine.set_calibrator(cal, forecast.model_version)
        if self.alpha_calibrations is not None:
            self.alpha_calibrations.apply(self.engine, ev.bar_type, self._clock())
        sig = self.engine.on_bar(event_to_bar(ev), correlation_id=ev.correlation_id, forecast=forecast)
        self._last[symbol] = ts
        sig = sig.model_copy(update={"event_id": derived_event_id("signal", symbol, ev.bar_type, ts)})
        self.counters["bars"] += 1
        if forecast is not None:
            self.counters["with_forecast"] += 1
        if self.persist:
            self._buffer.append(sig)
        return [Output(self.output_topic, sig)]

    def flush(self) -> int:
        """Write the batch's signals (before the input offsets are committed). The buffer is
        emptied only once they are written (a failed write is retried with the batch)."""
        if not self._buffer:
            return 0
        n = self.db.write_signals(self._buffer)
        self._buffer = []
        self.counters["persisted"] += n
        return n
