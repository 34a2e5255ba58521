"""Market regime from price vs SMA(20) vs SMA(50), and its position-size scale.

Rule (documented in the README of the signals package too):
- bull: close > SMA20 > SMA50 -> scale `regime_scaling.bull` (1.0)
- bear: close < SMA20 < SMA50 -> scale `regime_scaling.bear` (0.7)
- otherwise sideways          -> scale `regime_scaling.sideways` (0.5)
- fewer than 50 bars (SMA50 not ready): "sideways" (no trend established yet) with
  ``ready`` False, so a signal can say its regime is a default.
The scale multiplies |signal_score| into ``ensemble_confidence``, which risk sizes the position
by (applied once: risk multiplies nothing more). The confidence gate (`signals.min_confidence`)
reads the calibrated probability of the UNscaled score, so a strong signal in a sideways
market still passes, at half size; the regime's own veto is a separate, configurable rule
(`signals.regime_filter`, e.g. no new longs in a bear market below a probability).
Inputs are the feature-set ratios (close/SMA20 - 1, SMA20/SMA50 - 1), so the engine can
take them from a FeatureEvent or from its own SMA streams and decide identically.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from awet_dagster.config.schema import RegimeScaling


@dataclass(frozen=True)
class Regime:
    name: str  # "bull" | "bear" | "sideways"
    scale: float
    ready: bool = True  # False: SMA50 not warm yet, the sideways default


def classify_regime(close_over_sma20: float, sma20_over_sma50: float, scaling: RegimeScaling) -> Regime:
    """`close_over_sma20` = close/SMA20 - 1, `sma20_over_sma50` = SMA20/SMA50 - 1 (NaN: not ready)."""
    if math.isnan(close_over_sma20) or math.isnan(sma20_over_sma50):
        return Regime("sideways", scaling.sideways, ready=False)
    if close_over_sma20 > 0 and sma20_over_sma50 > 0:
        return Regime("bull", scaling.bull)
    if close_over_sma20 < 0 and sma20_over_sma50 < 0:
        return Regime("bear", scaling.bear)
    return Regime("sideways", scaling.sideways)
