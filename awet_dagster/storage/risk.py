"""``PostgresRiskStore``: the risk component's storage port (``awet_dagster.risk.store.RiskStore``)
over ``risk_state``, ``audit_log``, ``orders``/``fills`` and ``bars``.

``connect``: returns the (autocommit) psycopg connection to use (a live service's
``LazyConnection.get``: reopened after an outage). An outage raises ``psycopg.OperationalError``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from awet_dagster.execution.ledger import StoredFill, StoredOrder
from awet_dagster.risk.state import RiskStateStore
from awet_dagster.risk.store import AuditRecord
from awet_dagster.storage.trading import (
    PostgresRiskStateStore,
    audit_details_by_correlation,
    ledger_rows,
    record_audits,
)
from awet_dagster.storage.bar_history import PostgresBarHistory


class PostgresRiskStore(PostgresBarHistory):
    def __init__(self, connect: Callable[[], Any], namespace: str = "") -> None:
        super().__init__(connect)
        self._namespace = namespace

    def state(self) -> RiskStateStore:
        return PostgresRiskStateStore(self._connect(), self._namespace)

    def ledger_rows(self, namespace: str) -> tuple[list[StoredFill], list[StoredOrder]]:
        return ledger_rows(self._connect(), namespace)

    def recent_entries(self, namespace: str) -> list[tuple[str, datetime]]:
        rows = self._connect().execute(
            "SELECT symbol, payload->>'ts' FROM orders WHERE COALESCE(payload->>'ns', '') = %s "
            "AND payload->>'intent' = 'entry' AND updated_at > now() - interval '2 days' ORDER BY 2",
            (namespace,)).fetchall()
        return [(symbol, datetime.fromisoformat(ts)) for symbol, ts in rows if ts]

    def stored_decisions(self, correlation_ids: Sequence[str]) -> list[dict[str, Any]]:
        return audit_details_by_correlation(self._connect(), "risk", list(correlation_ids), "decision")

    def record_audits(self, records: Sequence[AuditRecord]) -> int:
        return record_audits(self._connect(), records)
