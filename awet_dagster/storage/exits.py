"""``PostgresExitStore``: the exit watch's storage port (``awet_dagster.exits.watch.ExitStore``)
over ``orders``/``fills`` and ``bars``. ``connect``: returns the psycopg connection to use."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from awet_dagster.execution.ledger import StoredFill, StoredOrder
from awet_dagster.storage.trading import ledger_rows


class PostgresExitStore:
    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect

    def ledger_rows(self, namespace: str) -> tuple[list[StoredFill], list[StoredOrder]]:
        return ledger_rows(self._connect(), namespace)

    def closes_between(self, symbol: str, bar_type: str, since: datetime, before: datetime) -> list[float]:
        rows = self._connect().execute(
            "SELECT close FROM bars WHERE symbol = %s AND bar_type = %s AND ts >= %s AND ts < %s ORDER BY ts",
            (symbol, bar_type, since, before)).fetchall()
        return [float(c) for (c,) in rows]
