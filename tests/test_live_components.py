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
from awet_dagster.execution.ledger import StoredFill
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


def test_risk_asks_to_publish_first_instead_of_waiting_for_the_fill_of_its_own_unpublished_approval(cfg):
    t1 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    t2 = t1 + timedelta(days=1)
    store = InMemoryRiskStore(bars={"P": _history("P", t1, cfg.risk.cvar_lookback_bars + 1)})
    side = _RecordingSide()
    desk = RiskDesk(cfg, store, approved_topic="ok", rejected_topic="no", exits_topic="exits", guard=_guard(cfg), side=side)
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
    desk.on_side_event(ExecutionReport(  # execution fills it at the next bar's open
        correlation_id=d.correlation_id, client_order_id=client_order_id(d.correlation_id, "entry"), symbol="P",
        side=d.side, intent="entry", ts=t2, status="filled", qty=d.qty, filled_qty=d.qty, avg_price=100.0,
        venue="paper", source_event_id=d.event_id, dry_run=False))
    desk.prepare([(second, ("scored", 0))])  # the bus hands it back as the next batch
    [out] = desk.handle(second)
    assert desk.counters["signals"] == 2 and desk.counters["fill_wait_timeouts"] == 0
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


def test_an_exit_in_a_batch_makes_the_next_bar_of_its_symbol_publish_first(cfg):
    """The exit order of bar t fills on bar t+1: while it is held in the batch, t+1 cannot wait for it."""
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    fill = StoredFill("coid-f", "F", "buy", 10, 100.0, 0.0, t0, "corr-f", "entry", None)
    desk = RiskDesk(cfg, InMemoryRiskStore(fills=[fill]), approved_topic="ok", rejected_topic="no",
                    exits_topic="exits", guard=_guard(cfg), side=_RecordingSide())
    desk.start()
    drop = 100.0 * (1 - cfg.exits.stop_loss_pct) - 1.0
    s1, s2 = _quiet_signal("F", t0 + timedelta(days=1), drop), _quiet_signal("F", t0 + timedelta(days=2), drop)
    desk.prepare([(s1, ("scored", 0)), (s2, ("scored", 0))])
    [ex] = desk.handle(s1)
    assert ex.topic == "exits"
    with pytest.raises(PublishFirst, match="decided in this batch"):
        desk.handle(s2)


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
