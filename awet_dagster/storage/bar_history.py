"""A symbol's recent bars from the ``bars`` table: what the live components warm up from.

``read_last_bars_many`` answers every new symbol of a batch with one query;
``PostgresBarHistory`` is that read as the ``last_bars_many`` method the components' storage
ports share (``awet_dagster.streaming.warmup.InMemoryBarHistory`` is its in-memory twin).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from awet_dagster.storage.bars import BAR_COLUMNS


def read_last_bars(conn: Any, symbol: str, bar_type: str, before: datetime, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` bars of (symbol, bar_type) with ts < ``before``, oldest first.

    Uses the (symbol, bar_type, ts) primary key: an index range scan backwards, cheap
    even on a large table. ``conn`` is a psycopg 3 connection.
    """
    if limit <= 0:
        return []
    cols = ", ".join(BAR_COLUMNS)
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT {cols} FROM bars WHERE symbol = %s AND bar_type = %s AND ts < %s "
            "ORDER BY ts DESC LIMIT %s",
            (symbol, bar_type, before, int(limit)),
        )
        rows = cur.fetchall()
    rows.reverse()
    return [dict(zip(BAR_COLUMNS, r, strict=True)) for r in rows]


def read_last_bars_many(conn: Any, wanted: Mapping[str, datetime], bar_type: str, limit: int) -> dict[str, list[dict[str, Any]]]:
    """``read_last_bars`` for many symbols in ONE query: {symbol: the last ``limit`` bars
    with ts < wanted[symbol], oldest first} (a symbol without history maps to []).

    Live services warm up every new symbol of a bus batch at once: one round trip instead
    of one per symbol (500 new symbols cost ~0.5 s of sequential queries otherwise). Each
    symbol is still a backwards range scan of the primary key (LATERAL ... LIMIT).
    """
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in wanted}
    if limit <= 0 or not wanted:
        return out
    cols = ", ".join(f"b.{c}" for c in BAR_COLUMNS)
    symbols, befores = list(wanted), [wanted[s] for s in wanted]
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT {cols} FROM unnest(%s::text[], %s::timestamptz[]) AS w(symbol, before) "
            "CROSS JOIN LATERAL (SELECT * FROM bars WHERE bars.symbol = w.symbol AND bars.bar_type = %s "
            "AND bars.ts < w.before ORDER BY bars.ts DESC LIMIT %s) AS b",
            (symbols, befores, bar_type, int(limit)),
        )
        rows = cur.fetchall()
    for r in rows:
        out[r[0]].append(dict(zip(BAR_COLUMNS, r, strict=True)))
    for bars in out.values():
        bars.sort(key=lambda b: b["ts"])
    return out


class PostgresBarHistory:
    """``last_bars_many`` and ``closes_between`` over the ``bars`` table: the reads the live
    components' stores share. ``connect``: returns the psycopg connection to use (reopened after an outage)."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect

    def last_bars_many(self, wanted: Mapping[str, datetime], bar_type: str,
                       limit: int) -> dict[str, list[dict[str, Any]]]:
        return read_last_bars_many(self._connect(), wanted, bar_type, limit)

    def closes_between(self, symbol: str, bar_type: str, since: datetime, before: datetime) -> list[float]:
        """Closes of the symbol's bars with ``since <= ts < before``, in time order (the exits'
        restore of a position held across a restart)."""
        rows = self._connect().execute(
            "SELECT close FROM bars WHERE symbol = %s AND bar_type = %s AND ts >= %s AND ts < %s ORDER BY ts",
            (symbol, bar_type, since, before)).fetchall()
        return [float(c) for (c,) in rows]
