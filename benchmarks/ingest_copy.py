"""Bulk load of bars: the COPY + upsert path (``copy_upsert_bars``) vs pandas ``to_sql``.

    python benchmarks/ingest_copy.py [--quick] [--rows N] [--to-sql-rows N] [--no-doc]

What is measured, in the same run and on the same server:
- COPY: ``awet_dagster.storage.bars.copy_upsert_bars`` of ``--rows`` synthetic minute bars
  (``awet_dagster.sources.synthetic.generate_bars``) into an EMPTY bars table, inside one
  transaction (CSV encoding + COPY into the staging table + INSERT ... ON CONFLICT upsert
  + commit). The phases are also timed separately (profile).
- to_sql: ``pandas.DataFrame.to_sql`` (SQLAlchemy engine from ``storage.db.make_engine``,
  ``method="multi"``, ``chunksize`` rows per INSERT) of the first ``--to-sql-rows`` of the
  same bars into another empty table. Plain INSERT (no upsert), i.e. the favourable case
  for to_sql. Both are reported as rows/s, so the different row counts compare.
- memory: peak RSS during each load minus RSS before it (sampled every 5 ms).
Server: ``$DATABASE_URL`` if set, else a fresh embedded PostgreSQL in a temporary AWET home
(stopped and removed after). Tables live in a private schema dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402
import psutil  # noqa: E402

from awet_dagster.sources.synthetic import generate_bars  # noqa: E402
from awet_dagster.storage import bars as bars_mod  # noqa: E402
from awet_dagster.storage.db import connect, make_engine, upgrade  # noqa: E402
from benchmarks._common import machine_info, machine_table, md_table, update_markdown_section  # noqa: E402

SECTION = "ingest_copy"
MINUTES_PER_SYMBOL = 10_000



# --------------------------------------------------------------------------- server
@contextlib.contextmanager
def database() -> Iterator[tuple[str, str]]:
    """Yield (url, kind): $DATABASE_URL, or a throwaway embedded PostgreSQL."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url, "external ($DATABASE_URL)"
        return
    from awet_dagster.infra.postgres import start_postgres, stop_postgres

    tmp = Path(tempfile.mkdtemp(prefix="awet-bench-"))
    home = tmp / "awet"
    try:
        info, _ = start_postgres(home / "pgdata", logs_dir=home / "logs", timeout_s=120)
        try:
            yield info.url, "embedded (temporary)"
        finally:
            stop_postgres(home / "pgdata", timeout_s=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def bench_schema(url: str) -> Iterator[str]:
    schema = f"bench_ingest_{os.getpid()}"
    with connect(url) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with connect(url) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def fresh_table(url: str, schema: str) -> None:
    """An empty ``schema.bars`` shaped like the real one (the migrations' ``public.bars``;
    a server without it is migrated first, so the shape is never copied by hand)."""
    with connect(url) as conn:
        migrated = conn.execute("SELECT to_regclass('public.bars')").fetchone()[0]
    if not migrated:
        upgrade(url)
    with connect(url) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {schema}.bars")
        conn.execute(f"CREATE TABLE {schema}.bars (LIKE public.bars INCLUDING ALL)")


# --------------------------------------------------------------------------- measuring
class PeakRss:
    """Peak RSS growth of this process while inside the block (sampled in a thread)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.base = self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.base = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def synthetic(rows: int) -> pl.DataFrame:
    """``rows`` synthetic minute bars: ceil(rows / 10,000) symbols x 10,000 consecutive minutes."""
    n_symbols = max(1, -(-rows // MINUTES_PER_SYMBOL))
    symbols = [f"S{i:05d}" for i in range(n_symbols)]
    return generate_bars(symbols, _minutes(min(rows, MINUTES_PER_SYMBOL)), "minute", seed=7).head(rows)


def _minutes(n: int) -> pl.Series:
    start = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    return pl.select(
        pl.datetime_range(start, pl.lit(start) + pl.duration(minutes=n - 1), "1m", time_zone="UTC").alias("ts")
    ).to_series()


def time_copy(url: str, schema: str, bars: pl.DataFrame) -> dict[str, float]:
    """COPY + upsert of ``bars`` in one transaction; total and per-phase seconds."""
    fresh_table(url, schema)
    with connect(url) as conn:
        conn.execute(f"SET search_path TO {schema}")
        with PeakRss() as mem:
            t0 = time.perf_counter()
            with conn.transaction():
                loaded = bars_mod.copy_upsert_bars(conn, bars)
            total = time.perf_counter() - t0
        assert loaded == bars.height, (loaded, bars.height)
        n = conn.execute("SELECT count(*) FROM bars").fetchone()[0]
        assert n == bars.height, n
        # Re-load of the same rows: every row exists, so the fast path's COPY hits a unique
        # violation and the staging table + INSERT ... ON CONFLICT DO UPDATE path runs.
        t0 = time.perf_counter()
        with conn.transaction():
            assert bars_mod.copy_upsert_bars(conn, bars.with_columns(pl.col("volume") + 1)) == bars.height
        reload = time.perf_counter() - t0
    # Profile of the phases (separate run, same rows, fresh table).
    t0 = time.perf_counter()
    chunks = list(bars_mod._binary_chunks(bars))
    t_encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    csv = bars_mod._csv_bytes(bars)
    t_csv = time.perf_counter() - t0
    fresh_table(url, schema)
    cols = ", ".join(bars_mod.BAR_COLUMNS)
    with connect(url) as conn:
        conn.execute(f"SET search_path TO {schema}")
        with conn.transaction(), conn.cursor() as cur:
            t0 = time.perf_counter()
            with cur.copy(f"COPY bars ({cols}) FROM STDIN WITH (FORMAT binary)") as copy:
                for chunk in chunks:
                    copy.write(chunk)
            t_copy = time.perf_counter() - t0
            t0 = time.perf_counter()
        t_commit = time.perf_counter() - t0
    return {"total": total, "mem_mib": mem.delta_mib, "reload": reload, "encode": t_encode,
            "encode_mib": sum(map(len, chunks)) / 2**20, "csv": t_csv, "csv_mib": len(csv) / 2**20,
            "copy": t_copy, "commit": t_commit}


def time_to_sql(url: str, schema: str, bars: pl.DataFrame, chunksize: int) -> dict[str, float]:
    fresh_table(url, schema)
    engine = make_engine(url)
    try:
        frame = bars.to_pandas()
        with PeakRss() as mem:
            t0 = time.perf_counter()
            frame.to_sql("bars", engine, schema=schema, if_exists="append", index=False, method="multi",
                         chunksize=chunksize)
            total = time.perf_counter() - t0
    finally:
        engine.dispose()
    with connect(url) as conn:
        assert conn.execute(f"SELECT count(*) FROM {schema}.bars").fetchone()[0] == bars.height
    return {"total": total, "mem_mib": mem.delta_mib}


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200k COPY rows, 20k to_sql rows (< 60 s)")
    ap.add_argument("--rows", type=int, default=None, help="rows for the COPY path (default 1,000,000)")
    ap.add_argument("--to-sql-rows", type=int, default=None, help="rows for to_sql (default 100,000)")
    ap.add_argument("--chunksize", type=int, default=1000, help="rows per to_sql multi-row INSERT")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args(argv)
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    sql_rows = min(args.to_sql_rows or (20_000 if args.quick else 100_000), rows)

    t0 = time.perf_counter()
    bars = synthetic(rows)
    print(f"generated {bars.height:,} synthetic minute bars in {time.perf_counter() - t0:.1f}s", flush=True)
    info = machine_info(["polars", "psycopg", "pandas", "SQLAlchemy"])
    with database() as (url, kind), bench_schema(url) as schema:
        with connect(url) as conn:
            server = conn.execute("SHOW server_version").fetchone()[0]
        copy = time_copy(url, schema, bars)
        print(f"COPY+upsert: {rows:,} rows in {copy['total']:.2f}s (binary encoding {copy['encode']:.2f}s, "
              f"server COPY {copy['copy']:.2f}s; re-load through the upsert {copy['reload']:.2f}s)", flush=True)
        sql = time_to_sql(url, schema, bars.head(sql_rows), args.chunksize)
        print(f"to_sql: {sql_rows:,} rows in {sql['total']:.2f}s", flush=True)
    copy_rate, sql_rate = rows / copy["total"], sql_rows / sql["total"]
    ratio = copy_rate / sql_rate
    info.update({"postgres": f"{server} ({kind})"})

    if not args.no_doc:
        body = (
            "## Bulk load of bars: COPY + upsert vs pandas to_sql\n\n"
            f"`python benchmarks/ingest_copy.py{' --quick' if args.quick else ''}` — synthetic minute bars, "
            "empty `bars` table (primary key + ts index), one transaction per load. to_sql: "
            f"`method=\"multi\"`, `chunksize={args.chunksize}`, plain INSERT (no upsert: the favourable "
            "case for it), on the first rows of the same data; compare rows/s.\n\n"
            + md_table(
                ["path", "rows", "seconds", "rows/s", "peak RSS growth"],
                [["COPY + upsert (`copy_upsert_bars`)", f"{rows:,}", f"{copy['total']:.2f}",
                  f"{copy_rate:,.0f}", f"{copy['mem_mib']:.0f} MiB"],
                 ["pandas `to_sql` (multi)", f"{sql_rows:,}", f"{sql['total']:.2f}", f"{sql_rate:,.0f}",
                  f"{sql['mem_mib']:.0f} MiB"]],
            )
            + f"\nCOPY is **{ratio:.1f}x** to_sql. Into an empty table `copy_upsert_bars` takes its fast path "
            "(binary COPY straight into `bars` in a savepoint). Phases, separate run, same rows: binary "
            f"encoding {copy['encode']:.2f}s ({copy['encode_mib']:.0f} MiB; the former CSV encoding: "
            f"{copy['csv']:.2f}s, {copy['csv_mib']:.0f} MiB), server-side COPY {copy['copy']:.2f}s, commit "
            f"{copy['commit']:.2f}s. Re-loading the same rows (all exist: unique violation, then staging "
            f"table + `INSERT ... ON CONFLICT DO UPDATE`): {copy['reload']:.2f}s = "
            f"{rows / copy['reload']:,.0f} rows/s.\n\n"
            + machine_table(info)
        )
        update_markdown_section(SECTION, body)
    print(f"COPY+upsert {copy_rate:,.0f} rows/s vs to_sql {sql_rate:,.0f} rows/s: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
