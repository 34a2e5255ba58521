"""Turn vendor bar records into contract bars (shared by the HTTP clients).

Vendors stamp a daily bar at midnight New York (Polygon, Alpaca) or at a date; the
contract wants the session's 09:30 open, so daily stamps are reduced to their exchange
date first. Rows failing `validate_bars` are logged and kept on `Rejections` for the
caller: never dropped silently.
"""
from __future__ import annotations

import logging
from datetime import datetime

import polars as pl

from awet_dagster.sources.exchange_time import EXCHANGE_TZ, session_open_utc
from awet_dagster.sources.schema import REASON, ensure_schema, validate_bars

log = logging.getLogger("awet.sources")

VENDOR_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")


def to_bars(
    raw: pl.DataFrame, bar_type: str, source: str, lo: datetime, hi: datetime
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(good, rejected) bars from `raw` with VENDOR_COLUMNS, `ts` a UTC datetime.

    Keeps bars starting in [lo, hi); sorted by symbol, ts.
    """
    missing = [c for c in VENDOR_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"vendor frame lacks {missing}")
    ts = pl.col("ts").dt.convert_time_zone("UTC")
    if bar_type == "daily":
        ts = session_open_utc(pl.col("ts").dt.convert_time_zone(EXCHANGE_TZ).dt.date())
    factors = [pl.col(c).cast(pl.Float64) for c in ("adj_factor", "split_factor") if c in raw.columns]
    frame = raw.with_columns(
        *factors,
        ts.alias("ts"),
        pl.lit(bar_type).alias("bar_type"),
        pl.lit(source).alias("source"),
        *[pl.col(c).cast(pl.Float64) for c in ("open", "high", "low", "close", "volume")],
    )
    frame = ensure_schema(frame).filter((pl.col("ts") >= lo) & (pl.col("ts") < hi))
    good, rejected = validate_bars(frame)
    if rejected.height:
        log.warning(
            "%s: rejected %d %s bar(s): %s", source, rejected.height, bar_type,
            sorted(set(rejected[REASON].to_list())),
        )
    return good.sort("symbol", "ts"), rejected


# --------------------------------------------------------------------------- corporate actions
# Vendors give an adjusted series beside the raw one (Alpaca ``adjustment=split|all``,
# Polygon ``adjusted=true``, Yahoo's Close/Adj Close with its split events); the factors are
# their ratios to the raw close. Vendors round adjusted prices, so a ratio drifts in its last
# digits from bar to bar: split factors are snapped (a change below SPLIT_NOISE is rounding,
# not a split) so that only real splits move a position.
SPLIT_NOISE = 0.005


def snap_split_factors(factors: list[float]) -> list[float]:
    """Split factors of one symbol in time order with rounding noise removed: walking back
    from the newest bar, a factor within SPLIT_NOISE of the later one takes its value."""
    out = list(factors)
    for i in range(len(out) - 2, -1, -1):
        if abs(out[i] / out[i + 1] - 1.0) < SPLIT_NOISE:
            out[i] = out[i + 1]
    return out


def with_vendor_factors(raw: pl.DataFrame, adjusted: pl.DataFrame | None,
                        split_adjusted: pl.DataFrame | None) -> pl.DataFrame:
    """``raw`` (VENDOR_COLUMNS) with ``adj_factor`` = adjusted close / raw close and
    ``split_factor`` = split-adjusted close / raw close, joined on (symbol, ts); 1.0 where a
    series is missing (a vendor that gave no adjusted row for a bar: unadjusted)."""
    out = raw
    for name, other in (("adj_factor", adjusted), ("split_factor", split_adjusted)):
        if other is None or other.height == 0 or raw.height == 0:
            out = out.with_columns(pl.lit(1.0).alias(name))
            continue
        ref = other.select("symbol", "ts", pl.col("close").alias(f"_{name}_close")).unique(["symbol", "ts"])
        out = out.join(ref, on=["symbol", "ts"], how="left", maintain_order="left").with_columns(
            (pl.col(f"_{name}_close") / pl.col("close")).fill_null(1.0).fill_nan(1.0).alias(name)
        ).drop(f"_{name}_close")
    if out.height:
        out = out.sort("symbol", "ts")
        snapped = []
        for (_,), g in out.group_by("symbol", maintain_order=True):
            snapped.extend(snap_split_factors(g["split_factor"].to_list()))
        out = out.with_columns(pl.Series("split_factor", snapped, dtype=pl.Float64))
    return out
