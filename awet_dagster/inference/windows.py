"""``FeatureWindows``: the last N feature rows per (symbol, bar_type), oldest first, turned into
the (lookback, n_features) window a predictor's preprocessing expects."""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np


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
