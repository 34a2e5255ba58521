"""The signal service reads the Lean alphas from alpha.signals by default (#20 item 3): each
bar waits, bounded, for the lean_alpha service's bar_done mark, so the signals equal those of
the engine computing the alphas itself (the backtest's path) even when the insights arrive
after their bars. A stop during any such wait (alpha mark, forecast, fills) redelivers the bar."""
from __future__ import annotations

import threading
import time
from datetime import date

import pytest

from awet_dagster.contracts import ScoredSignal
from awet_dagster.signals import SignalEngine
from awet_dagster.streaming import AlphaBank
from awet_dagster.streaming.replay import bars_to_events
from live.services import signal
from awet_dagster.infra import Endpoints
from tests.test_live_loop import _group, _producer, _read_all, _sample_bars


@pytest.fixture
def endpoints(database_url, kafka_bootstrap) -> Endpoints:
    return Endpoints(database_url, kafka_bootstrap)


def _stop_while_waiting(svc, n: int, waiting) -> dict[str, object]:
    """Run ``svc`` in a thread; once its first bar waits (``waiting()`` true 1.5 s in), stop it:
    the wait (3600 s) must end within seconds, as a RetryLater (box["retry"])."""
    from awet_kafka.bus import RetryLater

    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["stats"] = svc.run(max_messages=n, timeout_s=60)
        except RetryLater as exc:
            box["retry"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    time.sleep(1.5)
    assert runner.is_alive() and waiting()
    stopped_at = time.monotonic()
    svc.stop()
    runner.join(10)
    assert not runner.is_alive() and time.monotonic() - stopped_at < 5  # not the 3600 s wait
    return box


@pytest.mark.timeout(180)
def test_late_insights_are_waited_for_and_score_like_the_engines_own_alphas(
        test_config_for, tmp_path, endpoints, make_topic):
    cfg = test_config_for(tmp_path / "home", AWET__SIGNALS__ALPHA_WAIT_S="10")
    assert cfg.signals.alpha_source == "topic"  # the default, as designed
    bars = _sample_bars(("SPY", "IBM"), start=date(2019, 1, 1), end=date(2019, 7, 1))
    events = list(bars_to_events(bars))
    bank = AlphaBank()
    answers = [bank.on_bar(ev) for ev in events]  # what the lean_alpha service publishes, bar by bar
    assert sum(a.status == "insight" for out in answers for a in out) > 5

    # The backtest's path: the engine's own streaming alphas on the same bars.
    engine = SignalEngine(cfg.signals)
    want = {(ev.symbol, ev.ts): engine.on_bar(ev.model_dump(), correlation_id="x") for ev in events}

    raw, alpha, scored = make_topic(), make_topic(), make_topic()
    prod = _producer(endpoints.kafka_bootstrap)
    for ev in events:
        prod.send(raw, ev)
    prod.flush(10)
    stop = threading.Event()

    def late_lean_alpha() -> None:  # every answer 20 ms after the last: behind the signal service
        p = _producer(endpoints.kafka_bootstrap)
        for out in answers:
            if stop.wait(0.02):
                return
            for a in out:
                p.send(alpha, a)
            p.flush(10)

    with signal.build(cfg, endpoints, input_topic=raw, output_topic=scored, predictions_topic=None,
                      alpha_topic=alpha, group=_group()) as svc:
        feeder = threading.Thread(target=late_lean_alpha, daemon=True)
        started = time.monotonic()
        feeder.start()
        try:
            svc.run(max_messages=len(events), timeout_s=120)
        finally:
            stop.set()
            feeder.join(15)
        counters = dict(svc.component.counters)
    got = {(s.ticker, s.ts): s for s in (ScoredSignal.model_validate_json(m.value())
                                        for m in _read_all(endpoints.kafka_bootstrap, scored, len(events)))}
    assert set(got) == set(want)
    differ = [k for k in want if (got[k].active_alphas, got[k].signal_score, got[k].ensemble_direction)
              != (want[k].active_alphas, want[k].signal_score, want[k].ensemble_direction)]
    assert not differ, differ[:5]
    assert counters["alpha_wait_timeouts"] == 0
    # It did wait: the service could not finish before the late answers had all come.
    assert time.monotonic() - started >= 0.02 * len(events) * 0.9


@pytest.mark.timeout(120)
def test_a_stop_cuts_a_bars_wait_short_and_the_bar_is_redelivered_not_scored_without(
        test_config_for, tmp_path, endpoints, make_topic):
    from tests.test_bus import _committed

    cfg = test_config_for(tmp_path / "home", AWET__SIGNALS__ALPHA_WAIT_S="3600")
    bars = _sample_bars(("SPY",), start=date(2019, 1, 2), end=date(2019, 1, 4))
    raw, alpha, scored, group = make_topic(), make_topic(), make_topic(), _group()
    prod = _producer(endpoints.kafka_bootstrap)
    for ev in bars_to_events(bars):
        prod.send(raw, ev)
    prod.flush(10)
    with signal.build(cfg, endpoints, input_topic=raw, output_topic=scored, predictions_topic=None,
                      alpha_topic=alpha, group=group) as svc:
        # The first bar waits for a mark that lean_alpha (absent) never sends.
        box = _stop_while_waiting(svc, bars.height, lambda: svc.component.counters["bars"] == 0)
    assert "stopping while a bar waited for its alpha mark" in str(box.get("retry")), box
    assert _committed(endpoints.kafka_bootstrap, group, raw) < 0  # the bar is redelivered to the next start
    assert _read_all(endpoints.kafka_bootstrap, scored, 0, timeout_s=2) == []  # never scored without its alphas


@pytest.mark.timeout(120)
def test_a_stop_cuts_a_fill_wait_short_and_the_bar_is_redelivered_not_judged_without_its_fills(
        test_config_for, tmp_path, endpoints, make_topic):
    """Risk trading at Alpaca (whose fills only its reports tell) waits for the fills of orders
    decided before a bar; a stop during that wait is a RetryLater, so the bar is not judged on a
    book that lacks them: nothing decided, no exit, nothing committed."""
    from datetime import UTC, datetime, timedelta

    from live.services import risk
    from tests.test_bus import _committed
    from tests.test_live_loop import _tradable_signal, _uid

    cfg = test_config_for(tmp_path / "home")
    cfg = cfg.model_copy(update={"execution": cfg.execution.model_copy(update={"broker": "alpaca"})})
    scored, approved, rejected, exits, done, orders = (make_topic() for _ in range(6))
    group = _group()
    first_ts = datetime(2019, 1, 3, 14, 30, tzinfo=UTC)
    prod = _producer(endpoints.kafka_bootstrap)
    for i in range(2):
        prod.send(scored, _tradable_signal("SPY", first_ts + timedelta(days=i)))
    prod.flush(10)
    prod.close()
    # A namespace of its own: the worker's database holds other tests' namespace-"" book (positions
    # that count against the exposure caps, daily anchors of the same date).
    with risk.build(cfg, endpoints, input_topic=scored, approved_topic=approved, rejected_topic=rejected,
                    exits_topic=exits, done_topic=done, orders_topic=orders, group=group, fill_wait_s=3600.0,
                    namespace=f"ns-{_uid()}") as svc:
        # An entry decided the bar before, never filled: the first bar must wait for its fill.
        svc.component.ledger.expect("coid-1", "SPY", first_ts - timedelta(days=1), "entry", "corr-1", qty=1.0)
        box = _stop_while_waiting(svc, 2, lambda: svc.component._ts == first_ts
                                  and svc.component.counters["signals"] == 0)
        assert svc.component.counters["fill_wait_timeouts"] == 0
    assert "waited for fills" in str(box.get("retry")), box
    assert _committed(endpoints.kafka_bootstrap, group, scored) < 0
    for topic in (approved, rejected, exits):
        assert _read_all(endpoints.kafka_bootstrap, topic, 0, timeout_s=1) == []


@pytest.mark.timeout(120)
def test_with_the_paper_venue_risk_decides_without_any_fill_report_on_its_own_book(
        test_config_for, tmp_path, endpoints, make_topic, database_url):
    """No execution service at all, a fill wait of an hour configured: risk (paper venue)
    computes the fill of its approval at the next bar's open itself, so the next bar is
    decided at once, on a book that holds the position (a second entry is refused)."""
    import math
    from datetime import UTC, datetime, timedelta

    import polars as pl

    from awet_dagster.contracts import RiskDecision
    from awet_dagster.sources.schema import ensure_schema
    from awet_dagster.storage.bars import copy_upsert_bars
    from awet_dagster.storage.db import connect
    from live.services import risk
    from tests.test_live_loop import _tradable_signal, _uid

    cfg = test_config_for(tmp_path / "home")
    scored, approved, rejected, exits, done, orders = (make_topic() for _ in range(6))
    symbol, first_ts = f"P{_uid()}", datetime(2019, 1, 3, 14, 30, tzinfo=UTC)
    n = cfg.risk.cvar_lookback_bars + 1  # CVaR history, so that the first signal is approved
    closes = [100 * (1 + 0.001 * math.sin(i)) for i in range(n)]
    with connect(database_url) as conn, conn.transaction():
        copy_upsert_bars(conn, ensure_schema(pl.DataFrame({
            "symbol": [symbol] * n, "bar_type": ["daily"] * n,
            "ts": [first_ts - timedelta(days=n - i) for i in range(n)],
            "open": closes, "high": closes, "low": closes, "close": closes, "volume": [1e6] * n,
            "bid": [None] * n, "ask": [None] * n, "source": ["test"] * n})))
    prod = _producer(endpoints.kafka_bootstrap)
    for i, open_ in enumerate((100.0, 101.0)):
        prod.send(scored, _tradable_signal(symbol, first_ts + timedelta(days=i)).model_copy(
            update={"open": open_, "volume": 1_000_000.0}))
    prod.flush(10)
    prod.close()
    # A namespace of its own (as above): else another test's namespace-"" positions can fill the
    # exposure caps and the first signal is rejected (seen once in CI).
    with risk.build(cfg, endpoints, input_topic=scored, approved_topic=approved, rejected_topic=rejected,
                    exits_topic=exits, done_topic=done, orders_topic=orders, group=_group(),
                    fill_wait_s=3600.0, namespace=f"ns-{_uid()}") as svc:
        t0 = time.monotonic()
        stats = svc.run(max_messages=2, timeout_s=60)
        took = time.monotonic() - t0
        desk = svc.component
        assert stats.processed == 2 and desk.counters["signals"] == 2, stats
        pos = desk.ledger.portfolio.position(symbol)
        assert pos is not None and pos.avg_price == 101.0 * (1 + cfg.execution.slippage_bps / 1e4), desk.counters
        assert desk.shadow.counters["fills"] == 1 and desk.counters["fill_wait_timeouts"] == 0
    assert took < 30, took  # an hour's wait would have stopped it at the 60 s timeout
    [ok] = [RiskDecision.model_validate_json(m.value()) for m in _read_all(endpoints.kafka_bootstrap, approved, 1)]
    [no] = [RiskDecision.model_validate_json(m.value()) for m in _read_all(endpoints.kafka_bootstrap, rejected, 1)]
    assert ok.ts < no.ts and any("open position" in r for r in no.reasons), no.reasons
