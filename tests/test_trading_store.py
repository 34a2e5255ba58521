"""PostgreSQL trading state: the kill switch survives a restart; orders are recorded once."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
from typer.testing import CliRunner

from awet_dagster.risk.state import KillSwitchState
from awet_dagster.storage.db import connect
from awet_dagster.storage.trading import PostgresOrderStore, PostgresRiskStateStore, record_audit

T = datetime(2024, 3, 1, 15, 0, tzinfo=timezone.utc)


@pytest.fixture
def conn(isolated_database_url):
    """A database of this test's own: the kill switch, orders and positions written here are
    seen by no other test (the live-loop tests rebuild their portfolios from theirs)."""
    with connect(isolated_database_url) as c:
        yield c


def test_kill_switch_persists_across_connections(conn, isolated_database_url):
    assert PostgresRiskStateStore(conn).get_kill_switch() == KillSwitchState()  # a database of its own
    PostgresRiskStateStore(conn).set_kill_switch(KillSwitchState(True, "loss 10.2%", T))
    with connect(isolated_database_url) as other:  # a restarted process
        state = PostgresRiskStateStore(other).get_kill_switch()
    assert state == KillSwitchState(True, "loss 10.2%", T)


def test_daily_anchor_round_trip(conn):
    store = PostgresRiskStateStore(conn)
    assert store.get_daily_anchor(date(2024, 3, 1)) is None
    store.set_daily_anchor(date(2024, 3, 1), 100_000.0)
    store.set_daily_anchor(date(2024, 3, 1), 99_000.0)
    assert store.get_daily_anchor(date(2024, 3, 1)) == 99_000.0


def test_a_namespace_keeps_its_own_kill_switch_and_anchors(conn):
    ns, plain = PostgresRiskStateStore(conn, "run-a"), PostgresRiskStateStore(conn)
    ns.set_kill_switch(KillSwitchState(True, "drill", T))
    ns.set_daily_anchor(date(2024, 3, 1), 50_000.0)
    assert ns.get_kill_switch().tripped and ns.get_daily_anchor(date(2024, 3, 1)) == 50_000.0
    assert plain.get_kill_switch() == KillSwitchState() and plain.get_daily_anchor(date(2024, 3, 1)) is None
    keys = {k for (k,) in conn.execute("SELECT key FROM risk_state")}
    assert keys == {"run-a:kill_switch", "run-a:anchor:2024-03-01"}


def test_orders_are_recorded_once_and_positions_upserted(conn):
    store = PostgresOrderStore(conn)
    assert store.positions() == {}
    kw = dict(client_order_id="awet-abc", correlation_id="c1", symbol="SPY", side="buy", qty=10, order_type="market",
              broker_order_id=None, submitted_at=T, payload={"tp": 1})
    assert store.record_order(status="submitted", **kw) is True
    assert store.record_order(status="filled", **{**kw, "broker_order_id": "b-1"}) is False
    assert conn.execute("SELECT status, broker_order_id FROM orders WHERE client_order_id = 'awet-abc'").fetchall() == [
        ("filled", "b-1")]
    assert store.record_fill(fill_id="f1", client_order_id="awet-abc", symbol="SPY", qty=10, price=400, fee=1, ts=T)
    assert not store.record_fill(fill_id="f1", client_order_id="awet-abc", symbol="SPY", qty=10, price=400, fee=1, ts=T)
    store.upsert_position("SPY", 10, 400.0, T, 401.0)
    assert store.positions() == {"SPY": 10.0}
    record_audit(conn, actor="test", action="order.submit", subject="SPY", correlation_id="c1", details={"q": 10})
    rows = conn.execute("SELECT actor, action, subject, details FROM audit_log WHERE correlation_id = 'c1'").fetchall()
    assert rows == [("test", "order.submit", "SPY", {"q": 10})]


def test_insert_orders_if_new_writes_a_batch_in_one_statement_and_reports_the_rows_that_existed(conn):
    ids = ["awet-batch-1", "awet-batch-2", "awet-batch-3"]
    store = PostgresOrderStore(conn)
    row = dict(correlation_id="cb", symbol="SPY", side="buy", qty=3, order_type="market", status="new",
               payload={"ns": "t", "reference_price": 400.0})
    assert store.insert_orders_if_new([dict(client_order_id=ids[0], **row)]) == {}  # inserted now
    conn.execute("UPDATE orders SET status = 'accepted', broker_order_id = 'b-9' WHERE client_order_id = %s",
                 (ids[0],))
    # ids[0] existed (its row is reported, not overwritten); ids[1] twice in one call: written once.
    got = store.insert_orders_if_new([dict(client_order_id=c, **row) for c in (ids[0], ids[1], ids[1], ids[2])])
    assert got == {ids[0]: ("accepted", "b-9")}
    rows = conn.execute("SELECT client_order_id, status, qty, payload FROM orders WHERE client_order_id = ANY(%s) "
                        "ORDER BY client_order_id", (ids,)).fetchall()
    assert [(r[0], r[1], float(r[2]), r[3]) for r in rows] == [
        (ids[0], "accepted", 3.0, row["payload"]), (ids[1], "new", 3.0, row["payload"]),
        (ids[2], "new", 3.0, row["payload"])]
    assert store.insert_orders_if_new([dict(client_order_id=ids[2], **row)]) == {ids[2]: ("new", None)}
    assert store.insert_orders_if_new([]) == {}


def test_cli_kill_switch_trip_status_reset(conn, monkeypatch, isolated_database_url, tmp_path):
    from awet_cli.main import app

    monkeypatch.setenv("DATABASE_URL", isolated_database_url)
    monkeypatch.setenv("AWET_HOME", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["kill-switch", "status"]).exit_code == 0
    assert runner.invoke(app, ["kill-switch", "trip", "--reason", "drill"]).exit_code == 0
    tripped = runner.invoke(app, ["kill-switch", "status"])
    assert tripped.exit_code == 3 and "TRIPPED" in tripped.output and "drill" in tripped.output
    assert runner.invoke(app, ["kill-switch", "reset"]).exit_code != 0  # a reason is mandatory
    reset = runner.invoke(app, ["kill-switch", "reset", "--reason", "drill over", "--operator", "alice"])
    assert reset.exit_code == 0
    assert runner.invoke(app, ["kill-switch", "status"]).exit_code == 0
    actions = [r[0] for r in conn.execute(
        "SELECT action FROM audit_log WHERE subject = 'kill_switch' ORDER BY id DESC LIMIT 2").fetchall()]
    assert actions == ["kill_switch.reset", "kill_switch.trip"]
