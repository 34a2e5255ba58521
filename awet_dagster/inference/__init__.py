"""Live inference core: where the serving model comes from, and per-symbol feature windows.

Pure core (no Kafka, no Dagster). The live ``inference`` service (``live.services.inference``)
wires these to the ``engineered`` and ``predictions`` topics.

- ``PredictorSource.current() -> (version, predictor) | None``: the model to serve now.
  ``MlflowChampionSource`` polls the registry's ``champion`` alias every ``poll_s`` seconds
  and hot-swaps to a new version (download + load happen before the swap; a failure keeps
  the previous model); its ``oos_sharpe`` is the served version's walk-forward median OOS
  Sharpe (None when unknown). ``StaticPredictorSource`` is the test double / fixed-model source.
- ``FeatureWindows``: the last N feature rows per (symbol, bar_type), oldest first, turned
  into the (lookback, n_features) window a predictor's preprocessing expects.
- ``to_quantiles``: the predictor's per-horizon {quantile: forward log return} ->
  contract q10/q50/q90 as simple returns (monotone map, so the order is kept; crossed
  model quantiles are sorted, the contract requires q10 <= q50 <= q90).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger("awet.inference")


@runtime_checkable
class Predictor(Protocol):
    """What the live loop needs of a model (``awet_dagster.model.onnx_export.OnnxPredictor``)."""

    preprocessing: Any  # .feature_columns, .encoder_length, .horizons, .quantiles

    def predict(self, windows: Mapping[str, object]) -> dict[str, dict[int, dict[float, float]]]: ...


@runtime_checkable
class PredictorSource(Protocol):
    def current(self) -> tuple[str, Predictor] | None:
        """(model version, predictor) to serve now, or None when no model is registered."""
        ...


class StaticPredictorSource:
    """A fixed (or test-controlled) model: ``set(version, predictor)`` / ``clear()``."""

    def __init__(self, version: str | None = None, predictor: Predictor | None = None) -> None:
        self._lock = threading.Lock()
        self._current = (version, predictor) if version and predictor is not None else None

    def set(self, version: str, predictor: Predictor) -> None:
        with self._lock:
            self._current = (version, predictor)

    def clear(self) -> None:
        with self._lock:
            self._current = None

    def current(self) -> tuple[str, Predictor] | None:
        with self._lock:
            return self._current


class MlflowChampionSource:
    """The registry's champion, re-checked every ``poll_s`` seconds (no restart to swap).

    ``lookup(cfg) -> ModelRef | None``, ``load(cfg, ref) -> predictor`` and
    ``sharpe(cfg, ref) -> float | None`` are injectable (defaults:
    ``awet_dagster.model.registry.get_champion`` / download + ``OnnxPredictor.load`` /
    ``registry.version_oos_sharpe``). ``oos_sharpe``: that number for the version served (None
    while idle, or when it cannot be read: the model is served all the same).
    """

    def __init__(self, cfg: Any, *, poll_s: float = 30.0, lookup: Callable[[Any], Any] | None = None,
                 load: Callable[[Any, Any], Predictor] | None = None,
                 sharpe: Callable[[Any, Any], float | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.poll_s = poll_s
        self._lookup = lookup or _default_lookup
        self._load = load or _default_load
        self._sharpe = sharpe or _default_sharpe
        self.oos_sharpe: float | None = None
        self._clock = clock
        self._next_check = 0.0
        self._current: tuple[str, Predictor] | None = None
        self.swaps = 0
        self.errors = 0

    def current(self) -> tuple[str, Predictor] | None:
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self.poll_s
            self._refresh()
        return self._current

    def _refresh(self) -> None:
        try:
            ref = self._lookup(self.cfg)
        except Exception as exc:  # noqa: BLE001 - registry down: keep serving what we have
            self.errors += 1
            log.warning("model registry lookup failed (keeping %s): %r",
                        self._current[0] if self._current else "no model", exc)
            return
        if ref is None:
            if self._current is not None:
                log.warning("champion alias removed: inference idle (was %s)", self._current[0])
            self._current = None
            self.oos_sharpe = None
            return
        version = f"{ref.name}:{ref.version}"
        if self._current is not None and self._current[0] == version:
            return
        try:
            predictor = self._load(self.cfg, ref)
        except Exception as exc:  # noqa: BLE001
            self.errors += 1
            log.error("could not load champion %s (keeping %s): %r", version,
                      self._current[0] if self._current else "no model", exc)
            return
        try:
            sharpe = self._sharpe(self.cfg, ref)
        except Exception as exc:  # noqa: BLE001 - a metric, not a reason to refuse the model
            log.warning("could not read the OOS Sharpe of %s: %r", version, exc)
            sharpe = None
        log.info("serving model %s (was %s)", version, self._current[0] if self._current else "none")
        self.oos_sharpe = sharpe
        self._current = (version, predictor)
        self.swaps += 1


def _default_lookup(cfg: Any) -> Any:
    from awet_dagster.model.registry import get_champion

    return get_champion(cfg)


def _default_sharpe(cfg: Any, ref: Any) -> float | None:
    from awet_dagster.model.registry import version_oos_sharpe

    return version_oos_sharpe(cfg, ref.version)


def _default_load(cfg: Any, ref: Any) -> Predictor:
    from awet_dagster.model.onnx_export import OnnxPredictor
    from awet_dagster.model.registry import download_model

    # Pin the version (not the alias): the alias may move between lookup and download.
    return OnnxPredictor.load(download_model(cfg, f"models:/{ref.name}/{ref.version}"))


class ModelCalibrations:
    """The Platt calibrator of each served model version (``"name:version"``, as on
    ``Prediction.model_version``), loaded once from the version's training run; None for a
    version without one. A failed load (registry down) is retried after ``retry_s``,
    meanwhile the version scores uncalibrated. ``load(cfg, name, version)`` is injectable
    (default: ``registry.version_calibration``)."""

    def __init__(self, cfg: Any, *, load: Callable[[Any, str, str], Any] | None = None, retry_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self._load = load or _default_calibration
        self.retry_s = retry_s
        self._clock = clock
        self._known: dict[str, Any] = {}
        self._retry_at: dict[str, float] = {}
        self.errors = 0

    def get(self, model_version: str) -> Any:
        if model_version in self._known:
            return self._known[model_version]
        if self._clock() < self._retry_at.get(model_version, 0.0):
            return None
        name, _, version = model_version.rpartition(":")
        if not name:
            self._known[model_version] = None  # not a registry version (tests, tools): uncalibrated
            return None
        try:
            cal = self._load(self.cfg, name, version)
        except Exception as exc:  # noqa: BLE001 - registry down: uncalibrated until the retry
            self.errors += 1
            self._retry_at[model_version] = self._clock() + self.retry_s
            log.warning("calibration of %s not loaded (retry in %.0fs): %r", model_version, self.retry_s, exc)
            return None
        log.info("calibration of %s: %s", model_version, "Platt a=%.3f b=%.3f" % (cal.a, cal.b) if cal else "none")
        self._known[model_version] = cal
        return cal


def _default_calibration(cfg: Any, name: str, version: str) -> Any:
    from awet_dagster.model.registry import version_calibration

    return version_calibration(cfg, name, version)


# --------------------------------------------------------------------------- windows
@dataclass
class _Rows:
    ts: deque
    rows: deque


class FeatureWindows:
    """Last ``maxlen`` feature rows per (symbol, bar_type); duplicates/out-of-order skipped."""

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        self.maxlen = maxlen
        self._data: dict[tuple[str, str], _Rows] = {}
        self.skipped_stale = 0

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._data

    def add(self, symbol: str, bar_type: str, ts: datetime, features: Mapping[str, float]) -> bool:
        d = self._data.get((symbol, bar_type))
        if d is None:
            d = self._data[(symbol, bar_type)] = _Rows(deque(maxlen=self.maxlen), deque(maxlen=self.maxlen))
        if d.ts and ts <= d.ts[-1]:
            self.skipped_stale += 1
            return False
        d.ts.append(ts)
        d.rows.append(features)
        return True

    def window(self, symbol: str, bar_type: str, columns: tuple[str, ...], length: int) -> np.ndarray | None:
        """(length, len(columns)) float array, oldest first (NaN = missing), or None if short."""
        d = self._data.get((symbol, bar_type))
        if d is None or len(d.rows) < length:
            return None
        rows = list(d.rows)[-length:]
        nan = math.nan
        return np.array([[r.get(c, nan) for c in columns] for r in rows], dtype=np.float64)


def _pick(qs: Mapping[float, float], target: float) -> float:
    key = min(qs, key=lambda q: abs(float(q) - target))
    return float(qs[key])


def simple_return_quantiles(log_quantiles: Any) -> np.ndarray:
    """(..., n_quantiles) forward LOG-return quantiles -> simple-return quantiles, sorted on
    the last axis: the numbers every consumer trades on (live ``Prediction`` events, the
    backtest and the calibration fit of the walk-forward), so both paths score alike.
    expm1 is monotone, so it only rescales; the sort repairs crossed quantile heads."""
    return np.sort(np.expm1(np.asarray(log_quantiles, dtype=np.float64)), axis=-1)


def to_quantiles(per_quantile: Mapping[float, float]) -> tuple[float, float, float]:
    """{quantile: forward log return} -> sorted (q10, q50, q90) simple returns."""
    q10, q50, q90 = simple_return_quantiles([_pick(per_quantile, q) for q in (0.1, 0.5, 0.9)]).tolist()
    return q10, q50, q90


__all__ = [
    "FeatureWindows",
    "MlflowChampionSource",
    "ModelCalibrations",
    "Predictor",
    "PredictorSource",
    "StaticPredictorSource",
    "simple_return_quantiles",
    "to_quantiles",
]
