"""``PostgresExecutionStore``: the execution component's storage port
(``awet_dagster.execution.store.ExecutionStore``) over the ``orders``, ``fills``, ``positions``
and ``bars`` tables.

``connect``: returns the (autocommit) psycopg connection to use, e.g. a live service's
``LazyConnection.get``, so a connection lost in an outage is reopened on the next call. An
outage raises ``psycopg.OperationalError``; the caller decides what it means (the live
execution service: redeliver the batch).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from awet_dagster.execution.ledger import StoredFill, StoredOrder
from awet_dagster.execution.store import FillWrite, OrderState, OrderWrite, PositionWrite, StatusWrite, Write
from awet_dagster.storage.bars import bars_between, last_bar_ts
from awet_dagster.storage.trading import PostgresOrderStore, ledger_rows


class PostgresExecutionStore:
    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect

    def _orders(self) -> PostgresOrderStore:
        return PostgresOrderStore(self._connect())

    def commit(self, writes: Sequence[Write], new_orders: Sequence[Mapping[str, Any]] = ()) -> dict[str, tuple]:
        """One pipelined transaction: one round trip for the whole batch's writes."""
        conn = self._connect()
        store = PostgresOrderStore(conn)
        with conn.pipeline(), conn.transaction():
            for w in writes:
                if isinstance(w, FillWrite):
                    store.add_fill(w.fill_id, w.client_order_id, w.symbol, w.qty, w.price, w.fee, w.ts)
                elif isinstance(w, StatusWrite):
                    if w.submitted:
                        store.set_submitted(w.client_order_id, w.status, w.broker_order_id)
                    else:
                        store.set_status(w.client_order_id, w.status, w.broker_order_id)
                elif isinstance(w, PositionWrite):
                    store.upsert_position(w.symbol, w.qty, w.avg_price, w.opened_at, w.high_water)
                elif isinstance(w, OrderWrite):
                    store.record_order(client_order_id=w.client_order_id, correlation_id=w.correlation_id,
                                       symbol=w.symbol, side=w.side, qty=w.qty, order_type=w.order_type,
                                       status=w.status, broker_order_id=w.broker_order_id,
                                       submitted_at=w.submitted_at, payload=w.payload)
                else:
                    raise TypeError(f"unknown write {w!r}")
            return store.insert_orders_if_new(new_orders) if new_orders else {}

    def ledger_rows(self, namespace: str) -> tuple[list[StoredFill], list[StoredOrder]]:
        return ledger_rows(self._connect(), namespace)

    def order_states(self, namespace: str) -> list[OrderState]:
        return [OrderState(*row[:6], row[6] or {}, float(row[7]), float(row[8]), float(row[9]), *row[10:])
                for row in self._orders().order_states(namespace)]

    def order_qty_payload(self, client_order_id: str) -> tuple[float, dict[str, Any]] | None:
        return self._orders().order_qty_payload(client_order_id)

    def last_bar_ts(self, symbol: str) -> datetime | None:
        return last_bar_ts(self._connect(), symbol)

    def bars_between(self, symbol: str, bar_type: str, after: datetime, before: datetime,
                     limit: int) -> list[dict[str, Any]]:
        return bars_between(self._connect(), symbol, bar_type, after, before, limit)
