"""Exit monitor: take profit, stop loss, trailing stop, max holding time; exits go through
the same router/simulator path as entries and keep the entry's correlation id."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from awet_dagster.config.schema import ExitsConfig
from awet_dagster.execution import OrderRouter, PaperSimulator, client_order_id
from awet_dagster.exits import ExitMonitor
from awet_dagster.risk import Fill, Portfolio

T0 = datetime(2013, 10, 7, 14, 0, tzinfo=UTC)
CFG = ExitsConfig(take_profit_pct=0.03, stop_loss_pct=0.015, trailing_stop_pct=0.02, max_hold_minutes=60,
                  max_hold_bars_daily=3)


def _open(side="buy", price=100.0, ts=T0, corr="corr-1") -> Portfolio:
    pf = Portfolio(100_000)
    pf.apply_fill(Fill(client_order_id(corr, "entry"), "AAPL", side, 10, price, 1.0, ts, corr, "entry"))
    return pf


def _bar(ts, close, bar_type="minute"):
    return {"symbol": "AAPL", "bar_type": bar_type, "ts": ts, "open": close, "high": close, "low": close,
            "close": close, "volume": 1e6}


def _feed(pf: Portfolio, closes, bar_type="minute", step=timedelta(minutes=1), monitor=None):
    monitor = monitor or ExitMonitor(CFG)
    out = []
    for i, c in enumerate(closes):
        bar = _bar(T0 + i * step, c, bar_type)
        pf.mark("AAPL", c)
        out.append(monitor.on_bar(bar, pf))
    return out


def _reasons(events):
    return [e[0].reason if e else None for e in events]


def test_take_profit():
    assert _reasons(_feed(_open(), [100.0, 101.0, 102.9, 103.0])) == [None, None, None, "tp"]


def test_stop_loss():
    assert _reasons(_feed(_open(), [100.0, 99.0, 98.6, 98.5])) == [None, None, None, "sl"]


def test_trailing_stop_follows_the_peak():
    # peak 102.5 -> trail level 100.45; the stop loss (98.5) is never touched
    assert _reasons(_feed(_open(), [101.0, 102.5, 101.0, 100.5, 100.4])) == [None, None, None, None, "trailing"]


def test_short_position_rules_mirror():
    assert _reasons(_feed(_open("sell"), [100.0, 101.0, 101.5])) == [None, None, "sl"]
    assert _reasons(_feed(_open("sell"), [99.0, 97.0])) == [None, "tp"]
    assert _reasons(_feed(_open("sell"), [99.0, 98.0, 99.9, 100.0])) == [None, None, None, "trailing"]


def test_max_hold_minutes():
    events = _feed(_open(), [100.0] * 61)
    fired = [i for i, e in enumerate(events) if e]
    assert fired == [59]  # bar starting at +59 min ends at +60 min
    assert events[59][0].reason == "max_hold"


def test_max_hold_daily_bars():
    events = _feed(_open(ts=T0), [100.0] * 5, bar_type="daily", step=timedelta(days=1))
    assert _reasons(events) == [None, None, "max_hold", None, None]  # one exit only


def test_exit_event_fields_and_single_emission():
    pf = _open(price=100.0, corr="corr-X")
    monitor = ExitMonitor(CFG)
    events = _feed(pf, [97.0, 96.0, 95.0], monitor=monitor)
    [ev] = events[0]
    assert events[1:] == [[], []]  # pending: not re-emitted
    assert (ev.correlation_id, ev.reason, ev.position_side, ev.side) == ("corr-X", "sl", "long", "sell")
    assert ev.qty == 10 and ev.entry_price == 100.0 and ev.trigger_price == 97.0
    assert ev.entry_client_order_id == client_order_id("corr-X", "entry") and ev.entry_ts == T0


def test_exit_goes_through_router_and_closes_the_position():
    pf = _open(price=100.0, corr="corr-Y")
    sim = PaperSimulator(slippage_bps=5, fee_per_order=1)
    monitor = ExitMonitor(CFG)
    [[ev]] = _feed(pf, [104.0], monitor=monitor)
    res = OrderRouter(sim).route_exit(ev)
    assert res.request.client_order_id == client_order_id("corr-Y", "exit")
    assert OrderRouter(sim).route_exit(ev).order == res.order and sim.submissions == 1  # idempotent
    [fill] = sim.on_bar(_bar(T0 + timedelta(minutes=1), 104.5))
    assert fill.correlation_id == "corr-Y" and fill.intent == "exit" and fill.side == "sell"
    realised = pf.apply_fill(fill)
    assert pf.position("AAPL") is None
    assert realised == pytest.approx(10 * (104.5 * 0.9995 - 100.0))
    assert monitor.on_bar(_bar(T0 + timedelta(minutes=1), 104.5), pf) == []
