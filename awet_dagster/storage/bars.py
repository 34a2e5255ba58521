"""Bulk load of bars: COPY into a staging table, then one upsert on (symbol, bar_type, ts).

A partition load first deletes exactly the rows of its (symbols, bar_type, [start, end))
window, so re-materializing a partition replaces it and nothing else.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime

import polars as pl

BAR_COLUMNS = ("symbol", "bar_type", "ts", "open", "high", "low", "close", "volume", "bid", "ask", "source")


@dataclass(frozen=True)
class PartitionWindow:
    symbols: tuple[str, ...]
    bar_type: str
    start: datetime  # inclusive, UTC
    end: datetime  # exclusive, UTC


@dataclass(frozen=True)
class LoadResult:
    loaded: int
    rejected: int
    deleted: int


def _csv_bytes(df: pl.DataFrame) -> bytes:
    # Polars writes CSV in native code; COPY parses it server-side. ISO-8601 with offset keeps UTC.
    out = df.select(BAR_COLUMNS).with_columns(
        pl.col("ts").dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00")
    )
    buf = io.BytesIO()
    out.write_csv(buf, include_header=False, null_value="")
    return buf.getvalue()


def copy_upsert_bars(conn, bars: pl.DataFrame) -> int:
    """COPY `bars` into a temporary staging table and upsert them into `bars`.

    `conn` is a psycopg 3 connection; the caller owns the transaction.
    """
    if bars.height == 0:
        return 0
    cols = ", ".join(BAR_COLUMNS)
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS stage_bars "
            "(LIKE bars INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        cur.execute("TRUNCATE stage_bars")
        with cur.copy(f"COPY stage_bars ({cols}) FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(_csv_bytes(bars))
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in BAR_COLUMNS[3:])
        cur.execute(
            f"INSERT INTO bars ({cols}) SELECT {cols} FROM stage_bars "
            f"ON CONFLICT (symbol, bar_type, ts) DO UPDATE SET {updates}, ingested_at = now()"
        )
        return cur.rowcount


def insert_rejected(conn, rejected: pl.DataFrame, source: str) -> int:
    """Keep every rejected row with its reason (never dropped silently)."""
    if rejected.height == 0:
        return 0
    rows = []
    for rec in rejected.iter_rows(named=True):
        reason = rec.pop("reason")
        raw = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in rec.items()}
        rows.append((rec.get("symbol"), rec.get("bar_type"), rec.get("ts"), json.dumps(raw, default=str),
                     reason, rec.get("source") or source))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO rejected_bars (symbol, bar_type, ts, raw, reason, source) "
            "VALUES (%s, %s, %s, %s::jsonb, %s, %s)",
            rows,
        )
    return len(rows)


def replace_partition(conn, window: PartitionWindow, good: pl.DataFrame, rejected: pl.DataFrame,
                      source: str) -> LoadResult:
    """Atomically replace one partition's bars and its rejected rows."""
    with conn.transaction():
        with conn.cursor() as cur:
            params = (list(window.symbols), window.bar_type, window.start, window.end)
            where = "symbol = ANY(%s) AND bar_type = %s AND ts >= %s AND ts < %s"
            cur.execute(f"DELETE FROM bars WHERE {where}", params)
            deleted = cur.rowcount
            cur.execute(f"DELETE FROM rejected_bars WHERE {where}", params)
        loaded = copy_upsert_bars(conn, good)
        n_rejected = insert_rejected(conn, rejected, source)
    return LoadResult(loaded=loaded, rejected=n_rejected, deleted=deleted)


def read_bars(conn, symbols: list[str] | tuple[str, ...], bar_type: str,
              start: datetime | None = None, end: datetime | None = None) -> pl.DataFrame:
    """Read bars back in (symbol, ts) order with the canonical schema."""
    clauses = ["symbol = ANY(%s)", "bar_type = %s"]
    params: list = [list(symbols), bar_type]
    if start is not None:
        clauses.append("ts >= %s")
        params.append(start)
    if end is not None:
        clauses.append("ts < %s")
        params.append(end)
    sql = f"SELECT {', '.join(BAR_COLUMNS)} FROM bars WHERE {' AND '.join(clauses)} ORDER BY symbol, ts"
    with conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    schema = {
        "symbol": pl.Utf8, "bar_type": pl.Utf8, "ts": pl.Datetime("us", "UTC"),
        "open": pl.Float64, "high": pl.Float64, "low": pl.Float64, "close": pl.Float64,
        "volume": pl.Float64, "bid": pl.Float64, "ask": pl.Float64, "source": pl.Utf8,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")
