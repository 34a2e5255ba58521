"""The risk component's storage port (``RiskStore``) and its in-memory twin.

``awet_dagster.storage.risk.PostgresRiskStore`` is the live implementation (``risk_state``,
``audit_log``, ``orders``/``fills``, ``bars``: warm-up and the exits' restore); ``InMemoryRiskStore`` is the twin for fast
tests. ``AuditRecord`` is one ``audit_log`` row: who decided what about which subject, why.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from awet_dagster.execution.ledger import StoredFill, StoredOrder
from awet_dagster.risk.state import InMemoryRiskStateStore, RiskStateStore
from awet_dagster.streaming.warmup import InMemoryBarHistory


@dataclass(frozen=True)
class AuditRecord:
    actor: str
    action: str
    subject: str | None = None
    correlation_id: str | None = None
    details: Mapping[str, Any] | None = None
    ts: datetime | None = None  # None: the time of the write

    def params(self) -> tuple:
        return (self.ts, self.actor, self.action, self.subject, self.correlation_id,
                json.dumps(dict(self.details or {}), default=str))


class RiskStore(Protocol):
    def state(self) -> RiskStateStore:
        """The kill switch and daily anchors (read through, uncached)."""
        ...

    def ledger_rows(self, namespace: str) -> tuple[list[StoredFill], list[StoredOrder]]: ...

    def recent_entries(self, namespace: str) -> list[tuple[str, datetime]]:
        """(symbol, decision ts) of the entries placed in the last two days: the throttle's memory."""
        ...

    def stored_decisions(self, correlation_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Details of risk's audit records for ``correlation_ids`` that carry a ``decision``."""
        ...

    def record_audits(self, records: Sequence[AuditRecord]) -> int:
        """Append ``records`` in one transaction."""
        ...

    def last_bars_many(self, wanted: Mapping[str, datetime], bar_type: str,
                       limit: int) -> dict[str, list[dict[str, Any]]]:
        """{symbol: up to ``limit`` bars of ``bar_type`` before wanted[symbol], oldest first}."""
        ...

    def closes_between(self, symbol: str, bar_type: str, since: datetime, before: datetime) -> list[float]:
        """Closes of the symbol's stored bars with ``since <= ts < before``, in time order."""
        ...


@dataclass
class InMemoryRiskStore(InMemoryBarHistory):
    """``RiskStore`` in memory. ``fills``/``orders``: the ledger rows; ``bars``: {symbol: [bar]}."""

    risk_state: InMemoryRiskStateStore = field(default_factory=InMemoryRiskStateStore)
    fills: list[StoredFill] = field(default_factory=list)
    orders: list[StoredOrder] = field(default_factory=list)
    audits: list[AuditRecord] = field(default_factory=list)

    def state(self) -> RiskStateStore:
        return self.risk_state

    def ledger_rows(self, namespace: str) -> tuple[list[StoredFill], list[StoredOrder]]:
        return list(self.fills), list(self.orders)

    def recent_entries(self, namespace: str) -> list[tuple[str, datetime]]:
        return sorted((o.symbol, o.decided_ts) for o in self.orders if o.intent == "entry" and o.decided_ts)

    def stored_decisions(self, correlation_ids: Sequence[str]) -> list[dict[str, Any]]:
        wanted = set(correlation_ids)
        return [dict(r.details) for r in self.audits
                if r.actor == "risk" and r.correlation_id in wanted and r.details and "decision" in r.details]

    def record_audits(self, records: Sequence[AuditRecord]) -> int:
        self.audits.extend(records)
        return len(records)
