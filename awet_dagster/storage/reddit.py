"""Reddit mention counts and sentiment in `reddit_mentions`, and their point-in-time join.

Rows are keyed by (symbol, bucket, ts): daily buckets (the Dagster asset, and what the
features join) and hourly ones (a streamed ingest may use either) live side by side.

A bucket's counts are only known once the bucket has closed, so a bar at `ts` sees the
latest bucket that ended at or before `ts` (never the bucket it falls in).
"""
from __future__ import annotations

from datetime import datetime

import polars as pl

from awet_dagster.streaming.sentiment import BUCKET


def upsert_mentions(conn, frame: pl.DataFrame, source: str = "reddit", bucket: str = "1d") -> int:
    """Store a mentions frame (symbol, ts, mentions, sentiment) of ``bucket``-long buckets: a
    bucket read again (a later fetch saw more of it) replaces its row."""
    if bucket not in BUCKET:
        raise ValueError(f"bucket must be one of {sorted(BUCKET)}, got {bucket!r}")
    if frame.height == 0:
        return 0
    rows = [(r["symbol"], bucket, r["ts"], int(r["mentions"]), r["sentiment"], source)
            for r in frame.iter_rows(named=True)]
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO reddit_mentions (symbol, bucket, ts, mentions, sentiment, source) "
            "VALUES (%s,%s,%s,%s,%s,%s) ON CONFLICT (symbol, bucket, ts) "
            "DO UPDATE SET mentions = EXCLUDED.mentions, sentiment = EXCLUDED.sentiment, source = EXCLUDED.source",
            rows,
        )
    return len(rows)


def read_mentions(conn, symbols, start: datetime, end: datetime, bucket: str = "1d") -> pl.DataFrame:
    rows = conn.execute(
        "SELECT symbol, ts, mentions, sentiment FROM reddit_mentions WHERE symbol = ANY(%s) AND bucket = %s "
        "AND ts >= %s AND ts < %s ORDER BY symbol, ts", (list(symbols), bucket, start, end),
    ).fetchall()
    return pl.DataFrame(rows, schema={"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "mentions": pl.Float64,
                                      "sentiment": pl.Float64}, orient="row")


def join_mentions(bars: pl.DataFrame, mentions: pl.DataFrame, bucket: str = "1d") -> pl.DataFrame:
    """Bars plus `reddit_mentions` / `reddit_sentiment` from the last CLOSED bucket before each bar."""
    if mentions.height == 0:
        return bars
    known = mentions.with_columns((pl.col("ts") + BUCKET[bucket]).alias("available_at")).select(
        "symbol", "available_at", pl.col("mentions").alias("reddit_mentions"),
        pl.col("sentiment").alias("reddit_sentiment"),
    ).sort("symbol", "available_at")
    return (
        bars.sort("symbol", "ts")
        # Tolerance: a count from long ago is not today's sentiment; missing stays missing.
        .join_asof(known, left_on="ts", right_on="available_at", by="symbol", strategy="backward",
                   tolerance=BUCKET[bucket])
        .drop("available_at")
    )
