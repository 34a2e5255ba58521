"""The live loop's core components on their in-memory stores, without Kafka or PostgreSQL:
risk (``RiskDesk``, with its exit rules ``ExitWatch``), the signal scorer (``BarScorer``) and
the forecaster (``Forecaster``). The same objects run in the live services over the
PostgreSQL stores (tests/test_live_loop.py and the parity tests)."""
from __future__ import annotations

import contextlib
import math
from datetime import UTC, date, datetime, timedelta

import pytest

from awet_dagster.contracts import ExecutionReport, FeatureEvent
from awet_dagster.execution.ids import client_order_id
from awet_dagster.execution.ledger import StoredFill, StoredOrder
from awet_dagster.inference import StaticPredictorSource
from awet_dagster.inference.forecaster import Forecaster, InMemoryPredictionStore
from awet_dagster.risk.desk import RiskDesk
from awet_dagster.risk.state import KillSwitchState
from awet_dagster.risk.store import InMemoryRiskStore
from awet_dagster.signals.scorer import BarScorer, InMemorySignalStore
from awet_dagster.sources.sample import SampleSource
from awet_dagster.streaming import FeatureEngine, bars_to_events
from awet_dagster.streaming.events import event_to_bar
from awet_dagster.streaming.outputs import PublishFirst
from awet_dagster.streaming.time_guard import TimeGuard, TimeLimits
from tests.test_live_loop import _bar, _tradable_signal


@pytest.fixture
def cfg(test_config_for, tmp_path):
    return test_config_for(tmp_path / "home")


def _guard(cfg) -> TimeGuard:
    return TimeGuard(TimeLimits.from_config(cfg))


def _history(symbol: str, end: datetime, n: int) -> list[dict]:
    return [event_to_bar(_bar(symbol, end - timedelta(days=n - i), 100 * (1 + 0.01 * math.sin(i))))
            for i in range(n)]


# --------------------------------------------------------------------------- risk
def test_risk_desk_decides_once_audits_before_publishing_and_replays_a_redelivered_signal(cfg):
    ts = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    store = InMemoryRiskStore(bars={"R": _history("R", ts, cfg.risk.cvar_lookback_bars + 1)})
    desk = RiskDesk(cfg, store, approved_topic="ok", rejected_topic="no", exits_topic="exits", guard=_guard(cfg))
    desk.start()
    sig = _tradable_signal("R", ts)
    desk.prepare([(sig, ("scored", 0))])
    [out] = desk.handle(sig)
    assert out.topic == "ok" and out.event.approved, out.event.reasons
    assert store.audits == []  # written at the batch's checkpoint, before its decisions go out
    assert desk.write_audit() == 1 and store.audits[0].details["decision"]["event_id"] == out.event.event_id

    again = RiskDesk(cfg, store, approved_topic="ok", rejected_topic="no", exits_topic="exits", guard=_guard(cfg))  # a restart
    again.start()
    again.prepare([(sig, ("scored", 0))])
    [replayed] = again.handle(sig)
    assert replayed.event == out.event and again.counters["replayed"] == 1 and again.counters["evaluated"] == 0


def test_risk_desk_rejects_while_the_stored_kill_switch_is_tripped(cfg):
    ts = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    store = InMemoryRiskStore(bars={"K": _history("K", ts, cfg.risk.cvar_lookback_bars + 1)})
    store.risk_state.set_kill_switch(KillSwitchState(True, "operator", ts))
    desk = RiskDesk(cfg, store, approved_topic="ok", rejected_topic="no", exits_topic="exits", guard=_guard(cfg))
    desk.start()
    [out] = desk.handle(_tradable_signal("K", ts))
    assert out.topic == "no" and not out.event.approved
    assert any("kill" in r.lower() for r in out.event.reasons), out.event.reasons


def _bar_signal(symbol: str, ts: datetime, open_: float, volume: float, tradable: bool = True):
    """A scored bar with the open and volume the shadow venue fills at."""
    sig = _tradable_signal(symbol, ts).model_copy(update={"open": open_, "volume": volume})
    return sig if tradable else sig.model_copy(update={"ensemble_direction": "neutral"})


def _report(d, ts: datetime, filled: float, price: float, status: str = "filled", fee: float = 0.0):
    return ExecutionReport(correlation_id=d.correlation_id, client_order_id=client_order_id(d.correlation_id, "entry"),
                           symbol=d.symbol, side=d.side, intent="entry", ts=ts, status=status, qty=d.qty,
                           filled_qty=filled, avg_price=price, fee=fee, venue="paper", source_event_id=d.event_id,
                           dry_run=False)


def _approve(cfg, symbol: str, t1: datetime) -> tuple[RiskDesk, object]:
    desk = RiskDesk(cfg, InMemoryRiskStore(bars={symbol: _history(symbol, t1, cfg.risk.cvar_lookback_bars + 1)}),
                    approved_topic="ok", rejected_topic="no", exits_topic="exits", guard=_guard(cfg))
    desk.start()
    [approved] = desk.handle(_bar_signal(symbol, t1, 99.0, 1_000_000))
    assert approved.event.approved, approved.event.reasons
    return desk, approved.event


def test_risk_books_the_paper_fill_of_its_approval_at_the_next_bar_without_a_report_and_the_report_after_is_a_duplicate(cfg):
    """No fill wait: the desk's shadow of the paper venue fills the entry at the next bar's open
    (slippage, fee), exactly as the simulator of execution and of run_backtest does."""
    t1 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    t2 = t1 + timedelta(days=1)
    desk, d = _approve(cfg, "P", t1)
    coid = client_order_id(d.correlation_id, "entry")
    assert desk.ledger.pending_order("P") and desk.ledger.portfolio.position("P") is None
    desk.handle(_bar_signal("P", t2, 101.0, 1_000_000, tradable=False))
    pos = desk.ledger.portfolio.position("P")
    ex = cfg.execution
    assert pos is not None and pos.qty == d.qty
    assert pos.avg_price == pytest.approx(101.0 * (1 + ex.slippage_bps / 1e4))
    assert desk.ledger.portfolio.cash == pytest.approx(cfg.risk.initial_equity - d.qty * pos.avg_price
                                                       - ex.fee_per_order)
    assert not desk.ledger.pending_order("P") and coid not in desk.ledger.outstanding
    # Execution's report of the same fill comes later: booked once, not twice.
    desk.on_side_event(_report(d, t2, d.qty, pos.avg_price, fee=ex.fee_per_order))
    desk.handle(_bar_signal("P", t2 + timedelta(days=1), 102.0, 1_000_000, tradable=False))
    assert desk.ledger.portfolio.position("P").qty == d.qty and desk.shadow.counters["fills"] == 1


def test_a_report_ahead_of_risk_is_taken_over_by_the_shadow_and_not_filled_twice(cfg):
    """Execution saw bar t2 first (the common case: it reads market.raw, risk three hops later)."""
    t1 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    t2 = t1 + timedelta(days=1)
    desk, d = _approve(cfg, "Q", t1)
    half = float(d.qty // 2)
    desk.on_side_event(_report(d, t2, half, 101.05, status="partially_filled", fee=1.0))
    desk.handle(_bar_signal("Q", t2, 101.0, 1_000_000, tradable=False))
    assert desk.ledger.portfolio.position("Q").qty == half  # the report's fill, not the shadow's too
    assert desk.shadow.counters == {"fills": 0, "synced": 1, "mismatches": 0, "restored": 0}
    desk.handle(_bar_signal("Q", t2 + timedelta(days=1), 102.0, 1_000_000, tradable=False))
    assert desk.ledger.portfolio.position("Q").qty == d.qty  # the rest on the next bar, by the shadow
    assert desk.shadow.counters["fills"] == 1


def test_the_participation_cap_splits_the_shadow_fill_like_the_simulator_and_a_restart_resumes_it(cfg):
    t1 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    t2, t3 = t1 + timedelta(days=1), t1 + timedelta(days=2)
    desk, d = _approve(cfg, "V", t1)
    cap = math.floor(cfg.execution.max_participation * 100)
    assert d.qty > cap, "the order must be larger than one bar's cap"
    desk.handle(_bar_signal("V", t2, 100.0, 100, tradable=False))
    assert desk.ledger.portfolio.position("V").qty == cap and desk.ledger.pending_order("V")
    desk.handle(_bar_signal("V", t2, 100.0, 100, tradable=False))  # redelivered: nothing fills twice
    assert desk.ledger.portfolio.position("V").qty == cap
    # A restart from the stored rows (what execution wrote): the rest fills after t2, not on t2 again.
    coid = client_order_id(d.correlation_id, "entry")
    fills = [StoredFill(coid, "V", "buy", cap, 100.05, 1.0, t2, d.correlation_id, "entry", None)]
    orders = [StoredOrder(coid, "V", "partially_filled", d.correlation_id, d.qty, "buy", "entry", t1, 100.0)]
    again = RiskDesk(cfg, InMemoryRiskStore(fills=fills, orders=orders), approved_topic="ok", rejected_topic="no",
                     exits_topic="exits", guard=_guard(cfg))
    again.start()
    assert again.shadow.counters["restored"] == 1
    again.handle(_bar_signal("V", t2, 100.0, 1_000_000, tradable=False))
    assert again.ledger.portfolio.position("V").qty == cap
    again.handle(_bar_signal("V", t3, 100.0, 1_000_000, tradable=False))
    assert again.ledger.portfolio.position("V").qty == d.qty and not again.ledger.pending_order("V")


def test_at_alpaca_an_order_whose_report_did_not_come_in_time_counts_in_flight_until_it_comes(cfg):
    t1 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    t2 = t1 + timedelta(days=1)
    desk, d = _approve(_alpaca(cfg), "A", t1)
    assert desk.shadow is None  # a real venue's fills cannot be computed
    desk.handle(_bar_signal("A", t2, 101.0, 1_000_000, tradable=False))  # no side reader: the wait ends at once
    assert desk.counters["fill_wait_timeouts"] == 1 and desk.ledger.portfolio.position("A") is None
    assert desk.ledger.pending_order("A") and desk.ledger.pending_exposure()["A"] == pytest.approx(d.notional)
    desk.on_side_event(_report(d, t2, d.qty, 101.2).model_copy(update={"venue": "alpaca"}))
    desk.handle(_bar_signal("A", t2 + timedelta(days=1), 102.0, 1_000_000, tradable=False))
    assert desk.ledger.portfolio.position("A").qty == d.qty and not desk.ledger.pending_order("A")


def test_a_report_from_another_venue_stops_the_shadow_instead_of_booking_fills_twice(cfg, caplog):
    """Risk configured for paper while execution trades at Alpaca: the first such report turns
    the shadow off (logged); the fills come from the reports from then on."""
    t1 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    t2 = t1 + timedelta(days=1)
    desk, d = _approve(cfg, "M", t1)
    desk.on_side_event(_report(d, t2, d.qty, 101.0).model_copy(update={"venue": "alpaca"}))
    assert desk.shadow is None and "execution.broker here is paper" in caplog.text
    desk.handle(_bar_signal("M", t2, 100.0, 1_000_000, tradable=False))
    assert desk.ledger.portfolio.position("M").qty == d.qty
    assert desk.ledger.portfolio.position("M").avg_price == pytest.approx(101.0)  # the venue's price


class _RecordingSide:
    """A side reader whose waits are counted (and answered ``done()`` at once)."""

    def __init__(self) -> None:
        self.waits = 0

    def lock(self):
        return contextlib.nullcontext()

    def wait(self, done, timeout_s: float) -> bool:
        self.waits += 1
        return done()

    def stopping(self) -> bool:
        return False


def _alpaca(cfg):
    return cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"broker": "alpaca"})})


def test_at_alpaca_risk_asks_to_publish_first_instead_of_waiting_for_the_fill_of_its_own_unpublished_approval(cfg):
    cfg = _alpaca(cfg)
    t1 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    t2 = t1 + timedelta(days=1)
    store = InMemoryRiskStore(bars={"P": _history("P", t1, cfg.risk.cvar_lookback_bars + 1)})
    side = _RecordingSide()
    desk = RiskDesk(cfg, store, approved_topic="ok", rejected_topic="no", exits_topic="exits", guard=_guard(cfg),
                    side=side)
    desk.start()
    first, second = _tradable_signal("P", t1), _tradable_signal("P", t2)
    desk.prepare([(first, ("scored", 0)), (second, ("scored", 0))])
    [approved] = desk.handle(first)
    assert approved.event.approved, approved.event.reasons
    # The approval is held until the batch's audit is written: its fill cannot come yet.
    with pytest.raises(PublishFirst, match="decided in this batch"):
        desk.handle(second)
    assert side.waits == 0 and desk.counters["signals"] == 1 and desk.counters["fill_wait_timeouts"] == 0
    assert desk.write_audit() == 1  # the bus's before_produce, then the approval is published
    d = approved.event
    desk.on_side_event(_report(d, t2, d.qty, 100.0).model_copy(update={"venue": "alpaca"}))
    desk.prepare([(second, ("scored", 0))])  # the bus hands it back as the next batch
    [out] = desk.handle(second)
    assert side.waits == 0 and desk.counters["signals"] == 2 and desk.counters["fill_wait_timeouts"] == 0
    assert desk.ledger.portfolio.position("P") is not None  # decided with the fill booked
    assert out.topic in ("ok", "no")


# --------------------------------------------------------------------------- exits
def _quiet_signal(symbol: str, ts: datetime, price: float):
    """A scored bar that asks for no position (risk marks it and checks exits, decides nothing)."""
    return _tradable_signal(symbol, ts).model_copy(update={"ensemble_direction": "neutral", "price": price,
                                                           "reference_price": price})


def test_risk_checks_exits_on_its_own_book_and_fires_again_after_a_rejected_exit_order(cfg):
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    fill = StoredFill("coid-e", "E", "buy", 10, 100.0, 0.0, t0, "corr-e", "entry", None)
    desk = RiskDesk(cfg, InMemoryRiskStore(fills=[fill]), approved_topic="ok", rejected_topic="no",
                    exits_topic="exits", guard=_guard(cfg))
    desk.start()
    drop = 100.0 * (1 - cfg.exits.stop_loss_pct) - 1.0
    [first] = desk.handle(_quiet_signal("E", t0 + timedelta(days=1), drop))
    assert first.topic == "exits" and first.event.reason == "sl" and first.event.correlation_id == "corr-e"
    assert client_order_id("corr-e", "exit") in desk.ledger.outstanding  # its fill is due on the next bar
    desk.on_side_event(ExecutionReport(
        correlation_id="corr-e", client_order_id=client_order_id("corr-e", "exit"), symbol="E", side="sell",
        intent="exit", ts=t0 + timedelta(days=1), status="rejected", qty=10.0, filled_qty=0.0, venue="paper",
        source_event_id=first.event.event_id, dry_run=False))
    [again] = desk.handle(_quiet_signal("E", t0 + timedelta(days=2), drop))
    assert again.event.reason == "sl" and desk.exits.counters["released"] == 1
    assert desk.handle(_quiet_signal("E", t0 + timedelta(days=2), drop)) == []  # a redelivered bar: not twice


def test_an_exit_fills_on_the_next_bar_of_its_symbol_in_the_same_batch_without_publishing_first(cfg):
    """The exit order of bar t fills on bar t+1 at the shadow venue, as in run_backtest: the
    desk no longer hands the rest of a batch back to wait for execution's report."""
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    fill = StoredFill("coid-f", "F", "buy", 10, 100.0, 0.0, t0, "corr-f", "entry", None)
    desk = RiskDesk(cfg, InMemoryRiskStore(fills=[fill]), approved_topic="ok", rejected_topic="no",
                    exits_topic="exits", guard=_guard(cfg))
    desk.start()
    drop = 100.0 * (1 - cfg.exits.stop_loss_pct) - 1.0
    s1 = _quiet_signal("F", t0 + timedelta(days=1), drop).model_copy(update={"open": drop, "volume": 1_000.0})
    s2 = _quiet_signal("F", t0 + timedelta(days=2), drop).model_copy(update={"open": drop - 1, "volume": 1_000.0})
    desk.prepare([(s1, ("scored", 0)), (s2, ("scored", 0))])
    [ex] = desk.handle(s1)
    assert ex.topic == "exits" and ex.event.qty == 10
    assert desk.handle(s2) == []
    assert desk.ledger.portfolio.position("F") is None and not desk.ledger.pending_order("F")
    assert desk.ledger.portfolio.realised_pnl == pytest.approx(10 * ((drop - 1) * (1 - cfg.execution.slippage_bps / 1e4)
                                                                    - 100.0))


# --------------------------------------------------------------------------- signals
def test_a_restarted_scorer_warms_up_from_stored_bars_and_scores_like_the_running_one(cfg):
    bars = SampleSource().fetch(["SPY"], date(2019, 1, 1), date(2019, 6, 30), "daily")
    events = list(bars_to_events(bars))
    cut = len(events) - 10

    def scorer(store: InMemorySignalStore) -> BarScorer:
        return BarScorer(cfg, store, output_topic="scored", guard=_guard(cfg), alpha_source="internal")

    running = scorer(InMemorySignalStore())
    scores = [running.handle(e)[0].event for e in events]
    restarted = scorer(InMemorySignalStore(bars={"SPY": [event_to_bar(e) for e in events[:cut]]}))
    restarted.prepare({("SPY", "daily"): events[cut].ts})
    again = [restarted.handle(e)[0].event for e in events[cut:]]
    assert restarted.counters["warmup_bars"] == min(cut, restarted.warmup_bars)
    assert [(s.event_id, s.signal_score, s.ensemble_direction) for s in again] == \
        [(s.event_id, s.signal_score, s.ensemble_direction) for s in scores[cut:]]
    assert restarted.flush() == 10 and len(restarted.db.signals) == 10


# --------------------------------------------------------------------------- inference
def test_forecaster_warms_a_new_symbol_up_from_stored_bars_and_forecasts_its_first_event(cfg):
    class Pre:
        feature_columns, encoder_length, horizons, quantiles = ("ret_1",), 3, (1,), (0.1, 0.5, 0.9)

    class Echo:
        preprocessing = Pre()

        def predict(self, windows):
            return {n: {1: {0.1: w[-1, 0] - 0.01, 0.5: w[-1, 0], 0.9: w[-1, 0] + 0.01}} for n, w in windows.items()}

    bars = SampleSource().fetch(["SPY"], date(2019, 1, 1), date(2019, 3, 31), "daily")
    events = list(bars_to_events(bars))
    engine = FeatureEngine(None, warmup_bars=0)
    feats: list[FeatureEvent] = [f for f in (engine.on_bar(e) for e in events) if f is not None]
    last = feats[-1]
    store = InMemoryPredictionStore(bars={"SPY": [event_to_bar(e) for e in events[:-1]]})
    inf = Forecaster(cfg, StaticPredictorSource("m:1", Echo()), store, output_topic="pred")
    inf.prepare([(("eng", 0, 0), last)])
    [out] = inf.handle(("eng", 0, 0))
    assert out.event.status == "forecast" and inf.counters["warmups"] == 1
    assert out.event.quantiles[1].q50 == pytest.approx(math.expm1(last.features["ret_1"]))
    assert inf.store() == 1 and list(store.predictions) == [out.event.event_id]
