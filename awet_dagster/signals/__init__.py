"""Signal engine: TFT quantiles + Lean alphas + bars -> ScoredSignal (pure core)."""
from awet_dagster.signals.calibration import PlattCalibrator, fit_platt
from awet_dagster.signals.engine import (
    ALPHA_COMPONENT,
    NO_MODEL_VERSION,
    AlphaInsight,
    QuantileForecast,
    SignalEngine,
    signal_passed,
)
from awet_dagster.signals.filters import (
    FilterResult,
    VolumeTracker,
    earnings_filter,
    exchange_calendar,
    market_hours_filter,
    parse_earnings_blackout,
    spread_filter,
    volume_filter,
)
from awet_dagster.signals.regime import Regime, classify_regime
from awet_dagster.signals.tft import TftView, tft_view, trading_horizon
from awet_dagster.signals.weights import COMPONENTS, EnsembleWeights

__all__ = [
    "ALPHA_COMPONENT",
    "COMPONENTS",
    "NO_MODEL_VERSION",
    "AlphaInsight",
    "EnsembleWeights",
    "FilterResult",
    "PlattCalibrator",
    "QuantileForecast",
    "Regime",
    "SignalEngine",
    "TftView",
    "VolumeTracker",
    "classify_regime",
    "earnings_filter",
    "exchange_calendar",
    "fit_platt",
    "market_hours_filter",
    "parse_earnings_blackout",
    "signal_passed",
    "spread_filter",
    "tft_view",
    "trading_horizon",
    "volume_filter",
]
