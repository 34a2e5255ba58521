"""Checks over computed feature tables."""
from __future__ import annotations

import polars as pl

from awet_dagster.features import FEATURES
from awet_dagster.quality.bars import QualityResult

# Plausible ranges of the bounded features (others are ratios/returns without a hard bound).
RANGES = {
    "rsi_14": (0.0, 100.0),
    "rv_5": (0.0, None),
    "rv_15": (0.0, None),
    "atr_14_norm": (0.0, None),
    "bb_width": (0.0, None),
    "spread_bps": (0.0, None),
    "minute_of_day": (0.0, 1439.0),
    "day_of_week": (0.0, 6.0),
}


def no_missing_after_warmup(features: pl.DataFrame, warm_mask: pl.Series) -> QualityResult:
    """No non-nullable feature is null/NaN on rows past the symbol's warm-up."""
    required = [f.name for f in FEATURES if not f.nullable]
    warm = features.filter(warm_mask)
    counts = {c: int(warm[c].is_null().sum() + warm[c].is_nan().sum()) for c in required}
    bad = {c: n for c, n in counts.items() if n}
    return QualityResult(
        "no_missing_after_warmup", not bad,
        "every non-optional feature is present once a symbol has warmed up",
        {"rows_checked": warm.height, "missing_by_feature": bad},
    )


def values_in_range(features: pl.DataFrame) -> QualityResult:
    bad = {}
    for name, (lo, hi) in RANGES.items():
        col = features[name].drop_nulls().drop_nans()
        n = 0
        if lo is not None:
            n += int((col < lo).sum())
        if hi is not None:
            n += int((col > hi).sum())
        if n:
            bad[name] = n
    finite_bad = {
        c: int(features[c].is_infinite().sum())
        for c in (f.name for f in FEATURES)
        if features[c].dtype.is_float() and int(features[c].is_infinite().sum())
    }
    return QualityResult(
        "values_in_range", not bad and not finite_bad,
        "bounded features inside their range (RSI 0–100, volatilities ≥ 0, …) and no infinities",
        {"out_of_range": bad, "infinite": finite_bad},
    )
