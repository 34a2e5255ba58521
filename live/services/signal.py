"""``signal``: market.raw (+ predictions, alpha.signals) -> signals.scored, persisted in ``signals``.

One ``SignalEngine`` per process, fed bar by bar like ``run_backtest`` (same code path):
- clock: market.raw. EVERY bar yields one ScoredSignal (passed or not): the risk service
  needs every bar (marks, CVaR history, loss limits), exactly as the backtest calls
  ``risk.on_bar`` for every bar. Event id: deterministic per (symbol, bar_type, ts).
- alphas (``signals.alpha_source``): by default ``"topic"``, the design's path: the
  ``lean_alpha`` service's ``alpha.signals`` (side TopicTail). That service answers every
  bar (its insights, then a ``bar_done`` mark), so each bar waits up to
  ``signals.alpha_wait_s`` for its own mark (from the first bar of a symbol on: the alphas
  always answer, unlike a model that may not exist) and applies every insight with ts <=
  the bar's ts: the same insights the backtest's engine computes itself. A wait that runs
  out (lean_alpha down) suspends the waits until its next mark. ``"internal"``: the engine
  runs the same streaming Lean models in-process (= ``run_backtest(alpha_signals=None)``).
- model: predictions are read by a side TopicTail into a (symbol, ts) cache. While a model
  is served, inference answers EVERY bar (a forecast, or ``no_forecast`` while the symbol's
  window fills or when the model failed), so a bar whose symbol has had an answer waits up
  to ``signals.prediction_wait_s`` for its own: no race on the first forecast, no wait for
  one that will not come. Without an answer for the symbol yet (no champion) the bar does
  not wait; a wait that times out stops the waiting for that symbol until answers resume.
  No forecast: the TFT component is absent (weights renormalised over the alphas, as in
  the backtest without a prediction for that bar). The horizon traded is
  ``signals.trading_horizon`` (``signals.horizon``, else the shortest), as in the backtest.
- calibration: the forecast's model version selects that model's Platt calibrator
  (``ModelCalibrations``: fitted on its walk-forward OOS calls, logged with its run); a bar
  without a forecast, the newest alpha-only calibrator of its bar type (``AlphaCalibrations``,
  ``signals.alpha_calibration``). Each signal names the calibrator it used.
- runtime weights: ``signals.weights_file`` (default ``<paths.home>/signal_weights.json``),
  a JSON object such as ``{"tft": 0.4, "rsi": 0.3}`` (components not named keep their
  weight); re-read when its mtime changes (checked at most once a second), applied from
  the next bar; an invalid file is logged and ignored, a deleted file restores the
  configured weights. Every ScoredSignal records the weights it used.
- warm-up: the first bar of a symbol replays its last bars from the ``bars`` table
  through the engine (outputs discarded), so a restart continues with the same SMAs,
  volume average and alpha states.
- persistence: the batch's signals are written to ``signals`` (idempotent on event_id)
  in the bus's before-commit hook: DB commit before Kafka commit, like persist_bars.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from awet_dagster.alphas.signal import bar_duration
from awet_dagster.config import AwetConfig
from awet_dagster.contracts import AlphaSignal, MarketRawEvent, Prediction, ScoredSignal
from awet_dagster.contracts.topics import ALPHA_SIGNALS, MARKET_RAW, PREDICTIONS, SIGNALS_SCORED
from awet_dagster.inference import ModelCalibrations
from awet_dagster.signals import EnsembleWeights, QuantileForecast, SignalEngine, trading_horizon
from awet_dagster.storage.calibrations import latest_calibration
from awet_dagster.streaming import DEFAULT_WARMUP_BARS, derived_event_id, event_to_bar, histories_by_key
from live.bus import MessageContext, Output, RetryLater
from live.services._common import (
    LazyConnection,
    LiveService,
    contract_of,
    db_outage_is_retry,
    db_settings,
    make_bus,
    read_many_from,
    tail_for,
    time_guard,
    unseen_first,
    wait_until,
)
from live.tail import TopicTail

log = logging.getLogger("awet.live.signal")

NAME = "signal"
_DIR = {"long": 1, "short": -1, "flat": 0}


class WeightsFile:
    """Watches a JSON weights file; ``poll(engine)`` applies a changed file (returns True)."""

    def __init__(self, path: Path, defaults: EnsembleWeights, min_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.defaults = defaults
        self.min_interval_s = min_interval_s
        self._next = 0.0
        self._mtime: float | None = None
        self.applied = 0
        self.errors = 0

    def poll(self, engine: SignalEngine, now: float) -> bool:
        if now < self._next:
            return False
        self._next = now + self.min_interval_s
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            if self._mtime is not None:  # removed: back to the configured weights
                self._mtime = None
                engine.set_weights(self.defaults)
                log.info("signal: %s removed, configured weights restored", self.path)
                return True
            return False
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            values = json.loads(self.path.read_text())
            if not isinstance(values, dict):
                raise ValueError("expected a JSON object {component: weight}")
            new = engine.set_weights(EnsembleWeights.from_mapping({**self.defaults.as_dict(), **values}))
        except (OSError, ValueError, TypeError) as exc:
            self.errors += 1
            log.error("signal: ignoring invalid weights file %s: %s", self.path, exc)
            return False
        self.applied += 1
        log.info("signal: ensemble weights now %s (from %s)", new.as_dict(), self.path)
        return True


class AlphaCalibrations:
    """The newest stored alpha-only calibrator of each bar type (``calibrations``, fitted by the
    ``<bar_type>/alpha_calibration`` asset), read at the first bar and then at most every
    ``refresh_s``: a re-materialized asset takes effect without a restart. Called inside the
    handler's DB-outage guard (an outage is a RetryLater, as for the warm-up reads)."""

    def __init__(self, conn: LazyConnection, refresh_s: float) -> None:
        self.conn = conn
        self.refresh_s = refresh_s
        self._next: dict[str, float] = {}
        self._ids: dict[str, int | None] = {}

    def apply(self, engine: SignalEngine, bar_type: str, now: float) -> None:
        if now < self._next.get(bar_type, -math.inf):
            return
        self._next[bar_type] = now + self.refresh_s
        stored = latest_calibration(self.conn.get(), "alpha", bar_type)
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


class SignalService:
    def __init__(self, cfg: AwetConfig, conn: LazyConnection, *, output_topic: str, alpha_source: str | None = None,
                 weights_file: Path | None = None, warmup_bars: int = DEFAULT_WARMUP_BARS,
                 prediction_wait_s: float | None = None, persist: bool = True,
                 clock: Any = None, calibrations: ModelCalibrations | None = None,
                 input_model: type[MarketRawEvent] = MarketRawEvent) -> None:
        import time

        alpha_source = alpha_source or cfg.signals.alpha_source
        if alpha_source not in ("internal", "topic"):
            raise ValueError("alpha_source must be 'internal' or 'topic'")
        self.alpha_wait_s = cfg.signals.alpha_wait_s
        self.cfg = cfg
        self.conn = conn
        self.output_topic = output_topic
        self.alpha_source = alpha_source
        self.engine = SignalEngine(cfg.signals, None, compute_alphas=alpha_source == "internal")
        # The served model's own Platt calibrator (fitted on its walk-forward OOS calls),
        # looked up by the model version each prediction carries.
        self.calibrations = calibrations
        path = weights_file or cfg.signals.weights_file or Path(cfg.paths.home) / "signal_weights.json"
        self.weights = WeightsFile(path, EnsembleWeights.from_config(cfg.signals.weights))
        self.warmup_bars = warmup_bars
        self.prediction_wait_s = cfg.signals.prediction_wait_s if prediction_wait_s is None else prediction_wait_s
        self.persist = persist
        self._clock = clock or time.monotonic
        self.tail: TopicTail | None = None
        self.stopping: Any = lambda: False  # the bus's stop request (build)
        # (symbol, ts) -> the model's answer: a forecast, or None for "no forecast".
        self._forecasts: dict[tuple[str, datetime], QuantileForecast | None] = {}
        self._model_live: set[str] = set()
        self._alphas: dict[str, list[AlphaSignal]] = {}
        self._alpha_done: set[tuple[str, datetime]] = set()  # bars lean_alpha has answered
        # lean_alpha let a wait run out (down, not deployed): no more waits until it answers again.
        self._alphas_silent = False
        self._last: dict[str, datetime] = {}
        self._warmed: set[str] = set()
        self.input_model = input_model
        self._buffer: list[ScoredSignal] = []
        self.guard = time_guard(cfg)
        self.alpha_calibrations = (AlphaCalibrations(conn, cfg.signals.alpha_calibration_refresh_s)
                                   if cfg.signals.alpha_calibration else None)
        self.counters = {"bars": 0, "with_forecast": 0, "prediction_wait_timeouts": 0, "warmup_bars": 0,
                         "skipped_stale": 0, "persisted": 0, "alpha_wait_timeouts": 0}

    def forget(self) -> None:
        """Drop the per-symbol state (a rebalance moved partitions): every symbol is warmed up
        again from the bars table on its next bar. Side inputs (forecasts, alphas) stay."""
        self.engine.forget_symbols()
        self._last.clear()
        self._warmed.clear()

    # ------------------------------------------------------------------ side inputs (tail thread, locked)
    def on_side_event(self, topic: str, event: Any, ts_ms: int) -> None:
        if isinstance(event, Prediction):
            key = (event.symbol, event.ts)
            if event.status == "forecast":
                h = trading_horizon(event.horizons, self.cfg.signals.horizon)  # the backtest's rule
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
                self._alphas.setdefault(event.symbol, []).append(event)

    # ------------------------------------------------------------------ handler
    def handle(self, ev: MarketRawEvent, ctx: MessageContext) -> list[Output]:
        with db_outage_is_retry(self.conn, "bars table unavailable for warm-up"):
            return self._handle(ev)

    def _warm_up(self, first: dict[tuple[str, str], datetime]) -> None:
        """Replay the history before each (symbol, bar_type)'s first bar: one read per bar type."""
        for (symbol, _), bars in histories_by_key(first, read_many_from(self.conn), self.warmup_bars).items():
            self._replay_history(symbol, bars)

    def _replay_history(self, symbol: str, bars: list[dict]) -> None:
        for bar in bars:
            self.engine.on_bar(bar, correlation_id="warmup")
            self.counters["warmup_bars"] += 1
        if bars:
            self._last[symbol] = bars[-1]["ts"]
        self._warmed.add(symbol)

    def prepare(self, batch: Sequence[Any]) -> None:
        """Batch pre-pass: warm up every new symbol of the batch with ONE bars query."""
        warmed = self._warmed.__contains__
        first = unseen_first(batch, self.input_model, lambda k: warmed(k[0]), warmed, self.guard)
        if first:
            with db_outage_is_retry(self.conn, "bars table unavailable for warm-up"):
                self._warm_up(first)

    def _wait(self, done: Any, timeout_s: float, what: str) -> bool:
        """Wait (the tail's lock held) until ``done()`` or ``timeout_s``. A stop request cuts it
        short as a RetryLater: the bar is not scored without what it waited for, it is
        redelivered to the next start instead (nothing of it committed)."""
        assert self.tail is not None
        if wait_until(self.tail.cond, done, timeout_s, self.stopping):
            return True
        if self.stopping():
            raise RetryLater(f"stopping while a bar waited for {what}")
        return False

    def _side_inputs(self, symbol: str, ts: datetime, bar_type: str) -> QuantileForecast | None:
        key = (symbol, ts)
        if symbol in self._model_live and key not in self._forecasts and self.prediction_wait_s > 0:
            if not self._wait(lambda: key in self._forecasts, self.prediction_wait_s, "its forecast"):
                self.counters["prediction_wait_timeouts"] += 1
                # The model stopped answering (champion withdrawn, inference down): score
                # without it and stop waiting on every bar until its answers come back.
                self._model_live.discard(symbol)
        if (self.alpha_source == "topic" and not self._alphas_silent and key not in self._alpha_done
                and self.alpha_wait_s > 0):
            if not self._wait(lambda: key in self._alpha_done, self.alpha_wait_s, "its alpha mark"):
                self.counters["alpha_wait_timeouts"] += 1
                # lean_alpha is not answering (down, not deployed): score with the insights
                # there are, and wait for no bar until one of its marks arrives again.
                self._alphas_silent = True
        self._alpha_done.discard(key)
        forecast = self._forecasts.pop(key, None)
        if len(self._forecasts) > 10_000:  # forecasts of bars already scored (late arrivals)
            for k in [k for k in self._forecasts if k[1] <= self._last.get(k[0], k[1])]:
                del self._forecasts[k]
        if len(self._alpha_done) > 10_000:  # marks of bars already scored (late arrivals)
            self._alpha_done = {k for k in self._alpha_done if k[1] > self._last.get(k[0], k[1])}
        pending = self._alphas.get(symbol)
        if pending:
            due = [a for a in pending if a.ts <= ts]
            self._alphas[symbol] = [a for a in pending if a.ts > ts]
            for a in sorted(due, key=lambda a: a.ts):
                self.engine.observe_alpha(symbol, a.alpha, _DIR[a.direction], a.ts, a.period * bar_duration(bar_type),
                                          bar_type)
        return forecast

    def _handle(self, ev: MarketRawEvent) -> list[Output]:
        symbol, ts = ev.symbol, ev.ts
        if symbol not in self._warmed:  # not seen by a batch pre-pass (handled directly)
            self._warm_up({(symbol, ev.bar_type): ts})
        last = self._last.get(symbol)
        if last is not None and ts <= last:
            self.counters["skipped_stale"] += 1
            return []
        self.weights.poll(self.engine, self._clock())
        if self.tail is not None:
            with self.tail.cond:
                forecast = self._side_inputs(symbol, ts, ev.bar_type)
        else:
            forecast = None
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

    def flush(self, contexts: Sequence[MessageContext] = ()) -> int:
        """Write the batch's signals (before the Kafka commit); a DB outage is RetryLater."""
        if not self._buffer:
            return 0
        rows, self._buffer = self._buffer, []
        with db_outage_is_retry(self.conn, "signals table unavailable"):
            conn = self.conn.get()
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO signals (event_id, correlation_id, symbol, ts, direction, score, confidence, payload)"
                    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s::jsonb) ON CONFLICT DO NOTHING",
                    [(s.event_id, s.correlation_id, s.ticker, s.ts, s.ensemble_direction, s.signal_score,
                      s.ensemble_confidence, s.model_dump_json()) for s in rows])
        self.counters["persisted"] += len(rows)
        return len(rows)


def build(cfg: AwetConfig, endpoints: Any, *, input_topic: str = MARKET_RAW, output_topic: str = SIGNALS_SCORED,
          predictions_topic: str | None = PREDICTIONS, alpha_topic: str = ALPHA_SIGNALS,
          alpha_source: str | None = None, group: str | None = None, name: str = NAME,
          weights_file: Path | None = None, warmup_bars: int = DEFAULT_WARMUP_BARS,
          prediction_wait_s: float | None = None, tracker: Any = None,
          calibrations: ModelCalibrations | None = None, **bus_kwargs: Any) -> LiveService:
    """``predictions_topic=None``: no model input at all (alphas-only, no side reader).
    ``calibrations``: where model calibrators come from (default: the MLflow registry)."""
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    state = SignalService(cfg, conn, output_topic=output_topic, alpha_source=alpha_source,
                          weights_file=weights_file, warmup_bars=warmup_bars, prediction_wait_s=prediction_wait_s,
                          calibrations=calibrations if calibrations is not None else ModelCalibrations(cfg),
                          input_model=contract_of(input_topic, MarketRawEvent))
    if contract_of(output_topic, ScoredSignal) is not ScoredSignal:
        raise ValueError(f"topic {output_topic!r} does not carry ScoredSignal")
    if tracker is not None:
        bus_kwargs.setdefault("on_metrics", tracker.hook(name, [input_topic]))
    side: dict[str, Any] = {}
    if predictions_topic:
        side[predictions_topic] = contract_of(predictions_topic, Prediction)
    if state.alpha_source == "topic":
        side[alpha_topic] = contract_of(alpha_topic, AlphaSignal)
    tail = None
    try:
        if side:
            tail = tail_for(cfg, endpoints, name, side, state.on_side_event)
            tail.since_ms = tracker.start_ms if tracker is not None else 0
            state.tail = tail.start()
            if tracker is not None:
                tracker.add_tail(name, tail)
        bus = make_bus(
            cfg, endpoints, name=name, topics={input_topic: state.input_model}, guard=state.guard,
            handler=state.handle, group=group, before_batch=state.prepare, before_commit=state.flush,
            resources=[r for r in (tail, conn) if r is not None], component=state, **bus_kwargs,
        )
        state.stopping = lambda: bus.stop_requested  # a stop cuts a side-input wait short
        return bus
    except Exception:
        if tail is not None:
            tail.close()
        conn.close()
        raise
