"""Port of Lean's RsiAlphaModel: Wilder RSI(14) with 70/30 trips and 65/35 hysteresis."""
from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum

import numpy as np

from awet_dagster.alphas.signal import AlphaSignal, Direction, bar_duration
from awet_dagster.indicators import RsiStream, rsi
from awet_dagster.sources.corporate_actions import adjusted_close

UPPER_TRIP, LOWER_TRIP = 70.0, 30.0
UPPER_RELEASE, LOWER_RELEASE = 65.0, 35.0


class RsiState(Enum):
    TRIPPED_LOW = 0
    MIDDLE = 1
    TRIPPED_HIGH = 2


def next_rsi_state(value: float, previous: RsiState) -> RsiState:
    """Lean's GetState: trip beyond 70/30; leave a trip only back past 65/35, so an RSI
    oscillating between 65 and 75 after tripping high stays TrippedHigh (no spam)."""
    if value > UPPER_TRIP:
        return RsiState.TRIPPED_HIGH
    if value < LOWER_TRIP:
        return RsiState.TRIPPED_LOW
    if previous is RsiState.TRIPPED_LOW and value > LOWER_RELEASE:
        return RsiState.MIDDLE
    if previous is RsiState.TRIPPED_HIGH and value < UPPER_RELEASE:
        return RsiState.MIDDLE
    return previous


def rsi_decision(value: float, previous: RsiState) -> tuple[RsiState, Direction | None]:
    """New state and the direction to emit (None: emit nothing). Mean reversion: a trip
    high emits DOWN, a trip low emits UP; returning to the middle emits nothing."""
    if math.isnan(value):  # not ready: Lean warms up before trading; we just wait
        return previous, None
    state = next_rsi_state(value, previous)
    if state is previous or state is RsiState.MIDDLE:
        return state, None
    return state, Direction.DOWN if state is RsiState.TRIPPED_HIGH else Direction.UP


class RsiAlpha:
    """Streaming RSI alpha for one symbol."""

    def __init__(self, symbol: str, period: int = 14, bar_type: str = "daily") -> None:
        self.symbol = symbol
        self.name = f"RsiAlphaModel({period},{bar_type})"
        self.period = bar_duration(bar_type) * period
        self._rsi = RsiStream(period)
        self.state = RsiState.MIDDLE

    def update(self, bar: Mapping) -> list[AlphaSignal]:
        value = self._rsi.update(adjusted_close(bar))
        self.state, direction = rsi_decision(value, self.state)
        if direction is None:
            return []
        return [AlphaSignal(self.symbol, bar["ts"], self.name, direction, self.period)]

    @classmethod
    def batch(cls, symbol, bar_type, ts, high, low, close, period: int = 14) -> list[AlphaSignal]:
        model = cls(symbol, period, bar_type)
        values = rsi(np.asarray(close, dtype=float), period)
        out, state = [], RsiState.MIDDLE
        for t, v in zip(ts, values.tolist(), strict=True):
            state, direction = rsi_decision(v, state)
            if direction is not None:
                out.append(AlphaSignal(symbol, t, model.name, direction, model.period))
        return out
