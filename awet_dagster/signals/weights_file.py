"""``WeightsFile``: runtime ensemble weights from a JSON file an operator edits.

``signals.weights_file`` (default ``<paths.home>/signal_weights.json``) holds a JSON object
such as ``{"tft": 0.4, "rsi": 0.3}`` (components not named keep their configured weight); it
is re-read when its mtime changes (checked at most once a second), applied from the next
bar; an invalid file is logged and ignored, a deleted file restores the configured weights.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from awet_dagster.signals.engine import SignalEngine
from awet_dagster.signals.weights import EnsembleWeights

log = logging.getLogger("awet.signals.weights_file")


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
