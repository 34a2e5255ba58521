"""Direction, confidence and P(return > 0) from a TFT quantile forecast.

The q10/q50/q90 are read as quantiles of a normal distribution of the forward return:
mu = q50 and sigma = (q90 - q10) / (2 * z90), z90 = Phi^-1(0.9) ~ 1.2816. A skewed
forecast (q50 not centred) is approximated by its median and spread; that is enough for
a sign and a strength, and keeps the map monotone in q50 for a fixed spread.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Z90 = 1.2815515655446004  # Phi^-1(0.9)


def _phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


@dataclass(frozen=True)
class TftView:
    score: float  # 2 * P(r > 0) - 1, in [-1, 1]: the component's vote
    direction: int  # sign(q50): -1, 0, +1
    confidence: float  # |q50| / (|q50| + half q10-q90 spread), in [0, 1)
    prob_up: float  # P(r > 0) under the normal read of the quantiles


def tft_view(q10: float, q50: float, q90: float) -> TftView:
    if not (q10 <= q50 <= q90) or not all(math.isfinite(v) for v in (q10, q50, q90)):
        raise ValueError(f"quantiles must be finite with q10 <= q50 <= q90, got {q10}, {q50}, {q90}")
    direction = (q50 > 0) - (q50 < 0)
    half_spread = (q90 - q10) / 2.0
    if half_spread <= 0:
        # A point forecast: certain of its sign (or of nothing when it is exactly 0).
        prob_up = 0.5 if direction == 0 else float(direction > 0)
        confidence = float(direction != 0)
    else:
        sigma = half_spread / Z90
        prob_up = _phi(q50 / sigma)
        confidence = abs(q50) / (abs(q50) + half_spread)
    return TftView(score=2.0 * prob_up - 1.0, direction=direction, confidence=confidence, prob_up=prob_up)


def trading_horizon(available, configured: int | None) -> int:
    """The prediction horizon the TFT component trades on: `signals.horizon` when set (it
    must be one the model predicts), else the shortest. Shared by backtest and live."""
    hs = sorted({int(h) for h in available})
    if configured is None:
        return hs[0]
    if configured not in hs:
        raise ValueError(f"signals.horizon={configured} is not a predicted horizon {hs}")
    return configured
