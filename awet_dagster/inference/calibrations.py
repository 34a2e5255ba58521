"""The Platt calibrator of each served model version, loaded once from its training run."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("awet.inference")


class ModelCalibrations:
    """The Platt calibrator of each served model version (``"name:version"``, as on
    ``Prediction.model_version``), loaded once from the version's training run; None for a
    version without one. A failed load (registry down) is retried after ``retry_s``,
    meanwhile the version scores uncalibrated. ``registry``: anything with
    ``version_calibration(name, version)`` (``awet_dagster.model.registry.ModelRegistry``)."""

    def __init__(self, registry: Any, *, retry_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
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
            cal = self.registry.version_calibration(name, version)
        except Exception as exc:  # noqa: BLE001 - registry down: uncalibrated until the retry
            self.errors += 1
            self._retry_at[model_version] = self._clock() + self.retry_s
            log.warning("calibration of %s not loaded (retry in %.0fs): %r", model_version, self.retry_s, exc)
            return None
        log.info("calibration of %s: %s", model_version, "Platt a=%.3f b=%.3f" % (cal.a, cal.b) if cal else "none")
        self._known[model_version] = cal
        return cal
