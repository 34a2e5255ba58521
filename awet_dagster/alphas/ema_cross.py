"""Port of Lean's EmaCrossAlphaModel: UP when EMA(fast) crosses above EMA(slow), DOWN below."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from awet_dagster.alphas.signal import AlphaSignal, Direction, bar_duration
from awet_dagster.indicators import EmaStream, ema
from awet_dagster.sources.corporate_actions import adjusted_close


def ema_cross_decision(fast: float, slow: float, fast_over_slow: bool | None) -> tuple[bool | None, Direction | None]:
    """New state (fast > slow, None until both EMAs are ready) and the direction to emit.

    The first ready bar only establishes the state. As in Lean, a cross is signalled
    only on a strict inequality (DOWN needs slow > fast); touching equality moves the
    state to "not over" silently."""
    if math.isnan(fast) or math.isnan(slow):
        return fast_over_slow, None
    over = fast > slow
    if fast_over_slow is None:
        return over, None
    if fast_over_slow and slow > fast:
        return over, Direction.DOWN
    if not fast_over_slow and fast > slow:
        return over, Direction.UP
    return over, None


class EmaCrossAlpha:
    """Streaming EMA-cross alpha for one symbol."""

    def __init__(self, symbol: str, fast: int = 12, slow: int = 26, bar_type: str = "daily") -> None:
        if fast >= slow:
            raise ValueError("fast period must be shorter than slow period")
        self.symbol = symbol
        self.name = f"EmaCrossAlphaModel({fast},{slow},{bar_type})"
        # Lean: prediction interval = resolution x fast period.
        self.period = bar_duration(bar_type) * fast
        self._fast, self._slow = EmaStream(fast), EmaStream(slow)
        self.fast_over_slow: bool | None = None

    def update(self, bar: Mapping) -> list[AlphaSignal]:
        close = adjusted_close(bar)
        self.fast_over_slow, direction = ema_cross_decision(
            self._fast.update(close), self._slow.update(close), self.fast_over_slow
        )
        if direction is None:
            return []
        return [AlphaSignal(self.symbol, bar["ts"], self.name, direction, self.period)]

    @classmethod
    def batch(cls, symbol, bar_type, ts, high, low, close, fast: int = 12, slow: int = 26) -> list[AlphaSignal]:
        model = cls(symbol, fast, slow, bar_type)
        c = np.asarray(close, dtype=float)
        out, state = [], None
        for t, f, s in zip(ts, ema(c, fast).tolist(), ema(c, slow).tolist(), strict=True):
            state, direction = ema_cross_decision(f, s, state)
            if direction is not None:
                out.append(AlphaSignal(symbol, t, model.name, direction, model.period))
        return out
