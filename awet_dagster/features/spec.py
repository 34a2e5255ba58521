"""The feature set, defined once: names, inputs, parameters and warm-up.

Both the batch (`compute_features`) and the streaming (`FeatureState`) paths emit
exactly `FEATURE_COLUMNS`, and `FEATURE_SET_VERSION` is a hash of this spec, so a
model trained on one version can refuse features of another.

Conventions (all point-in-time: the row for bar t uses bars <= t only and is
known at bar t's close, i.e. at ts + bar length, since `ts` is the bar start):
- returns are log returns of close; realized volatility is the *population* std
  (ddof=0) of 1-bar log returns, the same convention as the Bollinger std;
- price-level indicators are divided by close (or their middle) to be scale-free;
- `warmup` is the number of leading bars of a symbol whose value is missing; from
  bar index `warmup` on the value is never missing (except `nullable` features,
  which depend on optional inputs: quotes, Reddit data).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    inputs: tuple[str, ...]
    warmup: int
    description: str
    params: tuple[tuple[str, float], ...] = field(default=())
    nullable: bool = False


# Indicator parameters, referenced by both implementations.
RET_HORIZONS = (1, 5, 15)
RV_WINDOWS = (5, 15)
SMA_WINDOWS = (5, 20)
EMA_WINDOWS = (5, 20)
RSI_PERIOD = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
ATR_PERIOD = 14
BB_PERIOD, BB_K = 20, 2.0
VOLUME_Z_WINDOW = 20
REGIME_FAST, REGIME_SLOW = 20, 50
# A std this small relative to the level is rounding noise of a constant window:
# treat it as zero so batch and streaming take the same branch.
FLAT_STD_REL = 1e-10
CALENDAR_TZ = "America/New_York"

_C = ("close",)

FEATURES: tuple[FeatureSpec, ...] = (
    *(
        FeatureSpec(f"ret_{h}", _C, h, f"log(close_t / close_t-{h})", (("horizon", h),))
        for h in RET_HORIZONS
    ),
    *(
        FeatureSpec(f"rv_{w}", _C, w, f"population std of the last {w} 1-bar log returns", (("window", w),))
        for w in RV_WINDOWS
    ),
    *(FeatureSpec(f"sma_{w}_ratio", _C, w - 1, f"SMA({w}) / close - 1", (("period", w),)) for w in SMA_WINDOWS),
    *(
        FeatureSpec(f"ema_{w}_ratio", _C, w - 1, f"Lean EMA({w}) / close - 1", (("period", w),))
        for w in EMA_WINDOWS
    ),
    FeatureSpec("rsi_14", _C, RSI_PERIOD, "Lean RSI(14), Wilder smoothing, 0..100", (("period", RSI_PERIOD),)),
    FeatureSpec(
        "macd_norm",
        _C,
        MACD_SLOW - 1,
        "MACD(12,26) line / close",
        (("fast", MACD_FAST), ("slow", MACD_SLOW)),
    ),
    FeatureSpec(
        "macd_hist_norm",
        _C,
        MACD_SLOW + MACD_SIGNAL - 2,
        "MACD(12,26,9) histogram / close",
        (("fast", MACD_FAST), ("slow", MACD_SLOW), ("signal", MACD_SIGNAL)),
    ),
    FeatureSpec(
        "atr_14_norm", ("high", "low", "close"), ATR_PERIOD - 1, "Lean ATR(14, Wilder) / close", (("period", ATR_PERIOD),)
    ),
    FeatureSpec(
        "bb_pct_b",
        _C,
        BB_PERIOD - 1,
        "(close - lower) / (upper - lower) of Bollinger(20, 2, population std); 0.5 if the band is flat",
        (("period", BB_PERIOD), ("k", BB_K), ("flat_std_rel", FLAT_STD_REL)),
    ),
    FeatureSpec(
        "bb_width",
        _C,
        BB_PERIOD - 1,
        "(upper - lower) / middle of Bollinger(20, 2)",
        (("period", BB_PERIOD), ("k", BB_K)),
    ),
    FeatureSpec(
        "volume_z_20",
        ("volume",),
        VOLUME_Z_WINDOW - 1,
        "(volume - mean20) / population std20; 0 if the window is flat",
        (("window", VOLUME_Z_WINDOW), ("flat_std_rel", FLAT_STD_REL)),
    ),
    FeatureSpec(
        "spread_bps", ("bid", "ask"), 0, "(ask - bid) / mid * 1e4; null without both quotes", nullable=True
    ),
    FeatureSpec("minute_of_day", ("ts",), 0, f"minutes since local midnight of the bar start, {CALENDAR_TZ}"),
    FeatureSpec("day_of_week", ("ts",), 0, f"local weekday of the bar start, Monday=0, {CALENDAR_TZ}"),
    FeatureSpec(
        "regime_sma20_sma50",
        _C,
        REGIME_SLOW - 1,
        "SMA(20) / SMA(50) - 1",
        (("fast", REGIME_FAST), ("slow", REGIME_SLOW)),
    ),
    FeatureSpec("regime_close_sma20", _C, REGIME_FAST - 1, "close / SMA(20) - 1", (("period", REGIME_FAST),)),
    FeatureSpec("reddit_mentions", ("reddit_mentions",), 0, "Reddit mentions, passed through", nullable=True),
    FeatureSpec("reddit_sentiment", ("reddit_sentiment",), 0, "Reddit sentiment, passed through", nullable=True),
)

FEATURE_COLUMNS: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURES_BY_NAME: dict[str, FeatureSpec] = {f.name: f for f in FEATURES}
def is_required(column: str) -> bool:
    """A model input that must be present in a window (training windows and live ones alike):
    every feature except the nullable ones (optional inputs: quotes, Reddit); an unknown
    column is required."""
    spec = FEATURES_BY_NAME.get(column)
    return spec is None or not spec.nullable


# Bars a symbol needs before every non-nullable feature is present.
MAX_WARMUP: int = max(f.warmup for f in FEATURES)
# Optional input columns a caller may join onto the bars.
OPTIONAL_INPUTS: tuple[str, ...] = ("reddit_mentions", "reddit_sentiment")

# Bump when an implementation changes without the spec changing.
_IMPLEMENTATION_REVISION = 1


def _version() -> str:
    payload = json.dumps(
        {"revision": _IMPLEMENTATION_REVISION, "features": [asdict(f) for f in FEATURES]},
        sort_keys=True,
        separators=(",", ":"),
    )
    return "fs1-" + hashlib.sha256(payload.encode()).hexdigest()[:12]


FEATURE_SET_VERSION: str = _version()
