"""Port of Lean's MacdAlphaModel: direction from the MACD signal line relative to price."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from awet_dagster.alphas.signal import AlphaSignal, Direction, bar_duration
from awet_dagster.indicators import MacdStream, macd
from awet_dagster.sources.corporate_actions import adjusted_close

BOUNCE_THRESHOLD = 0.01


def macd_decision(
    signal: float, price: float, previous: Direction | None, threshold: float = BOUNCE_THRESHOLD
) -> tuple[Direction | None, Direction | None]:
    """New previous-direction and the direction to emit. signal/price above +threshold is
    UP, below -threshold DOWN, else FLAT; emitted only when it differs from the last
    emitted one (the first ready bar always emits, FLAT included, as in Lean)."""
    if math.isnan(signal) or price == 0.0:  # Lean skips securities priced 0
        return previous, None
    normalized = signal / price
    if normalized > threshold:
        direction = Direction.UP
    elif normalized < -threshold:
        direction = Direction.DOWN
    else:
        direction = Direction.FLAT
    if direction is previous:
        return previous, None
    return direction, direction


class MacdAlpha:
    """Streaming MACD alpha for one symbol."""

    def __init__(
        self,
        symbol: str,
        fast: int = 12,
        slow: int = 26,
        signal: int = 9,
        bar_type: str = "daily",
        threshold: float = BOUNCE_THRESHOLD,
    ) -> None:
        self.symbol = symbol
        self.name = f"MacdAlphaModel({fast},{slow},{signal},Exponential,{bar_type})"
        self.period = bar_duration(bar_type) * fast
        self.threshold = threshold
        self._macd = MacdStream(fast, slow, signal)
        self.previous: Direction | None = None

    def update(self, bar: Mapping) -> list[AlphaSignal]:
        close = adjusted_close(bar)
        _, sig, _ = self._macd.update(close)
        self.previous, direction = macd_decision(sig, close, self.previous, self.threshold)
        if direction is None:
            return []
        return [AlphaSignal(self.symbol, bar["ts"], self.name, direction, self.period)]

    @classmethod
    def batch(
        cls, symbol, bar_type, ts, high, low, close, fast: int = 12, slow: int = 26, signal: int = 9,
        threshold: float = BOUNCE_THRESHOLD,
    ) -> list[AlphaSignal]:
        model = cls(symbol, fast, slow, signal, bar_type, threshold)
        c = np.asarray(close, dtype=float)
        sig = macd(c, fast, slow, signal)[1]
        out, previous = [], None
        for t, s, p in zip(ts, sig.tolist(), c.tolist(), strict=True):
            previous, direction = macd_decision(s, p, previous, threshold)
            if direction is not None:
                out.append(AlphaSignal(symbol, t, model.name, direction, model.period))
        return out
