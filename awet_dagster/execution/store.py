"""The execution component's storage port: what ``OrderLifecycle`` reads and writes.

``ExecutionStore`` is the port; ``awet_dagster.storage.execution.PostgresExecutionStore`` is
the live implementation (tables ``orders``, ``fills``, ``positions``, ``bars``) and
``InMemoryExecutionStore`` below its twin for fast tests. Writes are data (``OrderWrite``,
``FillWrite``, ``StatusWrite``, ``PositionWrite``), queued by the component and applied by
``commit`` in ONE transaction, in order: each is idempotent (an upsert, or ON CONFLICT), so
a transaction retried after an outage may replay them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from awet_dagster.execution.ledger import StoredFill, StoredOrder

OPEN_STATUSES = ("new", "accepted", "pending_new", "partially_filled", "submitted", "held")


class OrderState(NamedTuple):
    """A stored order with its fills summed: what a restart rebuilds the lifecycle from."""

    client_order_id: str
    symbol: str
    side: str
    qty: float
    status: str
    broker_order_id: str | None
    payload: dict[str, Any]
    filled_qty: float
    filled_notional: float
    fees: float
    last_fill_ts: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class OrderWrite:
    """An order row written whole (a bracket leg's exit): inserted once, then its status updated."""

    client_order_id: str
    correlation_id: str
    symbol: str
    side: str
    qty: float
    order_type: str
    status: str
    broker_order_id: str | None
    submitted_at: datetime | None
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class FillWrite:
    fill_id: str
    client_order_id: str
    symbol: str
    qty: float
    price: float
    fee: float
    ts: datetime


@dataclass(frozen=True)
class StatusWrite:
    """A new status (and the broker id when known; a known one is kept). ``submitted``: the
    venue took the order now (its broker id is set, its first submission time recorded)."""

    client_order_id: str
    status: str
    broker_order_id: str | None
    submitted: bool = False


@dataclass(frozen=True)
class PositionWrite:
    symbol: str
    qty: float
    avg_price: float
    opened_at: datetime | None
    high_water: float | None


Write = OrderWrite | FillWrite | StatusWrite | PositionWrite


def new_order_row(client_order_id: str, correlation_id: str, symbol: str, side: str, qty: float,
                  payload: Mapping[str, Any], order_type: str = "market") -> dict[str, Any]:
    """The ``orders`` row (status new) written before an order is sent (``commit``'s ``new_orders``)."""
    return dict(client_order_id=client_order_id, correlation_id=correlation_id, symbol=symbol, side=side, qty=qty,
                order_type=order_type, status="new", payload=dict(payload))


class ExecutionStore(Protocol):
    def commit(self, writes: Sequence[Write], new_orders: Sequence[Mapping[str, Any]] = ()) -> dict[str, tuple]:
        """Apply ``writes`` in order, then insert each of ``new_orders`` unless its id has a row,
        in one transaction: {client_order_id: (status, broker_order_id)} of the new orders'
        ids that had a row before."""
        ...

    def ledger_rows(self, namespace: str) -> tuple[list[StoredFill], list[StoredOrder]]: ...

    def order_states(self, namespace: str) -> list[OrderState]: ...

    def order_qty_payload(self, client_order_id: str) -> tuple[float, dict[str, Any]] | None: ...

    def last_bar_ts(self, symbol: str) -> datetime | None: ...

    def bars_between(self, symbol: str, bar_type: str, after: datetime, before: datetime,
                     limit: int) -> list[dict[str, Any]]: ...


@dataclass
class _Order:
    row: dict[str, Any]
    status: str
    broker_order_id: str | None = None
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class InMemoryExecutionStore:
    """``ExecutionStore`` in dictionaries: the twin of the PostgreSQL store for fast tests.

    ``bars``: {symbol: [bar mapping, ...]} a test fills (what persist_bars would have stored).
    ``fail_next_commit``: the next ``commit`` raises it before changing anything (an outage)."""

    def __init__(self) -> None:
        self.orders: dict[str, _Order] = {}
        self.fills: dict[str, FillWrite] = {}
        self.position_rows: dict[str, PositionWrite] = {}
        self.bars: dict[str, list[dict[str, Any]]] = {}
        self.fail_next_commit: BaseException | None = None
        self.commits = 0

    def commit(self, writes: Sequence[Write], new_orders: Sequence[Mapping[str, Any]] = ()) -> dict[str, tuple]:
        if self.fail_next_commit is not None:
            exc, self.fail_next_commit = self.fail_next_commit, None
            raise exc
        for w in writes:
            if isinstance(w, OrderWrite):
                o = self.orders.get(w.client_order_id)
                if o is None:
                    self.orders[w.client_order_id] = _Order(
                        {k: getattr(w, k) for k in ("client_order_id", "correlation_id", "symbol", "side", "qty",
                                                    "order_type")} | {"payload": dict(w.payload)},
                        w.status, w.broker_order_id)
                else:
                    o.status, o.broker_order_id = w.status, w.broker_order_id or o.broker_order_id
            elif isinstance(w, FillWrite):
                self.fills.setdefault(w.fill_id, w)
            elif isinstance(w, StatusWrite):
                o = self.orders.get(w.client_order_id)
                if o is not None:
                    o.status = w.status
                    o.broker_order_id = w.broker_order_id if w.submitted else w.broker_order_id or o.broker_order_id
                    o.updated_at = datetime.now(UTC)
            elif isinstance(w, PositionWrite):
                self.position_rows[w.symbol] = w
            else:
                raise TypeError(f"unknown write {w!r}")
        existed = {}
        for r in new_orders:
            coid = r["client_order_id"]
            if coid in self.orders:
                existed[coid] = (self.orders[coid].status, self.orders[coid].broker_order_id)
            else:
                self.orders[coid] = _Order(dict(r), r["status"])
        self.commits += 1
        return existed

    def _ns(self, o: _Order) -> str:
        return (o.row.get("payload") or {}).get("ns", "") or ""

    def order_states(self, namespace: str) -> list[OrderState]:
        out = []
        for coid, o in self.orders.items():
            if self._ns(o) != namespace:
                continue
            fills = [f for f in self.fills.values() if f.client_order_id == coid]
            out.append(OrderState(coid, o.row["symbol"], o.row["side"], float(o.row["qty"]), o.status,
                                  o.broker_order_id, dict(o.row.get("payload") or {}), sum(f.qty for f in fills),
                                  sum(f.qty * f.price for f in fills), sum(f.fee for f in fills),
                                  max((f.ts for f in fills), default=None), o.updated_at))
        return out

    def ledger_rows(self, namespace: str) -> tuple[list[StoredFill], list[StoredOrder]]:
        mine = {c: o for c, o in self.orders.items() if self._ns(o) == namespace}
        fills = []
        for f in sorted(self.fills.values(), key=lambda f: (f.ts, f.symbol, f.fill_id)):
            o = mine.get(f.client_order_id)
            if o is None:
                continue
            factor = next((b.get("split_factor") for b in self.bars.get(f.symbol, ()) if b["ts"] == f.ts), None)
            fills.append(StoredFill(f.client_order_id, f.symbol, o.row["side"], f.qty, f.price, f.fee, f.ts,
                                    o.row["correlation_id"], (o.row.get("payload") or {}).get("intent", "entry"),
                                    float(factor) if factor is not None else None))
        orders = []
        for coid, o in mine.items():
            p = o.row.get("payload") or {}
            orders.append(StoredOrder(coid, o.row["symbol"], o.status, o.row["correlation_id"], float(o.row["qty"]),
                                      o.row["side"], p.get("intent", "entry"),
                                      datetime.fromisoformat(p["ts"]) if p.get("ts") else None,
                                      float(p["reference_price"]) if p.get("reference_price") else None))
        return fills, orders

    def order_qty_payload(self, client_order_id: str) -> tuple[float, dict[str, Any]] | None:
        o = self.orders.get(client_order_id)
        return None if o is None else (float(o.row["qty"]), dict(o.row.get("payload") or {}))

    def positions(self) -> Mapping[str, float]:
        return {s: p.qty for s, p in self.position_rows.items() if p.qty != 0}

    def last_bar_ts(self, symbol: str) -> datetime | None:
        return max((b["ts"] for b in self.bars.get(symbol, ())), default=None)

    def bars_between(self, symbol: str, bar_type: str, after: datetime, before: datetime,
                     limit: int) -> list[dict[str, Any]]:
        rows = sorted((b for b in self.bars.get(symbol, ()) if b.get("bar_type", bar_type) == bar_type
                       and after < b["ts"] < before), key=lambda b: b["ts"])
        return [dict(b) for b in rows[:limit]]
