"""Risk engine and portfolio accounting."""
from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from awet_dagster.config.schema import RiskConfig
from awet_dagster.contracts import ComponentScores, FilterFailure, Quantiles, ScoredSignal
from awet_dagster.risk import (
    Fill,
    InMemoryRiskStateStore,
    Portfolio,
    ReturnHistory,
    RiskEngine,
    historical_cvar,
    sector_of,
)

T0 = datetime(2021, 1, 4, 14, 30, tzinfo=UTC)


def _signal(symbol="AAPL", ts=T0, direction="long", price=100.0, regime_scale=1.0, failed=(),
            confidence=1.0) -> ScoredSignal:
    """A signal as the engine makes it: ensemble_confidence = |score| x the regime's scale."""
    score = confidence if direction == "long" else -confidence
    return ScoredSignal(
        correlation_id=f"c-{symbol}-{ts.isoformat()}", ticker=symbol, ts=ts, ensemble_direction=direction,
        tft_direction="long", tft_confidence=0.5, tft_q50=0.01, signal_score=score,
        ensemble_confidence=min(1.0, confidence * regime_scale), calibrated_prob=0.6, calibrator="platt:tft:m",
        regime="bull", regime_scale=regime_scale, components=ComponentScores(tft=0.8), ensemble_weights={"tft": 1.0},
        horizon=1, model_version="m", quantiles=Quantiles(q10=-0.01, q50=0.01, q90=0.03),
        filters_failed=tuple(FilterFailure(name=n, reason="x") for n in failed), price=price, reference_price=price)


def _fill(symbol, side, qty, price, ts=T0, corr="c", fee=0.0, intent="entry"):
    return Fill(f"id-{corr}-{side}", symbol, side, qty, price, fee, ts, corr, intent)


def _engine(store=None, portfolio=None, **cfg) -> RiskEngine:
    base = dict(max_orders_per_minute=100, max_orders_per_symbol_day=100, cooldown_s=0)
    return RiskEngine(RiskConfig(**{**base, **cfg}), portfolio or Portfolio(100_000), store or InMemoryRiskStateStore())


def _warm(engine: RiskEngine, symbols=("AAPL",), n=40, vol=0.01, seed=1, end=T0):
    """Feed `n` past daily bars per symbol (random walk) ending just before `end`."""
    rng = np.random.default_rng(seed)
    for s in symbols:
        price = 100.0
        for i in range(n):
            price *= 1 + rng.normal(0, vol)
            engine.history.update(s, end - timedelta(days=n - i), price)
        engine.portfolio.mark(s, 100.0)


# ------------------------------------------------------------------ portfolio
def test_portfolio_accounting_avg_price_realised_and_flip():
    pf = Portfolio(10_000)
    pf.apply_fill(_fill("A", "buy", 10, 100, fee=1))
    pf.apply_fill(_fill("A", "buy", 10, 110, fee=1))
    assert pf.position("A").avg_price == 105 and pf.position("A").qty == 20
    assert pf.apply_fill(_fill("A", "sell", 5, 120, fee=1)) == pytest.approx(75)
    pf.mark("A", 100)
    assert pf.unrealised_pnl == pytest.approx(15 * -5)
    assert pf.equity == pytest.approx(10_000 + 75 - 75 - 3)
    realised = pf.apply_fill(_fill("A", "sell", 20, 90))  # close 15, open short 5
    assert realised == pytest.approx(15 * -15)
    assert pf.position("A").qty == -5 and pf.position("A").avg_price == 90
    pf.mark("A", 80)
    assert pf.position("A").peak_price == 80  # best price of a short is the lowest
    assert pf.equity_hwm >= 10_000


def test_portfolio_equity_and_exposure_follow_every_fill_and_mark():
    """Equity, gross exposure, unrealised PnL and exposure per group (sector) are summed once
    per change, not per read: every fill, mark and cash change shows in the next read, equal
    to the sum done from scratch."""
    rng = np.random.default_rng(3)
    pf = Portfolio(100_000)

    def from_scratch() -> tuple[float, float, float, dict[str, float]]:
        mv = [p.qty * p.last_price for p in pf.positions.values()]
        by_group: dict[str, list[float]] = {}
        for s, p in pf.positions.items():
            by_group.setdefault(group(s), []).append(abs(p.qty * p.last_price))
        return (pf.cash + sum(mv), sum(abs(v) for v in mv),
                sum(p.qty * (p.last_price - p.avg_price) for p in pf.positions.values()),
                {g: sum(v) for g, v in by_group.items()})

    def group(symbol: str) -> str:
        return "even" if int(symbol[1:]) % 2 == 0 else "odd"

    symbols = [f"S{i}" for i in range(12)]
    for step in range(400):
        sym = symbols[int(rng.integers(len(symbols)))]
        if rng.random() < 0.4:
            side = "buy" if rng.random() < 0.5 else "sell"
            pf.apply_fill(_fill(sym, side, float(rng.integers(1, 20)), float(rng.uniform(50, 150)),
                                corr=f"c{step}", fee=1.0))
        else:
            pf.mark(sym, float(rng.uniform(50, 150)))
        equity, gross, unrealised, by_group = from_scratch()
        got = pf.exposure_by(group)
        assert pf.equity == pytest.approx(equity, rel=1e-12)  # updated per mark: rounding only
        assert pf.gross_exposure == pytest.approx(gross, rel=1e-12, abs=1e-9)
        assert pf.unrealised_pnl == pytest.approx(unrealised, rel=1e-9, abs=1e-6)
        for g in got.keys() | by_group.keys():  # a group whose positions all closed reads ~0
            assert got.get(g, 0.0) == pytest.approx(by_group.get(g, 0.0), rel=1e-12, abs=1e-9)
        if not step % 40:  # right after a fill the totals are summed from scratch: exact
            pf.apply_fill(_fill(sym, "buy", 1.0, 100.0, corr=f"x{step}"))
            assert (pf.equity, pf.gross_exposure, pf.unrealised_pnl) == from_scratch()[:3]
    pf.cash += 1_000.0  # the attribute is public: a direct change is seen too
    assert pf.equity == pytest.approx(from_scratch()[0], rel=1e-12)
    assert pf.drawdown == max(0.0, 1.0 - pf.equity / pf.equity_hwm)


def test_portfolio_totals_do_not_drift_over_many_marks():
    """Hundreds of thousands of marks on a few hundred positions: the running totals stay
    within rounding of a from-scratch sum (they are re-summed every RESYNC_EVERY marks)."""
    rng = np.random.default_rng(5)
    pf = Portfolio(1_000_000)
    symbols = [f"S{i}" for i in range(300)]
    for i, s in enumerate(symbols):
        pf.apply_fill(_fill(s, "buy" if i % 3 else "sell", float(1 + i % 7), 100.0, corr=s))
    prices = rng.uniform(20, 300, size=200_500)  # not a multiple of RESYNC_EVERY
    picks = rng.integers(0, len(symbols), size=prices.size)
    for k, j in zip(picks, prices, strict=True):
        pf.mark(symbols[k], float(j))
    mv = [p.qty * p.last_price for p in pf.positions.values()]
    assert pf.equity == pytest.approx(pf.cash + sum(mv), rel=1e-12)
    assert pf.gross_exposure == pytest.approx(sum(abs(v) for v in mv), rel=1e-12)


# ------------------------------------------------------------------ sizing and caps
def test_size_is_two_percent_of_equity_times_the_signals_confidence_floored():
    eng = _engine()
    _warm(eng)
    d = eng.evaluate(_signal(price=33.0, regime_scale=0.5)).decision
    assert d.approved and d.qty == math.floor(100_000 * 0.02 * 0.5 / 33.0)
    # The regime reaches the size through ensemble_confidence only (applied once, not twice).
    eng = _engine()
    _warm(eng)
    out = eng.evaluate(_signal(price=33.0, confidence=0.6, regime_scale=0.7))
    assert out.decision.qty == math.floor(100_000 * 0.02 * 0.6 * 0.7 / 33.0)
    sizing = out.audit["sizing"]
    assert sizing["ensemble_confidence"] == pytest.approx(0.42) and sizing["target_notional"] == pytest.approx(840.0)
    assert d.take_profit == pytest.approx(33 * 1.03) and d.stop_loss == pytest.approx(33 * 0.985)


def test_symbol_override_and_symbol_cap_clip():
    eng = _engine(symbol_overrides={"AAPL": 0.5})
    _warm(eng)
    out = eng.evaluate(_signal())
    assert out.decision.approved and out.decision.notional == pytest.approx(10_000)  # clipped 50k -> 10k
    assert out.audit["sizing"]["clipped_by"] == ["max_symbol_exposure"]


def test_total_exposure_cap():
    eng = _engine(max_total_exposure=50_000)
    for i, s in enumerate(["SPY", "QQQ", "IWM", "EEM", "BAC"]):
        eng.portfolio.apply_fill(_fill(s, "buy", 99, 100, corr=str(i)))  # $9.9k each = $49.5k
    _warm(eng, ("AAPL", "SPY", "QQQ", "IWM", "EEM", "BAC"))
    out = eng.evaluate(_signal())
    assert out.decision.approved and out.decision.qty == 5  # $500 of room left
    assert "max_total_exposure" in out.audit["sizing"]["clipped_by"]


def test_sector_cap_20pct():
    assert sector_of("GOOGL") == "tech" and sector_of("BAC") == "financials" and sector_of("ZZZZ") == "unknown"
    eng = _engine(max_total_exposure=1e6, max_symbol_exposure=1e6)
    eng.portfolio.apply_fill(_fill("IBM", "buy", 100, 100, corr="1"))
    eng.portfolio.apply_fill(_fill("GOOG", "buy", 100, 100, corr="2"))  # $20k tech = 20% of equity
    _warm(eng, ("AAPL", "IBM", "GOOG", "BAC"))
    rej = eng.evaluate(_signal("AAPL"))
    assert not rej.decision.approved and "sector_cap" in rej.audit["sizing"]["clipped_by"]
    assert any("size below one share" in r for r in rej.decision.reasons)
    assert eng.evaluate(_signal("BAC")).decision.approved  # another sector is fine


# ------------------------------------------------------------------ kill switch and loss limits
def test_kill_switch_trips_at_10pct_and_persists_until_operator_reset():
    store = InMemoryRiskStateStore()
    pf = Portfolio(100_000)
    eng = _engine(store, pf, max_total_exposure=1e6)
    eng.on_bar("SPY", T0, 100.0)  # session anchor = 100k
    pf.apply_fill(_fill("SPY", "buy", 1000, 100.0))
    assert not eng.on_bar("SPY", T0 + timedelta(minutes=1), 91.0).tripped  # -9%
    assert eng.on_bar("SPY", T0 + timedelta(minutes=2), 89.9).tripped  # -10.1%
    # recovers intraday, next sessions, and a restarted engine on the same store: still tripped
    eng.on_bar("SPY", T0 + timedelta(minutes=3), 100.0)
    restarted = _engine(store, pf, max_total_exposure=1e6)
    _warm(restarted, ("AAPL", "SPY"), end=T0 + timedelta(days=3))
    out = restarted.evaluate(_signal(ts=T0 + timedelta(days=3)))
    assert not out.decision.approved and "kill switch tripped" in out.decision.reasons[0]
    with pytest.raises(ValueError):
        restarted.reset_kill_switch("", "oops", T0)
    state = restarted.reset_kill_switch("alice", "reviewed the loss", T0 + timedelta(days=3))
    assert not state.tripped and state.reset_by == "alice"
    after = restarted.evaluate(_signal(ts=T0 + timedelta(days=3, minutes=5))).decision
    assert after.approved, after.reasons


def test_daily_loss_limit_from_fills_and_marks():
    pf = Portfolio(100_000)
    eng = _engine(portfolio=pf)
    _warm(eng, ("AAPL", "SPY"))
    eng.on_bar("SPY", T0, 100.0)  # anchor 100k
    pf.apply_fill(_fill("SPY", "buy", 1000, 100.0, corr="s"))
    pf.apply_fill(_fill("SPY", "sell", 500, 97.0, corr="s", intent="exit"))  # realised -1500
    eng.on_bar("SPY", T0 + timedelta(minutes=1), 93.0)  # unrealised -3500: total -5%
    out = eng.evaluate(_signal(ts=T0 + timedelta(minutes=2)))
    assert not out.decision.approved
    assert any(r.startswith("session loss 5.00%") for r in out.decision.reasons)
    assert out.audit["portfolio"]["realised_pnl"] == pytest.approx(-1500)
    # a new session re-anchors at the current equity: entries allowed again
    nxt = T0 + timedelta(days=1)
    eng.on_bar("SPY", nxt, 93.0)
    assert eng.evaluate(_signal(ts=nxt + timedelta(minutes=1))).decision.approved


def test_max_drawdown_blocks_entries():
    pf = Portfolio(100_000)
    eng = _engine(portfolio=pf, max_drawdown=0.03, daily_loss_limit=0.5, kill_switch_loss=0.9)
    _warm(eng, ("AAPL", "SPY"))
    pf.apply_fill(_fill("SPY", "buy", 1000, 100.0))
    eng.on_bar("SPY", T0, 104.0)
    eng.on_bar("SPY", T0 + timedelta(days=1), 100.0)  # 100k from a 104k high: -3.8%
    out = eng.evaluate(_signal(ts=T0 + timedelta(days=1)))
    assert not out.decision.approved and any(r.startswith("drawdown") for r in out.decision.reasons)


# ------------------------------------------------------------------ CVaR
def test_historical_cvar_matches_manual_and_moves_with_positions():
    hist = ReturnHistory(250)
    rng = np.random.default_rng(0)
    calm, wild = 100.0, 100.0
    for i in range(101):
        ts = T0 + timedelta(days=i)
        hist.update("CALM", ts, calm)
        hist.update("WILD", ts, wild)
        calm *= 1 + rng.normal(0, 0.005)
        wild *= 1 + rng.normal(0, 0.04)
    r_wild = np.array(list(hist.returns("WILD").values()))
    manual = np.mean(np.sort(-(10_000 * r_wild) / 100_000)[::-1][:5])  # worst 5 of 100
    res = historical_cvar({"WILD": 10_000}, hist, 100_000)
    assert res.observations == 100 and res.cvar == pytest.approx(manual)
    calm_only = historical_cvar({"CALM": 10_000}, hist, 100_000).cvar
    both = historical_cvar({"CALM": 10_000, "WILD": 10_000}, hist, 100_000).cvar
    hedged = historical_cvar({"CALM": 10_000, "WILD": -10_000}, hist, 100_000).cvar
    assert calm_only < res.cvar and len({calm_only, res.cvar, both, hedged}) == 4
    assert historical_cvar({}, hist, 100_000).cvar == 0.0


def test_cvar_limit_and_insufficient_history_reject():
    eng = _engine(cvar_limit=0.0005)
    _warm(eng, ("AAPL",), vol=0.2)  # very volatile history
    out = eng.evaluate(_signal())
    assert not out.decision.approved and any(r.startswith("CVaR-95") for r in out.decision.reasons)
    assert out.decision.metrics.cvar_95 > 0.0005
    fresh = _engine()
    out2 = fresh.evaluate(_signal())
    assert not out2.decision.approved and "CVaR not computable" in out2.decision.reasons[-1]


def test_cvar_of_decision_depends_on_held_positions():
    eng = _engine()
    _warm(eng, ("AAPL", "BAC"), vol=0.03)
    before = eng.evaluate(_signal("AAPL")).decision.metrics.cvar_95
    eng.portfolio.apply_fill(_fill("BAC", "buy", 90, 100.0, corr="b"))
    after = eng.evaluate(_signal("AAPL", ts=T0 + timedelta(minutes=5))).decision.metrics.cvar_95
    assert after > before


def test_cvar_counts_entries_in_flight_like_the_same_positions_filled():
    """An entry accepted but not reported filled weighs in the book's CVaR as the filled position
    would (found: a late-reporting venue's risk approved what the paper path rejected)."""
    filled, flight = _engine(), _engine()
    for eng in (filled, flight):
        _warm(eng, ("AAPL", "BAC", "IBM"), vol=0.03)
    filled.portfolio.apply_fill(_fill("BAC", "buy", 90, 100.0, corr="b"))
    filled.portfolio.apply_fill(_fill("IBM", "sell", 40, 100.0, corr="i"))
    filled.portfolio.mark("BAC", 100.0)
    filled.portfolio.mark("IBM", 100.0)
    with_fills = filled.evaluate(_signal("AAPL")).decision.metrics.cvar_95
    in_flight = flight.evaluate(_signal("AAPL"), has_pending_order=False,
                                pending_exposure={"BAC": 9_000.0, "IBM": -4_000.0}).decision.metrics.cvar_95
    alone = _engine()
    _warm(alone, ("AAPL", "BAC", "IBM"), vol=0.03)
    assert in_flight == pytest.approx(with_fills)
    assert in_flight != pytest.approx(alone.evaluate(_signal("AAPL")).decision.metrics.cvar_95)


# ------------------------------------------------------------------ throttles
def test_orders_per_minute_throttle():
    eng = _engine(max_orders_per_minute=2)
    syms = ("AAPL", "BAC", "IBM", "SPY")
    _warm(eng, syms)
    res = [eng.evaluate(_signal(s, ts=T0 + timedelta(seconds=10 * i))).decision for i, s in enumerate(syms[:3])]
    assert [d.approved for d in res] == [True, True, False]
    assert "orders in the last minute" in res[2].reasons[0]
    assert eng.evaluate(_signal("SPY", ts=T0 + timedelta(seconds=61))).decision.approved


def test_per_symbol_day_and_cooldown_throttles():
    eng = _engine(max_orders_per_symbol_day=2, cooldown_s=300)
    _warm(eng)
    assert eng.evaluate(_signal(ts=T0)).decision.approved
    cool = eng.evaluate(_signal(ts=T0 + timedelta(seconds=100))).decision
    assert not cool.approved and cool.reasons[0].startswith("cooldown")
    assert eng.evaluate(_signal(ts=T0 + timedelta(seconds=400))).decision.approved
    third = eng.evaluate(_signal(ts=T0 + timedelta(seconds=800))).decision
    assert not third.approved and "orders on AAPL" in third.reasons[0]
    assert eng.evaluate(_signal(ts=T0 + timedelta(days=1))).decision.approved


# ------------------------------------------------------------------ decision content
def test_rejections_carry_all_reasons_and_a_json_audit():
    eng = _engine(allow_short=False)
    _warm(eng)
    eng.portfolio.apply_fill(_fill("AAPL", "buy", 1, 100.0))
    out = eng.evaluate(_signal(direction="short"), has_pending_order=True)
    d = out.decision
    assert not d.approved and d.qty == 0 and d.notional == 0
    assert any("short entries are disabled" in r for r in d.reasons)
    assert any("already has an open position" in r for r in d.reasons)
    audit = json.loads(json.dumps(out.audit))
    assert audit["correlation_id"] == d.correlation_id and audit["approved"] is False
    assert {c["name"] for c in audit["checks"]} >= {"kill_switch", "signal", "daily_loss", "max_drawdown",
                                                    "throttle", "size", "cvar_95"}


def test_untradable_signal_is_rejected():
    eng = _engine()
    _warm(eng)
    d = eng.evaluate(_signal(direction="neutral", failed=("spread",))).decision
    assert not d.approved and "signal not tradable (spread: x)" in d.reasons


def test_aligned_history_follows_every_update():
    """The (cached, vectorised) scenario matrix equals a fresh alignment after any mix of updates."""
    from datetime import timedelta

    rng = np.random.default_rng(3)
    hist = ReturnHistory(30)
    t0 = datetime(2024, 1, 2, tzinfo=UTC)
    symbols = ("AAA", "BBB", "CCC")
    for step in range(300):
        sym = symbols[rng.integers(3)]
        hist.update(sym, t0 + timedelta(days=int(rng.integers(0, 3)) + step // 3), float(rng.uniform(50, 150)))
        held = tuple(sorted(set(rng.choice(symbols, size=int(rng.integers(1, 4)), replace=False))))
        stamps, matrix = hist.aligned(held)
        series = [hist.returns(s) for s in held]
        want = sorted(set.intersection(*(set(r) for r in series)))
        assert stamps.tolist() == [(t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) for t in want]
        assert matrix.shape == (len(want), len(held))
        assert np.array_equal(matrix, np.array([[r[t] for r in series] for t in want]).reshape(len(want), len(held)))


def test_entries_in_flight_count_against_the_caps_until_filled():
    """A venue that reports fills bars late (Alpaca) must not let the book exceed its caps:
    entries approved but not filled yet count as exposure from the approval on."""
    engine = _engine(max_total_exposure=5_000, max_symbol_exposure=10_000, position_size_pct=0.03,
                     cvar_limit=1.0, sector_cap_pct=1.0)
    _warm(engine, symbols=("AAPL", "MSFT", "IBM"))
    first = engine.evaluate(_signal("AAPL")).decision
    assert first.approved and first.notional == 3_000
    # The AAPL order is still working: only $2,000 of room is left for MSFT.
    second = engine.evaluate(_signal("MSFT"), pending_exposure={"AAPL": 3_000}).decision
    assert second.approved and second.notional == 2_000
    third = engine.evaluate(_signal("IBM"), pending_exposure={"AAPL": 3_000, "MSFT": 2_000}).decision
    assert not third.approved and any("size below one share" in r for r in third.reasons)
    # Without the pending view the old engine would have approved IBM in full.
    assert engine.evaluate(_signal("IBM", ts=T0 + timedelta(days=1))).decision.notional == 3_000


def test_ledger_counts_the_unfilled_rest_of_working_entries():
    from awet_dagster.contracts import ExecutionReport, OrderEvent
    from awet_dagster.execution.ledger import FillLedger

    ledger = FillLedger(100_000)
    ledger.expect("e1", "AAPL", T0, "entry", "c1", qty=10, price=100.0, side="buy")
    ledger.expect("x1", "IBM", T0, "exit", "c2", qty=5, price=50.0, side="sell")  # exits add no exposure
    assert ledger.pending_exposure() == {"AAPL": 1_000.0}
    ledger.expect("s1", "MSFT", T0, "entry", "c3", qty=2, price=50.0, side="sell")  # a short: negative
    assert ledger.pending_exposure() == {"AAPL": 1_000.0, "MSFT": -100.0}
    ledger.expect("n1", "IBM", T0, "entry", "c4", qty=1, price=50.0)  # no side: not guessed long
    with pytest.raises(ValueError, match="n1 of IBM in flight without a side"):
        ledger.pending_exposure()
    ledger.on_order(OrderEvent(correlation_id="c4", client_order_id="n1", symbol="IBM", side="buy",
                               intent="entry", qty=1, status="canceled", ts=T0, source_event_id="d4",
                               venue="alpaca", dry_run=False))
    ledger.on_order(OrderEvent(correlation_id="c3", client_order_id="s1", symbol="MSFT", side="sell",
                               intent="entry", qty=2, status="canceled", ts=T0, source_event_id="d3",
                               venue="alpaca", dry_run=False))
    assert ledger.pending_exposure() == {"AAPL": 1_000.0}
    rep = ExecutionReport(correlation_id="c1", client_order_id="e1", symbol="AAPL", side="buy", intent="entry",
                          ts=T0, status="partially_filled", filled_qty=4, avg_price=100.0, fee=0.0, venue="alpaca",
                          dry_run=False, qty=10, source_event_id="d1")
    ledger.on_report(rep)
    assert ledger.pending_exposure() == {"AAPL": 600.0}
    ledger.on_report(rep.model_copy(update={"filled_qty": 10, "status": "filled"}))
    assert ledger.pending_exposure() == {}
