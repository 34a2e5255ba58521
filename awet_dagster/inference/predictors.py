"""Where the serving model comes from: ``PredictorSource.current() -> (version, predictor) | None``.

``ChampionSource`` polls the registry's ``champion`` alias every ``poll_s`` seconds and
hot-swaps to a new version (download + load happen before the swap; a failure keeps the
previous model); its ``oos_sharpe`` is the served version's walk-forward median OOS Sharpe
(None when unknown). ``StaticPredictorSource`` is the test double / fixed-model source.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

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


class ModelSource(Protocol):
    """What ``ChampionSource`` needs of a registry (``awet_dagster.model.registry.ModelRegistry``
    or its ``FakeModelRegistry`` twin)."""

    def get_champion(self) -> Any: ...

    def load_version(self, version: str) -> Predictor: ...

    def version_oos_sharpe(self, version: str) -> float | None: ...


class ChampionSource:
    """The registry's champion, re-checked every ``poll_s`` seconds (no restart to swap): the
    version is pinned when it is loaded (the alias may move meanwhile). ``oos_sharpe``: the
    served version's walk-forward median OOS Sharpe (None while idle, or when it cannot be
    read: the model is served all the same)."""

    def __init__(self, registry: ModelSource, *, poll_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.poll_s = poll_s
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
            ref = self.registry.get_champion()
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
            predictor = self.registry.load_version(ref.version)
        except Exception as exc:  # noqa: BLE001
            self.errors += 1
            log.error("could not load champion %s (keeping %s): %r", version,
                      self._current[0] if self._current else "no model", exc)
            return
        try:
            sharpe = self.registry.version_oos_sharpe(ref.version)
        except Exception as exc:  # noqa: BLE001 - a metric, not a reason to refuse the model
            log.warning("could not read the OOS Sharpe of %s: %r", version, exc)
            sharpe = None
        log.info("serving model %s (was %s)", version, self._current[0] if self._current else "none")
        self.oos_sharpe = sharpe
        self._current = (version, predictor)
        self.swaps += 1
