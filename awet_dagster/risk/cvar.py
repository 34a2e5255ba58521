"""Historical-simulation CVaR of the portfolio from the held symbols' own bar returns.

No distribution is assumed: each past bar t is a scenario whose PnL is
sum_i exposure_i * r_i,t (signed dollar exposure times that symbol's return over bar t),
using only bars where every held symbol traded (aligned on ts). CVaR-95 is the mean of
the worst 5% of scenario losses, as a fraction of equity. It therefore moves when the
positions (or their price history) change, which a formula on constants would not.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np


@dataclass(frozen=True)
class CvarResult:
    cvar: float | None  # loss fraction of equity (>= 0 means a loss); None: not enough data
    var: float | None
    observations: int
    reason: str | None = None


class ReturnHistory:
    """Last `lookback` bar returns per symbol, keyed by the ts of the bar that ends them."""

    def __init__(self, lookback: int) -> None:
        self.lookback = lookback
        self._last: dict[str, tuple[datetime, float]] = {}
        self._returns: dict[str, deque[tuple[datetime, float]]] = {}

    def update(self, symbol: str, ts: datetime, close: float) -> None:
        last = self._last.get(symbol)
        if last is not None:
            if ts <= last[0]:
                return  # replayed/duplicate bar: its return is already recorded
            self._returns.setdefault(symbol, deque(maxlen=self.lookback)).append((ts, close / last[1] - 1.0))
        self._last[symbol] = (ts, close)

    def returns(self, symbol: str) -> dict[datetime, float]:
        return dict(self._returns.get(symbol, ()))


def historical_cvar(
    exposures: Mapping[str, float],
    history: ReturnHistory,
    equity: float,
    *,
    alpha: float = 0.95,
    min_observations: int = 20,
) -> CvarResult:
    """CVaR_alpha of signed dollar `exposures` over the aligned return history."""
    held = {s: v for s, v in exposures.items() if v != 0}
    if not held:
        return CvarResult(0.0, 0.0, 0)
    if equity <= 0:
        return CvarResult(None, None, 0, "equity <= 0")
    series = {s: history.returns(s) for s in held}
    common = set.intersection(*(set(r) for r in series.values()))
    n = len(common)
    if n < min_observations:
        return CvarResult(None, None, n, f"only {n} aligned bar returns for {sorted(held)} (< {min_observations})")
    stamps = sorted(common)
    pnl = np.zeros(n)
    for s, v in held.items():
        r = series[s]
        pnl += v * np.fromiter((r[t] for t in stamps), float, n)
    losses = np.sort(-pnl / equity)[::-1]  # worst first
    # round() first: n * (1 - 0.95) is 5.000000000000004 for n = 100, and ceil would take 6.
    k = max(1, math.ceil(round(n * (1.0 - alpha), 9)))
    return CvarResult(float(losses[:k].mean()), float(losses[k - 1]), n)
