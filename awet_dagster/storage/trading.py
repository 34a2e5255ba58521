"""PostgreSQL-backed trading state: the kill switch, daily anchors, orders, positions, audit.

These implement the core protocols (`RiskStateStore`, `OrderStore`) so the live loop keeps its
state across restarts; the backtest uses the in-memory twins.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

from awet_dagster.risk.state import KillSwitchState

KILL_SWITCH_KEY = "kill_switch"
OPEN_STATUSES = ("new", "accepted", "pending_new", "partially_filled", "submitted", "held")


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class PostgresRiskStateStore:
    """`risk_state` rows: `kill_switch` and one `anchor:<session date>` per session."""

    def __init__(self, conn) -> None:
        self._conn = conn  # psycopg connection in autocommit mode

    def get_kill_switch(self) -> KillSwitchState:
        row = self._conn.execute("SELECT value FROM risk_state WHERE key = %s", (KILL_SWITCH_KEY,)).fetchone()
        if row is None:
            return KillSwitchState()
        v = row[0]
        return KillSwitchState(
            tripped=bool(v.get("tripped")), reason=v.get("reason"), tripped_at=_dt(v.get("tripped_at")),
            reset_by=v.get("reset_by"), reset_at=_dt(v.get("reset_at")), reset_reason=v.get("reset_reason"),
        )

    def set_kill_switch(self, state: KillSwitchState) -> None:
        value = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(state).items()}
        self._put(KILL_SWITCH_KEY, value)

    def get_daily_anchor(self, session: date) -> float | None:
        row = self._conn.execute("SELECT value FROM risk_state WHERE key = %s", (f"anchor:{session}",)).fetchone()
        return float(row[0]["equity"]) if row else None

    def set_daily_anchor(self, session: date, equity: float) -> None:
        self._put(f"anchor:{session}", {"equity": float(equity)})

    def _put(self, key: str, value: Mapping[str, Any]) -> None:
        self._conn.execute(
            "INSERT INTO risk_state (key, value, updated_at) VALUES (%s, %s::jsonb, now()) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            (key, json.dumps(value)),
        )


class PostgresOrderStore:
    """Our persisted view of orders and positions, for reconciliation after a restart."""

    def __init__(self, conn) -> None:
        self._conn = conn

    def open_client_order_ids(self) -> set[str]:
        rows = self._conn.execute(
            "SELECT client_order_id FROM orders WHERE status = ANY(%s)", (list(OPEN_STATUSES),)
        ).fetchall()
        return {r[0] for r in rows}

    def positions(self) -> Mapping[str, float]:
        return {r[0]: float(r[1]) for r in self._conn.execute("SELECT symbol, qty FROM positions WHERE qty <> 0")}

    def has_order(self, client_order_id: str) -> bool:
        return self._conn.execute(
            "SELECT 1 FROM orders WHERE client_order_id = %s", (client_order_id,)
        ).fetchone() is not None

    def record_order(self, *, client_order_id: str, correlation_id: str, symbol: str, side: str, qty: float,
                     order_type: str, status: str, broker_order_id: str | None, submitted_at: datetime | None,
                     payload: Mapping[str, Any]) -> bool:
        """Insert once per client_order_id; later calls only update the status. True if new."""
        row = self._conn.execute(
            "INSERT INTO orders (client_order_id, correlation_id, symbol, side, qty, type, status, broker_order_id,"
            " submitted_at, payload) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s::jsonb) "
            "ON CONFLICT (client_order_id) DO UPDATE SET status = EXCLUDED.status, "
            "broker_order_id = COALESCE(EXCLUDED.broker_order_id, orders.broker_order_id), updated_at = now() "
            "RETURNING (xmax = 0)",
            (client_order_id, correlation_id, symbol, side, qty, order_type, status, broker_order_id, submitted_at,
             json.dumps(payload, default=str)),
        ).fetchone()
        return bool(row[0])

    def insert_orders_if_new(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple]:
        """Insert each order row (keys: client_order_id, correlation_id, symbol, side, qty,
        order_type, status, payload) unless its client_order_id has one, all in ONE statement:
        {client_order_id: (status, broker_order_id)} of the ids that had a row before; the
        others were inserted now. (The SELECT does not see the CTE's insert - same snapshot -
        so it returns only rows that existed before.)"""
        if not rows:
            return {}
        cols = ("client_order_id", "correlation_id", "symbol", "side", "qty", "order_type", "status")
        values = ", ".join(["(%s,%s,%s,%s,%s::double precision,%s,%s,%s::jsonb)"] * len(rows))
        params: list[Any] = []
        for r in rows:
            params.extend(r[c] for c in cols)
            params.append(json.dumps(r["payload"], default=str))
        ids = [r["client_order_id"] for r in rows]
        found = self._conn.execute(
            f"WITH v (client_order_id, correlation_id, symbol, side, qty, type, status, payload) AS (VALUES {values}), "
            "ins AS (INSERT INTO orders (client_order_id, correlation_id, symbol, side, qty, type, status, payload) "
            "SELECT * FROM v ON CONFLICT (client_order_id) DO NOTHING RETURNING 1) "
            "SELECT client_order_id, status, broker_order_id FROM orders WHERE client_order_id = ANY(%s)",
            (*params, ids),
        ).fetchall()
        return {r[0]: (r[1], r[2]) for r in found}

    def record_fill(self, *, fill_id: str, client_order_id: str, symbol: str, qty: float, price: float,
                    fee: float, ts: datetime) -> bool:
        row = self._conn.execute(
            "INSERT INTO fills (fill_id, client_order_id, symbol, qty, price, fee, ts) VALUES (%s,%s,%s,%s,%s,%s,%s)"
            " ON CONFLICT (fill_id) DO NOTHING RETURNING 1",
            (fill_id, client_order_id, symbol, qty, price, fee, ts),
        ).fetchone()
        return row is not None

    def upsert_position(self, symbol: str, qty: float, avg_price: float, opened_at: datetime | None,
                        high_water: float | None) -> None:
        self._conn.execute(
            "INSERT INTO positions (symbol, qty, avg_price, opened_at, high_water, updated_at) "
            "VALUES (%s,%s,%s,%s,%s, now()) ON CONFLICT (symbol) DO UPDATE SET qty = EXCLUDED.qty, "
            "avg_price = EXCLUDED.avg_price, opened_at = EXCLUDED.opened_at, high_water = EXCLUDED.high_water, "
            "updated_at = now()",
            (symbol, qty, avg_price, opened_at, high_water),
        )


_AUDIT_INSERT = ("INSERT INTO audit_log (ts, actor, action, subject, correlation_id, details) "
                 "VALUES (COALESCE(%s, now()), %s, %s, %s, %s, %s::jsonb)")


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


def record_audit(conn, *, actor: str, action: str, subject: str | None = None, correlation_id: str | None = None,
                 details: Mapping[str, Any] | None = None, ts: datetime | None = None) -> None:
    """Append one audit record (who/what/why); never updated or deleted except by retention."""
    conn.execute(_AUDIT_INSERT, AuditRecord(actor, action, subject, correlation_id, details, ts).params())


def record_audits(conn, records: Sequence[AuditRecord]) -> int:
    """Append many audit records in one transaction (one pipelined round trip, not one per row)."""
    if not records:
        return 0
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(_AUDIT_INSERT, [r.params() for r in records])
    return len(records)


def audit_details_by_correlation(conn, actor: str, correlation_ids: Sequence[str], key: str) -> list[dict]:
    """``details`` of ``actor``'s audit records for ``correlation_ids`` that carry ``key``
    (one query for a whole batch; uses the correlation_id index)."""
    if not correlation_ids:
        return []
    rows = conn.execute(
        "SELECT details FROM audit_log WHERE correlation_id = ANY(%s) AND actor = %s AND details ? %s",
        (list(correlation_ids), actor, key)).fetchall()
    return [r[0] for r in rows]
