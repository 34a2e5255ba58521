"""Feature rows in PostgreSQL: one JSONB document per (symbol, bar_type, ts, feature set).

JSONB keeps the table stable while the feature set evolves; `feature_set_version` says which
definition produced a row, so two versions can live side by side.
"""
from __future__ import annotations

import io

import polars as pl

from awet_dagster.storage.bars import PartitionWindow

KEY = ("symbol", "bar_type", "ts")


def _copy_rows(features: pl.DataFrame, columns: list[str], version: str) -> bytes:
    # NaN is not JSON: missing values (warm-up, no quotes) are stored as null.
    doc = pl.struct([pl.col(c).fill_nan(None) for c in columns]).struct.json_encode()
    out = features.select(
        "symbol", "bar_type",
        pl.col("ts").dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00"),
        pl.lit(version).alias("feature_set_version"),
        doc.alias("values"),
    )
    buf = io.BytesIO()
    out.write_csv(buf, include_header=False)
    return buf.getvalue()


def replace_features(conn, window: PartitionWindow, features: pl.DataFrame, columns: list[str],
                     version: str) -> int:
    """Atomically replace the feature rows of one partition window for `version`."""
    with conn.transaction():
        with conn.cursor() as cur:
            cur.execute(
                "DELETE FROM features WHERE symbol = ANY(%s) AND bar_type = %s AND ts >= %s AND ts < %s "
                "AND feature_set_version = %s",
                (list(window.symbols), window.bar_type, window.start, window.end, version),
            )
            if features.height == 0:
                return 0
            with cur.copy(
                "COPY features (symbol, bar_type, ts, feature_set_version, values) FROM STDIN WITH (FORMAT csv)"
            ) as copy:
                copy.write(_copy_rows(features, columns, version))
    return features.height


def read_features(conn, symbols, bar_type: str, columns: list[str], version: str,
                  start=None, end=None) -> pl.DataFrame:
    clauses = ["symbol = ANY(%s)", "bar_type = %s", "feature_set_version = %s"]
    params: list = [list(symbols), bar_type, version]
    if start is not None:
        clauses.append("ts >= %s")
        params.append(start)
    if end is not None:
        clauses.append("ts < %s")
        params.append(end)
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT symbol, bar_type, ts, values::text FROM features WHERE {' AND '.join(clauses)} "
            "ORDER BY symbol, ts",
            params,
        )
        rows = cur.fetchall()
    base = pl.DataFrame(
        rows, schema={"symbol": pl.Utf8, "bar_type": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "values": pl.Utf8},
        orient="row",
    )
    dtype = pl.Struct({c: pl.Float64 for c in columns})
    return base.with_columns(pl.col("values").str.json_decode(dtype)).unnest("values")
