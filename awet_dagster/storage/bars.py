"""Bulk load of bars: an upsert on (symbol, bar_type, ts) through PostgreSQL COPY.

`copy_upsert_bars` COPYs (binary format) straight into `bars` when none of the rows exists
yet, else into a staging table followed by one INSERT ... ON CONFLICT (see its docstring;
numbers in docs/benchmarks.md, section ingest_copy).

A partition load first deletes exactly the rows of its (symbols, bar_type, [start, end))
window, so re-materializing a partition replaces it and nothing else.
"""
from __future__ import annotations

import io
import json
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from awet_dagster.contracts.events import VENDOR_FEEDS

BAR_COLUMNS = ("symbol", "bar_type", "ts", "open", "high", "low", "close", "volume", "bid", "ask", "source",
               "adj_factor", "split_factor")
FACTOR_DEFAULTS = {"adj_factor": 1.0, "split_factor": 1.0}  # a frame without factors: unadjusted


def _with_factors(df: pl.DataFrame) -> pl.DataFrame:
    missing = [pl.lit(v, dtype=pl.Float64).alias(c) for c, v in FACTOR_DEFAULTS.items() if c not in df.columns]
    out = df.with_columns(missing) if missing else df
    return out.with_columns(pl.col(c).cast(pl.Float64).fill_null(v) for c, v in FACTOR_DEFAULTS.items())


def as_feeds(df: pl.DataFrame) -> pl.DataFrame:
    """``source`` named as the design's feed (``contracts.bar_source``): the table keeps the
    four values MarketRawEvent carries (ck_bars_source), whichever path wrote the row."""
    return df.with_columns(
        pl.when(pl.col("source").is_in(list(VENDOR_FEEDS))).then(pl.col("source")).otherwise(pl.lit("stub"))
        .alias("source"))


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
    out = _with_factors(df).select(BAR_COLUMNS).with_columns(
        pl.col("ts").dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00")
    )
    buf = io.BytesIO()
    out.write_csv(buf, include_header=False, null_value="")
    return buf.getvalue()


# --------------------------------------------------------------------------- binary COPY
# Why binary: parsing text timestamps and floats was most of the server's COPY time
# (benchmarks/ingest_copy.py). PostgreSQL's binary COPY format is simple: a header, then
# per row an int16 field count and per field an int32 length (-1 = NULL) + big-endian
# value; timestamptz = int64 microseconds since 2000-01-01 UTC. Rows are encoded with
# numpy structured arrays, one per "shape" of row (byte lengths of the text fields and
# which quotes are null), so every field is a vectorised column copy, not a Python loop.
_PG_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_PG_TRAILER = b"\xff\xff"
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in Unix microseconds
_FLOATS = ("open", "high", "low", "close", "volume")
_TEXTS = ("symbol", "bar_type", "source")
_CHUNK_ROWS = 50_000


def _fixed_bytes(series: pl.Series, width: int):
    """(n, width) uint8 view of a Utf8 column whose values are all ``width`` bytes long."""
    import numpy as np
    import pyarrow as pa

    arr = series.to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not arr.type.equals(pa.large_string()):
        arr = arr.cast(pa.large_string())  # e.g. string_view: get one offsets + data buffer
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=len(arr) + 1, offset=arr.offset * 8)
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
    return data[offsets[0]:offsets[0] + len(arr) * width].reshape(len(arr), width)


def _binary_chunks(df: pl.DataFrame) -> Iterator[bytes] | None:
    """PostgreSQL binary COPY data for ``df`` (BAR_COLUMNS order) as chunks; None if unsupported.

    Unsupported (the caller falls back to CSV, which yields the server's own error): a
    null in a NOT NULL column or an empty text value. Work and memory are per chunk of
    ``_CHUNK_ROWS`` rows (zero-copy slices of ``df``), whatever the frame size.
    """
    frame = _with_factors(df).select(BAR_COLUMNS)
    required = (*_TEXTS, "ts", *_FLOATS)
    if frame.select(pl.any_horizontal(pl.col(*required).is_null().any())).item():
        return None
    if frame.select(pl.min_horizontal(pl.col(*_TEXTS).str.len_bytes().min())).item() == 0:
        return None
    keys = ["_symbol_len", "_bar_type_len", "_source_len", "_bid_null", "_ask_null"]

    def chunks() -> Iterator[bytes]:
        yield _PG_HEADER
        for part in frame.iter_slices(_CHUNK_ROWS):
            part = part.with_columns(
                (pl.col("ts").dt.convert_time_zone("UTC").dt.epoch("us") - _PG_EPOCH_US).alias("ts"),
                *(pl.col(c).cast(pl.Float64) for c in (*_FLOATS, "bid", "ask", *FACTOR_DEFAULTS)),
                *(pl.col(c).str.len_bytes().alias(f"_{c}_len") for c in _TEXTS),
                pl.col("bid").is_null().alias("_bid_null"),
                pl.col("ask").is_null().alias("_ask_null"),
            )
            bounds = part.select(*(pl.col(k).min().alias(f"lo{k}") for k in keys),
                                 *(pl.col(k).max().alias(f"hi{k}") for k in keys)).row(0)
            if bounds[:len(keys)] == bounds[len(keys):]:  # one shape (the usual case): no group_by
                yield _encode_rows(part, *bounds[:len(keys)])
            else:
                for shape, group in part.group_by(keys, maintain_order=True):
                    yield _encode_rows(group, *shape)
        yield _PG_TRAILER

    return chunks()


def _prefetch(chunks: Iterator[bytes], depth: int = 2) -> Iterator[bytes]:
    """Iterate ``chunks`` computed ``depth`` ahead in a thread: encoding (numpy/polars, GIL
    released) overlaps the server's COPY work, with at most ``depth`` chunks in memory."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    cancelled = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not cancelled.is_set():
                    try:
                        q.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if cancelled.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            q.put(exc)

    worker = threading.Thread(target=produce, name="bars-copy-encoder", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancelled.set()  # the consumer failed or stopped early: let the producer exit
        worker.join(5)


def _encode_rows(g: pl.DataFrame, sym_len: int, bt_len: int, src_len: int, bid_null: bool,
                 ask_null: bool) -> bytes:
    """Binary COPY rows of ``g``, all of one shape (text byte lengths, null quotes)."""
    import numpy as np

    fields = [("n", ">i2"), ("l_symbol", ">i4"), ("symbol", f"V{sym_len}"),
              ("l_bar_type", ">i4"), ("bar_type", f"V{bt_len}"), ("l_ts", ">i4"), ("ts", ">i8")]
    for c in _FLOATS:
        fields += [(f"l_{c}", ">i4"), (c, ">f8")]
    for c, null in (("bid", bid_null), ("ask", ask_null)):
        fields.append((f"l_{c}", ">i4"))
        if not null:
            fields.append((c, ">f8"))
    fields += [("l_source", ">i4"), ("source", f"V{src_len}")]
    for c in FACTOR_DEFAULTS:
        fields += [(f"l_{c}", ">i4"), (c, ">f8")]
    rows = np.empty(g.height, dtype=np.dtype(fields))
    rows["n"] = len(BAR_COLUMNS)
    for name, width in (("symbol", sym_len), ("bar_type", bt_len), ("source", src_len)):
        rows[f"l_{name}"] = width
        rows[name] = _fixed_bytes(g[name], width).view(f"V{width}").reshape(-1)
    rows["l_ts"] = 8
    rows["ts"] = g["ts"].to_numpy()
    for c in _FLOATS:
        rows[f"l_{c}"] = 8
        rows[c] = g[c].to_numpy()
    for c, null in (("bid", bid_null), ("ask", ask_null)):
        rows[f"l_{c}"] = -1 if null else 8
        if not null:
            rows[c] = g[c].to_numpy()
    for c in FACTOR_DEFAULTS:
        rows[f"l_{c}"] = 8
        rows[c] = g[c].to_numpy()
    return rows.tobytes()


def _copy_rows(cur, table: str, bars: pl.DataFrame) -> None:
    """COPY ``bars`` into ``table`` (binary when possible, else CSV)."""
    cols = ", ".join(BAR_COLUMNS)
    chunks = _binary_chunks(bars)
    if chunks is None:
        with cur.copy(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(_csv_bytes(bars))
        return
    with cur.copy(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT binary)") as copy:
        for chunk in _prefetch(chunks):
            copy.write(chunk)


def copy_upsert_bars(conn, bars: pl.DataFrame) -> int:
    """Insert or update `bars` in `bars` on (symbol, bar_type, ts); returns rows written.

    Fast path: COPY straight into `bars` inside a savepoint: when none of the rows exists
    yet (a first load, a replaced partition, new live bars) that is all there is to do.
    If a row already exists (unique violation), the savepoint is rolled back and the rows
    go through a temporary staging table and one INSERT ... ON CONFLICT DO UPDATE.
    Either way the result is the same upsert. Measured in benchmarks/ingest_copy.py.

    `conn` is a psycopg 3 connection; the caller owns the transaction.
    """
    import psycopg

    if bars.height == 0:
        return 0
    bars = as_feeds(bars)
    cols = ", ".join(BAR_COLUMNS)
    with conn.cursor() as cur:
        try:
            with conn.transaction():  # a savepoint inside the caller's transaction
                _copy_rows(cur, "bars", bars)
            return bars.height
        except psycopg.errors.UniqueViolation:
            pass  # some rows exist: upsert through the staging table below
        cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS stage_bars "
            "(LIKE bars INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        cur.execute("TRUNCATE stage_bars")
        _copy_rows(cur, "stage_bars", bars)
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
        "adj_factor": pl.Float64, "split_factor": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema, orient="row")


def record_gaps(conn, windows: Sequence[Any], gaps: Sequence[Any]) -> int:
    """Replace the recorded calendar gaps (``bar_gaps``) of the loaded partitions with ``gaps``
    (``awet_dagster.quality.Gap``): a reload that filled a gap removes its row."""
    from zoneinfo import ZoneInfo

    ny = ZoneInfo("America/New_York")  # sessions are exchange dates; windows are [start, end) in UTC
    with conn.transaction(), conn.cursor() as cur:
        for w in windows:
            cur.execute("DELETE FROM bar_gaps WHERE symbol = ANY(%s) AND bar_type = %s AND session >= %s "
                        "AND session < %s", (list(w.symbols), w.bar_type, w.start.astimezone(ny).date(),
                                             (w.end - timedelta(microseconds=1)).astimezone(ny).date()
                                             + timedelta(days=1)))
        cur.executemany(
            "INSERT INTO bar_gaps (symbol, bar_type, session, missing, expected, first_missing, tolerated) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (symbol, bar_type, session) DO UPDATE SET "
            "missing = EXCLUDED.missing, expected = EXCLUDED.expected, first_missing = EXCLUDED.first_missing, "
            "tolerated = EXCLUDED.tolerated, recorded_at = now()",
            [(g.symbol, g.bar_type, g.session, g.missing, g.expected, g.first_missing, g.tolerated) for g in gaps])
    return len(gaps)


def last_bar_ts(conn, symbol: str) -> datetime | None:
    """Start of the newest stored bar of ``symbol`` (any bar type), or None."""
    row = conn.execute("SELECT max(ts) FROM bars WHERE symbol = %s", (symbol,)).fetchone()
    return row[0] if row else None


def bars_between(conn, symbol: str, bar_type: str, after: datetime, before: datetime, limit: int) -> list[dict]:
    """Up to ``limit`` stored bars of ``symbol`` with ``after < ts < before``, oldest first, as
    mappings of ``BAR_COLUMNS``."""
    rows = conn.execute(
        f"SELECT {', '.join(BAR_COLUMNS)} FROM bars WHERE symbol = %s AND bar_type = %s AND ts > %s AND ts < %s "
        "ORDER BY ts LIMIT %s", (symbol, bar_type, after, before, limit)).fetchall()
    return [dict(zip(BAR_COLUMNS, r, strict=True)) for r in rows]
