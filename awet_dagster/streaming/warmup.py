"""Reading a symbol's recent history from the ``bars`` table to warm up streaming state."""
from __future__ import annotations

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
