"""Parsers for QuantConnect Lean equity CSVs (text in, bar frames out; no file I/O).

Lean stores prices as integers x10000 ("deci-cents") and intraday times as
milliseconds since midnight in exchange time (America/New_York). Daily rows carry
`yyyyMMdd 00:00`; the bar contract wants the session's 09:30 open in UTC instead.
"""
from __future__ import annotations

import io
from datetime import date

import polars as pl

from awet_dagster.sources.exchange_time import exchange_ms_to_utc, session_open_utc
from awet_dagster.sources.schema import BAR_COLUMNS, ensure_schema

PRICE_SCALE = 10_000.0
SOURCE_NAME = "sample"

_DAILY_COLUMNS = {
    "day": pl.Utf8,
    "open": pl.Int64,
    "high": pl.Int64,
    "low": pl.Int64,
    "close": pl.Int64,
    "volume": pl.Int64,
}
_TRADE_COLUMNS = {
    "ms": pl.Int64,
    "open": pl.Int64,
    "high": pl.Int64,
    "low": pl.Int64,
    "close": pl.Int64,
    "volume": pl.Int64,
}
_QUOTE_COLUMNS = {
    "ms": pl.Int64,
    "bid_open": pl.Int64,
    "bid_high": pl.Int64,
    "bid_low": pl.Int64,
    "bid_close": pl.Int64,
    "bid_size": pl.Int64,
    "ask_open": pl.Int64,
    "ask_high": pl.Int64,
    "ask_low": pl.Int64,
    "ask_close": pl.Int64,
    "ask_size": pl.Int64,
}


def _read(data: bytes | str, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    raw = data.encode() if isinstance(data, str) else data
    # Parse with the exact schema: a malformed row raises instead of becoming a null.
    return pl.read_csv(io.BytesIO(raw), has_header=False, schema=schema)


def _dollars(name: str) -> pl.Expr:
    # polars may divide via the reciprocal (0.99 -> 0.9900000000000001); rounding to the
    # 4 decimals Lean stores gives the double nearest the decimal price, like Python's /.
    return (pl.col(name).cast(pl.Float64) / PRICE_SCALE).round(4)


def _scaled(*names: str) -> list[pl.Expr]:
    return [_dollars(n).alias(n) for n in names]


def parse_daily(data: bytes | str, symbol: str, source: str = SOURCE_NAME) -> pl.DataFrame:
    """Lean daily CSV -> daily bars (ts = 09:30 New York open of the session, in UTC).

    `source` is the value of the `source` column (the sample builder and the `lean` source
    read the same files under different names).
    """
    raw = _read(data, _DAILY_COLUMNS)
    frame = raw.with_columns(
        pl.col("day").str.slice(0, 8).str.strptime(pl.Date, "%Y%m%d", strict=True).alias("day")
    ).select(
        pl.lit(symbol.upper()).alias("symbol"),
        pl.lit("daily").alias("bar_type"),
        session_open_utc(pl.col("day")).alias("ts"),
        *_scaled("open", "high", "low", "close"),
        pl.col("volume").cast(pl.Float64),
        pl.lit(source).alias("source"),
    )
    return ensure_schema(frame)


def parse_minute_trades(
    data: bytes | str, symbol: str, day: date, source: str = SOURCE_NAME
) -> pl.DataFrame:
    """Lean minute trade CSV for one exchange date -> minute bars without quotes."""
    raw = _read(data, _TRADE_COLUMNS)
    frame = raw.select(
        pl.lit(symbol.upper()).alias("symbol"),
        pl.lit("minute").alias("bar_type"),
        exchange_ms_to_utc(pl.lit(day, dtype=pl.Date), pl.col("ms")).alias("ts"),
        *_scaled("open", "high", "low", "close"),
        pl.col("volume").cast(pl.Float64),
        pl.lit(source).alias("source"),
    )
    return ensure_schema(frame)


def parse_minute_quotes(data: bytes | str, day: date) -> pl.DataFrame:
    """Lean minute quote CSV for one exchange date -> (ts, bid, ask) using the closes."""
    raw = _read(data, _QUOTE_COLUMNS)
    return raw.select(
        exchange_ms_to_utc(pl.lit(day, dtype=pl.Date), pl.col("ms")).alias("ts"),
        _dollars("bid_close").alias("bid"),
        _dollars("ask_close").alias("ask"),
    )


def attach_quotes(trades: pl.DataFrame, quotes: pl.DataFrame) -> pl.DataFrame:
    """Left-join quote closes onto trade minutes by bar start.

    Trades drive the rows: a minute with quotes but no trade has no OHLC, so it is not
    invented; a trade minute without a quote keeps null bid/ask.
    """
    joined = trades.drop("bid", "ask").join(quotes, on="ts", how="left", validate="m:1")
    return joined.select(BAR_COLUMNS)
