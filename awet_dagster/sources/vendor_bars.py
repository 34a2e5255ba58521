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
    frame = raw.with_columns(
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
