"""The execution component (``awet_dagster.execution.lifecycle.OrderLifecycle``) on its
in-memory store: the order path, restart without a duplicate order, a store outage at the
checkpoint. No Kafka, no PostgreSQL: the same component runs in the live execution service
over ``PostgresExecutionStore`` (tests/test_live_loop.py, tests/test_broker_restart.py)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from awet_dagster.contracts import ExecutionReport, ExitEvent, MarketRawEvent, OrderEvent, RiskDecision, RiskSnapshot
from awet_dagster.execution import PaperSimulator, client_order_id
from awet_dagster.execution.lifecycle import OrderLifecycle, RestorableSimulator
from awet_dagster.execution.store import InMemoryExecutionStore
from awet_dagster.streaming.events import bar_to_event

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
MIN = timedelta(minutes=1)


def _bar(ts: datetime, open_: float = 100.0, symbol: str = "AAPL") -> MarketRawEvent:
    return bar_to_event({"symbol": symbol, "ts": ts, "open": open_, "high": open_ + 1, "low": open_ - 1,
                         "close": open_, "volume": 1e6, "bar_type": "minute"}, correlation_id="bar")


def _decision(corr: str = "c-1", qty: float = 10.0, ts: datetime = T0) -> RiskDecision:
    return RiskDecision(correlation_id=corr, symbol="AAPL", ts=ts, approved=True, side="buy", qty=qty,
                        notional=qty * 100.0, signal_event_id="s", metrics=RiskSnapshot(exposure=qty * 100.0))


def _exit(corr: str, qty: float, ts: datetime) -> ExitEvent:
    return ExitEvent(correlation_id=corr, symbol="AAPL", ts=ts, reason="tp", position_side="long", qty=qty,
                     trigger_price=101.0, entry_price=100.0, entry_ts=T0)


def _lifecycle(store: InMemoryExecutionStore, broker: object) -> OrderLifecycle:
    return OrderLifecycle(store, broker, initial_equity=100_000.0, orders_topic="orders", done_topic="done")


def _events(outputs: list, kind: type) -> list:
    return [o.event for o in outputs if isinstance(o.event, kind)]


def test_entry_fills_on_the_next_bar_and_the_exit_closes_the_position_in_the_store():
    store = InMemoryExecutionStore()
    sim = RestorableSimulator(slippage_bps=0.0, fee_per_order=1.0)
    ex = _lifecycle(store, sim)
    assert ex.start() == []
    ex.handle(_bar(T0))
    placed = ex.handle(_decision())
    [order] = _events(placed, OrderEvent)
    assert (order.client_order_id, order.status) == (client_order_id("c-1", "entry"), "accepted")
    assert store.orders[order.client_order_id].status == "new"  # written before it was sent
    [fill] = _events(ex.handle(_bar(T0 + MIN, open_=101.0)), ExecutionReport)
    assert (fill.filled_qty, fill.avg_price, fill.fee, fill.status) == (10.0, 101.0, 1.0, "filled")
    assert store.fills == {}  # queued for the checkpoint, not written one by one
    ex.flush_writes()
    assert store.orders[order.client_order_id].status == "filled"
    assert [(f.qty, f.price) for f in store.fills.values()] == [(10.0, 101.0)]
    assert store.positions() == {"AAPL": 10.0}

    assert _events(ex.handle(_decision()), OrderEvent)[0].status == "filled"  # redelivered: adopted
    assert (sim.submissions, ex.adopted) == (1, 1)

    ex.handle(_exit("c-1", 10.0, T0 + MIN))
    [sold] = _events(ex.handle(_bar(T0 + 2 * MIN, open_=102.0)), ExecutionReport)
    assert (sold.intent, sold.filled_qty, sold.avg_price) == ("exit", 10.0, 102.0)
    ex.flush_writes()
    assert store.positions() == {}
    assert ex.ledger.portfolio.realised_pnl == pytest.approx(10.0 * (102.0 - 101.0))


def test_a_restart_between_submission_and_checkpoint_adopts_the_order_instead_of_sending_it_again():
    store = InMemoryExecutionStore()
    venue = PaperSimulator(slippage_bps=0.0)  # an outside venue: it outlives the process
    first = _lifecycle(store, venue)
    first.start()
    first.handle(_decision())
    assert venue.submissions == 1
    # Crash: the status write after submission was queued, never committed.
    coid = client_order_id("c-1", "entry")
    assert (store.orders[coid].status, store.orders[coid].broker_order_id) == ("new", None)

    second = _lifecycle(store, venue)
    second.start()
    [order] = _events(second.handle(_decision()), OrderEvent)  # the redelivered decision
    assert (order.client_order_id, order.status) == (coid, "accepted")
    assert (venue.submissions, second.adopted, second.submitted) == (1, 1, 0)
    second.flush_writes()
    assert store.orders[coid].broker_order_id == "sim-1"


def test_a_store_outage_at_the_checkpoint_keeps_the_writes_for_the_retry():
    store = InMemoryExecutionStore()
    ex = _lifecycle(store, RestorableSimulator(slippage_bps=0.0, fee_per_order=0.0))
    ex.start()
    ex.handle(_bar(T0))
    ex.handle(_decision())
    ex.handle(_bar(T0 + MIN))
    store.fail_next_commit = ConnectionError("database gone")
    with pytest.raises(ConnectionError):
        ex.flush_writes()
    assert store.fills == {} and store.positions() == {}
    ex.flush_writes()  # the database is back
    assert len(store.fills) == 1 and store.positions() == {"AAPL": 10.0}


def test_a_restart_restores_the_simulator_and_fills_a_working_order_once():
    store = InMemoryExecutionStore()
    first = _lifecycle(store, RestorableSimulator(slippage_bps=0.0, fee_per_order=0.0))
    first.start()
    first.handle(_bar(T0))
    first.handle(_decision())
    first.flush_writes()  # order accepted and stored, not filled yet

    second = _lifecycle(store, RestorableSimulator(slippage_bps=0.0, fee_per_order=0.0))
    assert second.start() == []  # nothing filled: nothing to re-announce
    [fill] = _events(second.handle(_bar(T0 + MIN, open_=99.0)), ExecutionReport)
    assert (fill.filled_qty, fill.avg_price) == (10.0, 99.0)
    assert second.handle(_bar(T0 + 2 * MIN)) == []
    second.flush_writes()
    assert len(store.fills) == 1 and store.positions() == {"AAPL": 10.0}


def test_a_start_reconciles_its_own_namespace_only():
    """Two runs sharing one database (namespaces; e.g. tests on one worker's PostgreSQL): starting
    one must not take the other's working order for one its venue lost (and mark it expired), nor
    compare the other's positions with its venue."""
    store = InMemoryExecutionStore()
    a = OrderLifecycle(store, RestorableSimulator(slippage_bps=0.0, fee_per_order=1.0), initial_equity=100_000.0,
                       orders_topic="orders", done_topic="done", namespace="run-a")
    a.start()
    a.handle(_bar(T0))
    a.handle(_decision("c-a1"))
    a.handle(_bar(T0 + MIN))  # fills c-a1: run-a holds 10 AAPL
    a.handle(_decision("c-a2", ts=T0 + MIN))  # working at run-a's venue
    a.flush_writes()
    working = client_order_id("c-a2", "entry")
    assert store.orders[working].status == "accepted" and store.positions() == {"AAPL": 10.0}

    # run-b trades at a venue that never heard of run-a's orders (sim None: the Alpaca path,
    # which looks up every order it thinks lost and marks the unknown ones expired).
    b = OrderLifecycle(store, PaperSimulator(slippage_bps=0.0, fee_per_order=1.0), initial_equity=100_000.0,
                       orders_topic="orders", done_topic="done", namespace="run-b")
    assert b.sim is None
    b.start()
    b.flush_writes()
    report = b.reconcile_report
    assert report.not_open_at_broker == () and dict(report.position_mismatches) == {}
    assert store.orders[working].status == "accepted"  # not "expired"

    # Its own lost order is still found and closed: the view is scoped, not switched off.
    b.handle(_bar(T0))
    b.handle(_decision("c-b1"))
    b.flush_writes()
    mine = client_order_id("c-b1", "entry")
    c = OrderLifecycle(store, PaperSimulator(slippage_bps=0.0, fee_per_order=1.0), initial_equity=100_000.0,
                       orders_topic="orders", done_topic="done", namespace="run-b")
    c.start()
    c.flush_writes()
    assert c.reconcile_report.not_open_at_broker == (mine,)
    assert store.orders[mine].status == "expired" and store.orders[working].status == "accepted"
