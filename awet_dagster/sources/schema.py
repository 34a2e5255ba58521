"""The bar contract: one polars schema for every source, plus the checks that guard it.

`ensure_schema` fixes *shape* (column set, order, dtypes) and fails loudly on a missing
or uncastable column. `validate_bars` judges *rows* and splits a frame into good rows and
rejected rows with a `reason`, so bad vendor data is never dropped silently.
"""
from __future__ import annotations

from typing import Literal

import polars as pl

from awet_dagster.sources.errors import SchemaError

BarType = Literal["minute", "daily"]
BAR_TYPES: tuple[str, ...] = ("minute", "daily")
TS_DTYPE = pl.Datetime("us", "UTC")
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")

BAR_SCHEMA: pl.Schema = pl.Schema(
    {
        "symbol": pl.Utf8,
        "bar_type": pl.Utf8,
        "ts": TS_DTYPE,  # bar START instant
        "open": pl.Float64,
        "high": pl.Float64,
        "low": pl.Float64,
        "close": pl.Float64,
        "volume": pl.Float64,
        "bid": pl.Float64,  # quote close bid, null when the source has no quotes
        "ask": pl.Float64,  # quote close ask, null when the source has no quotes
        "source": pl.Utf8,
        # Corporate actions (awet_dagster/sources/corporate_actions.py): prices above are RAW
        # (what a broker trades at); raw x adj_factor = split/dividend-adjusted, volume /
        # split_factor = split-adjusted. 1.0 when the source has no factors.
        "adj_factor": pl.Float64,
        "split_factor": pl.Float64,
    }
)
BAR_COLUMNS: tuple[str, ...] = tuple(BAR_SCHEMA.names())
# bid/ask are nullable by contract and most bar vendors have none, so they may be absent.
OPTIONAL_COLUMNS: frozenset[str] = frozenset({"bid", "ask", "adj_factor", "split_factor"})
# Optional columns filled with a value (not null) when a source has none.
DEFAULTS: dict[str, float] = {"adj_factor": 1.0, "split_factor": 1.0}
FACTOR_COLUMNS: tuple[str, ...] = ("adj_factor", "split_factor")
KEY_COLUMNS: tuple[str, ...] = ("symbol", "bar_type", "ts")
REASON = "reason"


def empty_bars() -> pl.DataFrame:
    return pl.DataFrame(schema=BAR_SCHEMA)


def ensure_schema(df: pl.DataFrame) -> pl.DataFrame:
    """Return `df` with exactly the bar columns, in contract order and dtypes.

    Numeric columns are cast to Float64 (strict: an uncastable value raises), `ts` must
    already be a UTC datetime (any time unit; converting from another zone is a source's
    job, done where the zone is known). Extra columns are dropped.
    """
    _check_ts_dtype(df, require_utc=True)
    return _cast(df)


def validate_bars(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split `df` into (good, rejected); rejected keeps the bar columns plus `reason`.

    A row is rejected for: null symbol/ts, unknown bar_type, null/NaN price, price <= 0,
    low <= open,close <= high violated, null/NaN or negative volume, bid/ask <= 0, or
    being a later copy of an earlier (symbol, bar_type, ts) key (the first copy is kept,
    so a re-delivered bar never doubles). A frame whose `ts` is not UTC is rejected whole.
    Several reasons are joined with "; ".
    """
    _check_ts_dtype(df, require_utc=False)
    ts_dtype = df.schema["ts"]
    if ts_dtype != TS_DTYPE and getattr(ts_dtype, "time_zone", None) != "UTC":
        # The offset of a naive/foreign-zone ts is unknowable here: reject every row.
        rejected = _cast(df, ts_any=True).with_columns(
            pl.lit(f"ts not UTC (dtype {ts_dtype})").alias(REASON)
        )
        return empty_bars(), rejected

    frame = _cast(df)
    # Row order decides which duplicate survives, so remember it explicitly.
    frame = frame.with_row_index("_row")
    prices_null = pl.any_horizontal(
        [pl.col(c).is_null() | pl.col(c).is_nan() for c in PRICE_COLUMNS]
    )
    prices_nonpos = pl.any_horizontal([pl.col(c) <= 0 for c in PRICE_COLUMNS])
    ohlc_bad = (
        (pl.col("low") > pl.min_horizontal("open", "close"))
        | (pl.col("high") < pl.max_horizontal("open", "close"))
        | (pl.col("low") > pl.col("high"))
    )
    quote_bad = (pl.col("bid") <= 0) | (pl.col("ask") <= 0) | pl.col("bid").is_nan() | pl.col(
        "ask"
    ).is_nan()
    checks: list[tuple[pl.Expr, str]] = [
        (pl.col("symbol").is_null() | (pl.col("symbol") == ""), "null symbol"),
        (~pl.col("bar_type").is_in(list(BAR_TYPES)) | pl.col("bar_type").is_null(), "unknown bar_type"),
        (pl.col("ts").is_null(), "null ts"),
        (prices_null, "null/NaN price"),
        (prices_nonpos, "price <= 0"),
        (ohlc_bad, "OHLC inconsistent (low <= open,close <= high violated)"),
        (pl.col("volume").is_null() | pl.col("volume").is_nan(), "null/NaN volume"),
        (pl.col("volume") < 0, "volume < 0"),
        (quote_bad, "bid/ask <= 0 or NaN"),
        (pl.any_horizontal([(pl.col(c) <= 0) | pl.col(c).is_nan() for c in FACTOR_COLUMNS]),
         "adj_factor/split_factor <= 0 or NaN"),
    ]
    reason = pl.concat_str(
        [pl.when(cond.fill_null(False)).then(pl.lit(text)) for cond, text in checks],
        separator="; ",
        ignore_nulls=True,
    )
    # concat_str of all-null parts gives "" with ignore_nulls: normalise to null = good.
    frame = frame.with_columns(pl.when(reason == "").then(None).otherwise(reason).alias(REASON))
    # Duplicates are judged among rows that pass every other check, so a broken first
    # copy does not shadow a sound later one.
    ok = pl.col(REASON).is_null()
    later_copy = ok & (pl.col("_row").rank("ordinal").over([*KEY_COLUMNS, ok]) > 1)
    frame = frame.with_columns(
        pl.when(later_copy).then(pl.lit("duplicate (symbol, bar_type, ts)")).otherwise(pl.col(REASON)).alias(REASON)
    ).sort("_row")
    good = frame.filter(pl.col(REASON).is_null()).select(BAR_COLUMNS)
    rejected = frame.filter(pl.col(REASON).is_not_null()).select(*BAR_COLUMNS, REASON)
    return good, rejected


def _check_ts_dtype(df: pl.DataFrame, *, require_utc: bool) -> None:
    missing = [c for c in BAR_COLUMNS if c not in df.columns and c not in OPTIONAL_COLUMNS]
    if missing:
        raise SchemaError(
            f"bar frame is missing column(s) {missing}; expected {list(BAR_COLUMNS)}"
        )
    dtype = df.schema["ts"]
    if not isinstance(dtype, pl.Datetime):
        raise SchemaError(f"column 'ts' must be Datetime('us', 'UTC'), got {dtype}")
    if require_utc and dtype.time_zone != "UTC":
        raise SchemaError(
            f"column 'ts' must be UTC, got time zone {dtype.time_zone!r}; "
            "convert at the source where the exchange zone is known"
        )


def _cast(df: pl.DataFrame, *, ts_any: bool = False) -> pl.DataFrame:
    exprs: list[pl.Expr] = []
    for name, dtype in BAR_SCHEMA.items():
        if name not in df.columns:  # only optional columns reach here
            exprs.append(pl.lit(DEFAULTS.get(name), dtype=dtype).alias(name))
            continue
        if name == "ts":
            src = df.schema["ts"]
            target = pl.Datetime("us", src.time_zone) if ts_any else TS_DTYPE
            exprs.append(pl.col("ts").cast(target).alias("ts"))
            continue
        src = df.schema[name]
        if dtype == pl.Float64 and not (src.is_numeric() or src == pl.Null):
            raise SchemaError(f"column {name!r} must be numeric (Float64), got {src}")
        if dtype == pl.Utf8 and src not in (pl.Utf8, pl.Categorical, pl.Null) and not isinstance(
            src, pl.Enum
        ):
            raise SchemaError(f"column {name!r} must be a string (Utf8), got {src}")
        col = pl.col(name).cast(dtype, strict=True)
        if name in DEFAULTS:
            col = col.fill_null(DEFAULTS[name])
        exprs.append(col.alias(name))
    return df.select(exprs)
