"""PostgreSQL-backed trading state: the kill switch, daily anchors, orders, positions, audit.

These implement the core protocols (`RiskStateStore`, `OrderStore`) so the live loop keeps its
state across restarts; the backtest uses the in-memory twins.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import date, datetime
from typing import Any

from awet_dagster.execution.ledger import StoredFill, StoredOrder
from awet_dagster.risk.store import AuditRecord
from awet_dagster.risk.state import KillSwitchState

KILL_SWITCH_KEY = "kill_switch"


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class PostgresRiskStateStore:
    """`risk_state` rows: `kill_switch`, one `anchor:<session date>` per session and `released`
    (event-time order: the last bar time handed over per bar type).

    ``namespace`` prefixes every key (``<namespace>:kill_switch``): runs sharing one database
    (tests, a staging account beside another) keep separate switches and anchors."""

    def __init__(self, conn, namespace: str = "") -> None:
        self._conn = conn  # psycopg connection in autocommit mode
        self._prefix = f"{namespace}:" if namespace else ""

    def _get(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM risk_state WHERE key = %s", (self._prefix + key,)).fetchone()
        return None if row is None else row[0]

    def get_kill_switch(self) -> KillSwitchState:
        v = self._get(KILL_SWITCH_KEY)
        if v is None:
            return KillSwitchState()
        return KillSwitchState(
            tripped=bool(v.get("tripped")), reason=v.get("reason"), tripped_at=_dt(v.get("tripped_at")),
            reset_by=v.get("reset_by"), reset_at=_dt(v.get("reset_at")), reset_reason=v.get("reset_reason"),
        )

    def set_kill_switch(self, state: KillSwitchState) -> None:
        value = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(state).items()}
        self._put(KILL_SWITCH_KEY, value)

    def get_daily_anchor(self, session: date) -> float | None:
        v = self._get(f"anchor:{session}")
        return float(v["equity"]) if v is not None else None

    def set_daily_anchor(self, session: date, equity: float) -> None:
        self._put(f"anchor:{session}", {"equity": float(equity)})

    def get_released(self) -> dict[str, datetime]:
        v = self._get("released") or {}
        return {bar_type: datetime.fromisoformat(ts) for bar_type, ts in v.items()}

    def set_released(self, released: Mapping[str, datetime]) -> None:
        self._put("released", {bar_type: ts.isoformat() for bar_type, ts in released.items()})

    def _put(self, key: str, value: Mapping[str, Any]) -> None:
        self._conn.execute(
            "INSERT INTO risk_state (key, value, updated_at) VALUES (%s, %s::jsonb, now()) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            (self._prefix + key, json.dumps(value)),
        )


class PostgresOrderStore:
    """Our persisted view of orders and positions, for reconciliation after a restart."""

    def __init__(self, conn) -> None:
        self._conn = conn

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

    def add_fill(self, fill_id: str, client_order_id: str, symbol: str, qty: float, price: float, fee: float,
                 ts: datetime) -> None:
        """``record_fill`` without the answer: no round trip, so it pipelines (the execution
        service writes a batch's fills in one pipelined transaction)."""
        self._conn.execute(
            "INSERT INTO fills (fill_id, client_order_id, symbol, qty, price, fee, ts) VALUES (%s,%s,%s,%s,%s,%s,%s)"
            " ON CONFLICT (fill_id) DO NOTHING", (fill_id, client_order_id, symbol, qty, price, fee, ts))

    def set_submitted(self, client_order_id: str, status: str, broker_order_id: str | None) -> None:
        """The venue took the order: its status, its broker id, when it was first submitted."""
        self._conn.execute(
            "UPDATE orders SET status = %s, broker_order_id = %s, submitted_at = COALESCE(submitted_at, now()), "
            "updated_at = now() WHERE client_order_id = %s", (status, broker_order_id, client_order_id))

    def set_status(self, client_order_id: str, status: str, broker_order_id: str | None = None) -> None:
        """A new status (and the broker id when now known; a known one is kept)."""
        self._conn.execute(
            "UPDATE orders SET status = %s, broker_order_id = COALESCE(%s, broker_order_id), updated_at = now() "
            "WHERE client_order_id = %s", (status, broker_order_id, client_order_id))

    def order_qty_payload(self, client_order_id: str) -> tuple[float, dict[str, Any]] | None:
        row = self._conn.execute("SELECT qty, payload FROM orders WHERE client_order_id = %s",
                                 (client_order_id,)).fetchone()
        return None if row is None else (float(row[0]), row[1] or {})

    def order_states(self, namespace: str = "") -> list[tuple]:
        """Every order of ``namespace`` (``payload->>'ns'``) with its fills summed, for a restart:
        (client_order_id, symbol, side, qty, status, broker_order_id, payload, filled qty,
        filled notional, fees, last fill ts, updated_at)."""
        return self._conn.execute(
            "SELECT o.client_order_id, o.symbol, o.side, o.qty, o.status, o.broker_order_id, o.payload, "
            "COALESCE(SUM(f.qty), 0), COALESCE(SUM(f.qty * f.price), 0), COALESCE(SUM(f.fee), 0), MAX(f.ts), "
            "o.updated_at FROM orders o LEFT JOIN fills f USING (client_order_id) "
            "WHERE COALESCE(o.payload->>'ns', '') = %s GROUP BY o.client_order_id", (namespace,)).fetchall()

    def upsert_position(self, symbol: str, qty: float, avg_price: float, opened_at: datetime | None,
                        high_water: float | None) -> None:
        self._conn.execute(
            "INSERT INTO positions (symbol, qty, avg_price, opened_at, high_water, updated_at) "
            "VALUES (%s,%s,%s,%s,%s, now()) ON CONFLICT (symbol) DO UPDATE SET qty = EXCLUDED.qty, "
            "avg_price = EXCLUDED.avg_price, opened_at = EXCLUDED.opened_at, high_water = EXCLUDED.high_water, "
            "updated_at = now()",
            (symbol, qty, avg_price, opened_at, high_water),
        )


__all__ = ["AuditRecord", "PostgresOrderStore", "PostgresRiskStateStore", "audit_details_by_correlation",
           "ledger_rows", "record_audit", "record_audits"]

_AUDIT_INSERT = ("INSERT INTO audit_log (ts, actor, action, subject, correlation_id, details) "
                 "VALUES (COALESCE(%s, now()), %s, %s, %s, %s, %s::jsonb)")


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


def ledger_rows(conn, namespace: str = "") -> tuple[list[StoredFill], list[StoredOrder]]:
    """Every fill (in (ts, symbol, fill id) order) and every order of ``namespace``
    (``orders.payload->>'ns'``): what a live service's ``FillLedger`` is rebuilt from."""
    fills = [
        StoredFill(coid, symbol, side, float(qty), float(price), float(fee), ts, corr, intent,
                   float(factor) if factor is not None else None)
        for coid, symbol, qty, price, fee, ts, side, corr, intent, factor in conn.execute(
            "SELECT f.client_order_id, f.symbol, f.qty, f.price, f.fee, f.ts, o.side, o.correlation_id, "
            "COALESCE(o.payload->>'intent', 'entry'), "
            "(SELECT max(b.split_factor) FROM bars b WHERE b.symbol = f.symbol AND b.ts = f.ts) "
            "FROM fills f JOIN orders o USING (client_order_id) "
            "WHERE COALESCE(o.payload->>'ns', '') = %s ORDER BY f.ts, f.symbol, f.fill_id",
            (namespace,),
        ).fetchall()
    ]
    orders = []
    for coid, symbol, status, corr, qty, payload, side in conn.execute(
        "SELECT client_order_id, symbol, status, correlation_id, qty, payload, side FROM orders "
        "WHERE COALESCE(payload->>'ns', '') = %s", (namespace,),
    ).fetchall():
        payload = payload or {}
        price = payload.get("reference_price")
        orders.append(StoredOrder(
            coid, symbol, status, corr, float(qty or 0.0), side, payload.get("intent", "entry"),
            datetime.fromisoformat(payload["ts"]) if payload.get("ts") else None,
            float(price) if price else None))
    return fills, orders
