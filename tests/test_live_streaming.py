"""The streaming side: replay, persist_bars, features, lean_alpha, runner, Alpaca ingest.

Kafka and PostgreSQL are the REAL session servers (tests/conftest.py). Isolation:
unique topics (``make_topic``), unique consumer groups, and unique SYMBOLS per test
(sample bars renamed), so the shared ``bars`` table never mixes two tests' histories
(warm-up reads that table).
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import polars as pl
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from awet_dagster.alphas import EmaCrossAlpha, MacdAlpha, RsiAlpha, alpha_signals
from awet_dagster.config import AwetConfig
from awet_dagster.contracts import AlphaSignal, BarClock, DeadLetter, FeatureEvent, MarketRawEvent, dlq_topic
from awet_dagster.features import FEATURE_COLUMNS, FEATURE_SET_VERSION, compute_features
from awet_dagster.infra import Endpoints
from awet_dagster.sources.sample import SampleSource
from awet_dagster.storage.bar_history import read_last_bars, read_last_bars_many
from awet_dagster.storage.bars import as_feeds, copy_upsert_bars, read_bars
from awet_dagster.storage.db import connect
from awet_dagster.streaming import (
    AlphaBank,
    FeatureEngine,
    ReplayPacer,
    bar_event_id,
    bars_to_events,
    events_to_frame,
)
from awet_dagster.streaming.state import alpha_kind
from live import registry, supervisor
from awet_kafka.dead_letters import DLQ_REASON_HEADER
from awet_kafka.producer import EventProducer
from awet_dagster.streaming.alpaca_ingest import AlpacaBarIngestor, Backoff, alpaca_stream_factory
from awet_kafka.settings import FAST_DEV_PRODUCER_SETTINGS, producer_config
from live.replay import replay_bars
from live.services import features as features_svc
from live.services import lean_alpha as alpha_svc
from live.services import persist_bars as persist_svc

DIRECTION = {1: "long", -1: "short", 0: "flat"}


# --------------------------------------------------------------------------- helpers
def _uid() -> str:
    return uuid.uuid4().hex[:8].upper()


def _sample_bars(symbols=("AAPL", "IBM"), start=date(2019, 1, 1), end=date(2020, 6, 30)) -> pl.DataFrame:
    """Sample daily bars with the symbols renamed to names unique to this test."""
    bars = SampleSource().fetch(list(symbols), start, end, "daily")
    tag = _uid()
    mapping = {s: f"{s}{tag}" for s in symbols}
    return bars.with_columns(pl.col("symbol").replace_strict(mapping))


@pytest.fixture
def cfg(test_config_for, tmp_path):
    return test_config_for(tmp_path / "home")


@pytest.fixture
def endpoints(database_url, kafka_bootstrap) -> Endpoints:
    return Endpoints(database_url, kafka_bootstrap)


def _producer(bootstrap: str) -> EventProducer:
    return EventProducer(producer_config(bootstrap, producer=FAST_DEV_PRODUCER_SETTINGS))


def _group() -> str:
    return f"g-{uuid.uuid4().hex[:10]}"


def _read_topic(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0, partitions: int = 1):
    """First ``n`` messages of a topic by assignment (no group join); fails if fewer arrive."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out, deadline = [], time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                out.append(m)
    finally:
        c.close()
    assert len(out) >= n, f"only {len(out)}/{n} message(s) on {topic}"
    return out


def _persist_directly(database_url: str, bars: pl.DataFrame) -> None:
    with connect(database_url) as conn, conn.transaction():
        copy_upsert_bars(conn, bars)


def _replay(bootstrap: str, bars: pl.DataFrame, topic: str) -> dict[tuple[str, datetime], str]:
    """Replay ``bars``; returns {(symbol, ts): correlation_id} of what was published."""
    stats = replay_bars(_producer(bootstrap), bars, topic=topic)
    assert stats.published == bars.height and stats.stopped_by == "done"
    msgs = _read_topic(bootstrap, topic, bars.height)
    evs = [MarketRawEvent.model_validate_json(m.value()) for m in msgs[-bars.height:]]
    return {(e.symbol, e.ts): e.correlation_id for e in evs}


# --------------------------------------------------------------------------- core (no servers)
def test_replay_events_are_time_ordered_with_stable_ids_and_fresh_correlation_ids():
    bars = _sample_bars(start=date(2020, 1, 1), end=date(2020, 2, 1))
    a, b = list(bars_to_events(bars)), list(bars_to_events(bars))
    keys = [(e.ts, e.symbol) for e in a]
    assert keys == sorted(keys) and len(a) == bars.height
    assert [e.event_id for e in a] == [e.event_id for e in b]  # idempotent downstream
    assert a[0].event_id == bar_event_id(a[0].symbol, "daily", a[0].ts)
    assert len({e.correlation_id for e in a + b}) == 2 * len(a)  # a new one per published bar
    # Round trip bar -> event -> bar keeps every value exactly; the source becomes the design's
    # feed name ("sample" -> "stub") and each event says it is a replay.
    back = events_to_frame(a).sort("symbol", "ts")
    assert back.equals(as_feeds(bars).sort("symbol", "ts"))
    assert {(e.source, e.replay) for e in a} == {("stub", True)}


def test_replay_pacer_scales_gaps_caps_them_and_stops():
    t0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    fast = ReplayPacer(0)
    assert fast.wait(t0) and fast.delay_for(t0 + timedelta(days=3)) == 0.0
    pacer = ReplayPacer(60, max_gap_s=2.0)
    pacer.wait(t0)
    assert pacer.delay_for(t0 + timedelta(minutes=1)) == pytest.approx(1.0)
    assert pacer.delay_for(t0 + timedelta(days=3)) == 2.0  # weekend gap capped
    stop = threading.Event()
    slow = ReplayPacer(1, max_gap_s=30.0, stop_event=stop)
    slow.wait(t0)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert slow.wait(t0 + timedelta(minutes=1)) is False  # interrupted, not a 30 s sleep
    assert time.monotonic() - started < 5
    with pytest.raises(ValueError):
        ReplayPacer(-1)


def test_feature_engine_warm_up_equals_uninterrupted_stream_and_skips_stale_bars():
    bars = _sample_bars(symbols=("SPY",), start=date(2018, 1, 1), end=date(2020, 1, 1)).sort("ts")
    events = list(bars_to_events(bars))
    full = FeatureEngine()
    expected = [full.on_bar(e) for e in events]
    cut = 300
    rows = list(bars.iter_rows(named=True))

    def history(symbol, bar_type, before, limit):
        return [r for r in rows if r["ts"] < before][-limit:]

    restarted = FeatureEngine(history)
    got = [restarted.on_bar(e) for e in events[cut:]]
    assert restarted.counters.warmup_bars == cut
    for a, b in zip(expected[cut:], got, strict=True):
        assert a.features.keys() == b.features.keys()
        assert all(math.isclose(a.features[k], b.features[k], rel_tol=1e-12, abs_tol=1e-12) for k in a.features)
        assert a.event_id == b.event_id  # deterministic: a recomputation dedupes downstream
    assert restarted.on_bar(events[-1]) is None  # duplicate
    assert restarted.on_bar(events[cut]) is None  # out of order
    assert restarted.counters.skipped_stale == 2


def test_alpha_bank_matches_batch_alpha_signals_and_maps_to_contract():
    bars = _sample_bars(start=date(2016, 1, 1), end=date(2020, 1, 1))
    bank = AlphaBank()
    events = list(bars_to_events(bars))
    out = [s for e in events for s in bank.on_bar(e)]
    got = {(s.symbol, s.ts, s.alpha, s.direction) for s in out if s.status == "insight"}
    expected = _batch_signals(bars)
    assert got == expected and len(expected) > 10
    # Every bar is answered: its insights, then its bar_done mark (what the signal service waits for).
    marks = [s for s in out if s.status == "bar_done"]
    assert [(m.symbol, m.ts) for m in marks] == [(e.symbol, e.ts) for e in events]
    per_bar: dict[tuple, list[str]] = {}
    for s in out:
        per_bar.setdefault((s.symbol, s.ts), []).append(s.status)
    assert all(v[-1] == "bar_done" and v.count("bar_done") == 1 for v in per_bar.values())


def _batch_signals(bars: pl.DataFrame) -> set[tuple]:
    out = set()
    for cls in (RsiAlpha, EmaCrossAlpha, MacdAlpha):
        for r in alpha_signals(bars, cls).iter_rows(named=True):
            out.add((r["symbol"], r["ts"], alpha_kind(r["alpha"]), DIRECTION[r["direction"]]))
    return out


# --------------------------------------------------------------------------- Alpaca ingest (fake stream)
class _FakeStream:
    """Stands in for alpaca-py's StockDataStream: ``run`` delivers a script, then ends."""

    def __init__(self, script, fail: bool = False):
        self.script, self.fail, self.handler, self.symbols, self.stopped = script, fail, None, (), False

    def subscribe_bars(self, handler, *symbols):
        self.handler, self.symbols = handler, symbols

    def run(self):
        for bar in self.script:
            asyncio.run(self.handler(bar))
        if self.fail:
            raise ConnectionError("socket closed")

    def stop(self):
        self.stopped = True


def _alpaca_bar(symbol: str, minute: int, close: float = 100.0):
    ts = datetime(2024, 3, 1, 14, 30, tzinfo=UTC) + timedelta(minutes=minute)
    return SimpleNamespace(symbol=symbol, timestamp=ts, open=close, high=close + 1, low=close - 1,
                           close=close, volume=1000.0)


def test_alpaca_ingest_reconnects_with_backoff_and_never_publishes_a_bar_twice(monkeypatch):
    # Connection 1 drops after two bars; connection 2 re-sends the last bar (as Alpaca does
    # after a reconnect) then a new one; connection 3 a bad bar and a new one.
    scripts = [
        ([_alpaca_bar("SPY", 0), _alpaca_bar("QQQ", 0)], True),
        ([_alpaca_bar("QQQ", 0), _alpaca_bar("SPY", 1)], False),
        ([SimpleNamespace(symbol="SPY"), _alpaca_bar("SPY", 2)], False),
    ]
    streams: list[_FakeStream] = []

    def factory():
        stream = _FakeStream(*scripts[len(streams)]) if len(streams) < len(scripts) else _FakeStream([], True)
        streams.append(stream)
        return stream

    published: list[MarketRawEvent] = []
    sent: list = []  # bars and clocks, in the order they went out
    waits: list[float] = []
    ing = AlpacaBarIngestor(["spy", "QQQ"], lambda e: (published.append(e), sent.append(e)), factory,
                            backoff=Backoff(initial_s=0.01, factor=2.0, max_s=0.04), max_reconnects=5,
                            publish_clock=sent.append)
    real_wait = ing._stop.wait
    monkeypatch.setattr(ing._stop, "wait", lambda t=None: (waits.append(t), real_wait(0))[1])
    stats = ing.run(timeout_s=20)
    assert [(e.symbol, e.ts.minute) for e in published] == [("SPY", 30), ("QQQ", 30), ("SPY", 31), ("SPY", 32)]
    assert stats.duplicates == 1 and stats.rejected == 1 and stats.published == 4
    assert stats.stopped_by == "max_reconnects" and stats.reconnects == 5
    assert streams[0].symbols == ("SPY", "QQQ")
    # Backoff resets after a connection that delivered data, grows (capped) while none does.
    assert waits == [0.01, 0.01, 0.01, 0.02, 0.04]
    assert published[0].event_id == bar_event_id("SPY", "minute", published[0].ts)
    # Each minute's clock follows its bars: 30 once both symbols came, 31 when 32 began, 32 at the stop.
    assert [(type(x).__name__, x.ts.minute, x.symbols if isinstance(x, BarClock) else x.symbol) for x in sent] == [
        ("MarketRawEvent", 30, "SPY"), ("MarketRawEvent", 30, "QQQ"), ("BarClock", 30, ("QQQ", "SPY")),
        ("MarketRawEvent", 31, "SPY"), ("MarketRawEvent", 32, "SPY"), ("BarClock", 31, ("SPY",)),
        ("BarClock", 32, ("SPY",))]


def test_alpaca_ingest_stops_promptly_and_needs_credentials():
    class Blocking(_FakeStream):
        def __init__(self):
            super().__init__([])
            self._ev = threading.Event()

        def run(self):
            self._ev.wait(30)

        def stop(self):
            self._ev.set()

    ing = AlpacaBarIngestor(["SPY"], lambda e: None, Blocking)
    started = time.monotonic()
    stats = ing.run(timeout_s=0.3)
    assert stats.stopped_by == "timeout" and time.monotonic() - started < 5
    from awet_dagster.sources import MissingCredentials

    with pytest.raises(MissingCredentials, match="alpaca_api_key"):
        alpaca_stream_factory(None, "secret")


# --------------------------------------------------------------------------- runner (fake services)
def test_runner_rebuilds_a_failed_service_and_gives_up_after_max_restarts():
    builds: list[str] = []

    class Flaky:
        def __init__(self, fail):
            self.fail, self.stopped = fail, False

        def run(self, max_messages=None, timeout_s=None):
            if self.fail:
                raise RuntimeError("db down")
            return SimpleNamespace(consumed=3, processed=3, dead_lettered=0, produced=0, stopped_by="max_messages")

        def stop(self):
            self.stopped = True

        def close(self):
            pass

    registry.register_service("flaky_test", lambda cfg, ep, **kw: builds.append("x") or Flaky(len(builds) < 3))
    registry.register_service("broken_test", lambda cfg, ep, **kw: Flaky(True))
    try:
        ep = SimpleNamespace()
        res = supervisor.run_services(["flaky_test"], AwetConfig(), ep, max_messages=3, timeout_s=20, backoff_s=0.01)
        assert res["flaky_test"].restarts == 2 and res["flaky_test"].processed == 3
        res = supervisor.run_services(["broken_test"], AwetConfig(), ep, timeout_s=20, backoff_s=0.01, max_restarts=2)
        assert res["broken_test"].error == "RuntimeError: db down" and not res["broken_test"].stats
        with pytest.raises(KeyError, match="unknown service"):
            supervisor.run_services(["nope"], AwetConfig(), ep)
    finally:
        registry.unregister_service("flaky_test")
        registry.unregister_service("broken_test")


# --------------------------------------------------------------------------- against the servers
@pytest.mark.timeout(60)
def test_replay_follows_each_bar_time_with_its_clock(kafka_bootstrap, make_topic):
    """``awet replay`` into market.raw publishes, after each bar time's bars, the BarClock risk
    orders its input by (one per time, listing exactly the symbols published)."""
    bars = _sample_bars(start=date(2020, 1, 1), end=date(2020, 1, 20))
    raw, clock = make_topic(), make_topic()
    stats = replay_bars(_producer(kafka_bootstrap), bars, topic=raw, clock_topic=clock)
    assert stats.published == bars.height
    times = bars["ts"].unique().sort().to_list()
    clocks = [BarClock.model_validate_json(m.value()) for m in _read_topic(kafka_bootstrap, clock, len(times))]
    assert [c.ts for c in clocks] == times
    by_time = {ts: tuple(sorted(g["symbol"].to_list())) for (ts,), g in bars.group_by("ts")}
    assert all(c.symbols == by_time[c.ts] and c.bar_type == "daily" for c in clocks)


@pytest.mark.timeout(180)
def test_replay_then_persist_bars_stores_exactly_the_bars_idempotently(cfg, endpoints, make_topic, database_url):
    bars = _sample_bars(start=date(2020, 1, 1), end=date(2020, 7, 1))
    symbols = bars["symbol"].unique().to_list()
    topic = make_topic()
    for _ in range(2):  # replayed twice: same event ids, the upsert keeps one row per bar
        assert replay_bars(_producer(endpoints.kafka_bootstrap), bars, topic=topic).published == bars.height
    with persist_svc.build(cfg, endpoints, input_topic=topic, group=_group()) as svc:
        stats = svc.run(max_messages=2 * bars.height, timeout_s=90)
    assert stats.processed == 2 * bars.height and stats.dead_lettered == 0, stats
    assert svc.component.batches_written >= 1
    with connect(database_url) as conn:
        stored = read_bars(conn, symbols, "daily")
    assert stored.equals(as_feeds(bars).sort("symbol", "ts")), "stored bars differ from the replayed ones"


@pytest.mark.timeout(60)
def test_read_last_bars_many_equals_one_query_per_symbol(database_url):
    bars = _sample_bars(start=date(2020, 1, 1), end=date(2020, 4, 1))
    with connect(database_url) as conn, conn.transaction():
        copy_upsert_bars(conn, bars)
    symbols = sorted(bars["symbol"].unique().to_list())
    cut = {s: datetime(2020, 2, 3 + i, 14, 30, tzinfo=UTC) for i, s in enumerate(symbols)}  # own cut-off each
    cut["NOHISTORY"] = datetime(2020, 3, 2, tzinfo=UTC)
    with connect(database_url) as conn:
        many = read_last_bars_many(conn, cut, "daily", 15)
        one = {s: read_last_bars(conn, s, "daily", ts, 15) for s, ts in cut.items()}
        assert read_last_bars_many(conn, {}, "daily", 15) == {}
    assert many == one
    assert many["NOHISTORY"] == [] and all(len(many[s]) == 15 for s in symbols)
    assert all(b["ts"] < cut[s] for s in symbols for b in many[s])


@pytest.mark.timeout(240)
def test_runner_runs_persist_bars_and_features_in_one_process(cfg, endpoints, make_topic, database_url):
    bars = _sample_bars(start=date(2020, 1, 1), end=date(2020, 3, 1))
    raw, out = make_topic(), make_topic()
    replay_bars(_producer(endpoints.kafka_bootstrap), bars, topic=raw)
    res = supervisor.run_services(
        ["persist_bars", "features"], cfg, endpoints, max_messages=bars.height, timeout_s=90,
        overrides={"persist_bars": {"input_topic": raw, "group": _group()},
                   "features": {"input_topic": raw, "output_topic": out, "group": _group()}},
    )
    assert res["persist_bars"].processed == bars.height, res
    assert res["features"].produced == bars.height, res
    with connect(database_url) as conn:
        assert read_bars(conn, bars["symbol"].unique().to_list(), "daily").height == bars.height


@pytest.mark.timeout(240)
def test_features_service_matches_batch_even_across_a_restart(cfg, endpoints, make_topic, database_url):
    bars = _sample_bars(start=date(2019, 1, 1), end=date(2020, 6, 30))
    n, cut = bars.height, 301  # odd: the two symbols are cut at different bars
    _persist_directly(database_url, bars)  # what persist_bars did (covered above)
    raw, out = make_topic(), make_topic()
    corr = _replay(endpoints.kafka_bootstrap, bars, raw)
    group = _group()
    with features_svc.build(cfg, endpoints, input_topic=raw, output_topic=out, group=group) as first:
        s1 = first.run(max_messages=cut, timeout_s=60)
    assert s1.processed == cut, s1
    with features_svc.build(cfg, endpoints, input_topic=raw, output_topic=out, group=group) as second:
        s2 = second.run(max_messages=n - cut, timeout_s=60)
    assert s2.processed == n - cut, s2  # resumed from the committed offset
    assert second.component.counters.warmups == 2 and second.component.counters.warmup_bars > 0

    events = [FeatureEvent.model_validate_json(m.value()) for m in _read_topic(endpoints.kafka_bootstrap, out, n)]
    by_key = {(e.symbol, e.ts): e for e in events}
    assert len(by_key) == n
    batch = compute_features(bars)
    for row in batch.iter_rows(named=True):
        ev = by_key[(row["symbol"], row["ts"])]
        assert ev.feature_set_version == FEATURE_SET_VERSION
        assert ev.correlation_id == corr[(row["symbol"], row["ts"])]
        for col in FEATURE_COLUMNS:
            want = row[col]
            if want is None:
                assert col not in ev.features, (row["symbol"], row["ts"], col)
            else:
                assert math.isclose(ev.features[col], want, rel_tol=1e-9, abs_tol=1e-9), (row["ts"], col)


@pytest.mark.timeout(240)
def test_lean_alpha_service_emits_the_batch_signals_across_a_restart(cfg, endpoints, make_topic, database_url):
    bars = _sample_bars(start=date(2017, 1, 1), end=date(2020, 1, 1))
    _persist_directly(database_url, bars)
    raw, out = make_topic(), make_topic()
    corr = _replay(endpoints.kafka_bootstrap, bars, raw)
    group, cut = _group(), 501
    produced = 0
    for limit in (cut, bars.height - cut):
        with alpha_svc.build(cfg, endpoints, input_topic=raw, output_topic=out, group=group) as svc:
            stats = svc.run(max_messages=limit, timeout_s=60)
        assert stats.processed == limit, stats
        produced += stats.produced
    expected = _batch_signals(bars)
    assert produced == len(expected) + bars.height and len(expected) > 10  # + one bar_done mark per bar
    sigs = [AlphaSignal.model_validate_json(m.value()) for m in _read_topic(endpoints.kafka_bootstrap, out, produced)]
    assert {(s.symbol, s.ts, s.alpha, s.direction) for s in sigs if s.status == "insight"} == expected
    assert sorted((s.symbol, s.ts) for s in sigs if s.status == "bar_done") == sorted(
        zip(bars["symbol"], bars["ts"], strict=True))
    assert all(s.correlation_id == corr[(s.symbol, s.ts)] for s in sigs)


@pytest.mark.timeout(180)
def test_poison_messages_go_to_the_dlq_with_a_reason_and_the_service_keeps_going(
        cfg, endpoints, make_topic, database_url):
    bars = _sample_bars(start=date(2020, 1, 1), end=date(2020, 1, 20))
    raw, out = make_topic(), make_topic()
    prod = _producer(endpoints.kafka_bootstrap)
    prod.send_raw(raw, b"{not json", key=b"X")
    prod.send_raw(raw, b'{"symbol": "X", "correlation_id": "c-1"}', key=b"X")
    prod.flush(10)
    replay_bars(prod, bars, topic=raw)
    with features_svc.build(cfg, endpoints, input_topic=raw, output_topic=out, group=_group()) as svc:
        stats = svc.run(max_messages=bars.height + 2, timeout_s=60)
    assert stats.dead_lettered == 2 and stats.processed == bars.height and stats.produced == bars.height, stats
    letters = _read_topic(endpoints.kafka_bootstrap, dlq_topic(raw), 2)
    reasons = [dict(m.headers())[DLQ_REASON_HEADER].decode() for m in letters]
    assert reasons == ["invalid_json", "schema_mismatch"]
    assert DeadLetter.model_validate_json(letters[1].value()).correlation_id == "dlq:%s:0:1" % raw


@pytest.fixture
def awet_cli(monkeypatch, database_url, kafka_bootstrap, tmp_path):
    """``awet_cli(*args) -> click Result``: the `awet` live commands, in this process, on the
    session's servers and a scratch AWET home."""
    import typer
    from typer.testing import CliRunner

    from awet_cli.live_cmd import register

    app = typer.Typer()
    register(app)
    for k, v in {"AWET_ENV": "test", "AWET_HOME": str(tmp_path / "home"), "DATABASE_URL": database_url,
                 "KAFKA_BOOTSTRAP": kafka_bootstrap}.items():
        monkeypatch.setenv(k, v)
    return lambda *args: CliRunner().invoke(app, list(args))


@pytest.mark.timeout(120)
def test_replay_cli_publishes_sample_bars(awet_cli, make_topic, kafka_bootstrap):
    topic = make_topic()
    result = awet_cli("replay", "--source", "sample", "--bar-type", "daily", "--symbols", "SPY,IBM",
                      "--start", "2020-01-02", "--end", "2020-01-10", "--speed", "0", "--max-seconds", "60",
                      "--topic", topic)
    assert result.exit_code == 0, result.output
    assert "published 14/14" in result.output
    evs = [MarketRawEvent.model_validate_json(m.value()) for m in _read_topic(kafka_bootstrap, topic, 14)]
    assert [(e.ts, e.symbol) for e in evs] == sorted((e.ts, e.symbol) for e in evs)


@pytest.mark.timeout(60)
def test_replay_cli_to_a_missing_topic_fails_at_once_naming_it(awet_cli, kafka_bootstrap, tmp_path):
    from confluent_kafka.admin import AdminClient

    missing = f"never-created-{tmp_path.name[-10:]}"
    result = awet_cli("replay", "--source", "sample", "--bar-type", "daily", "--symbols", "SPY",
                      "--start", "2020-01-02", "--end", "2020-01-10", "--topic", missing)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert f"topic {missing!r} does not exist" in said and "awet infra up" in said
    # Refused before producing anything (before: every bar waited out the producer's message
    # timeout), and the check did not create the topic by asking for it.
    assert "published" not in said
    listed = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert missing not in listed


@pytest.mark.timeout(60)
def test_paced_replay_is_bounded_by_max_seconds(make_topic, kafka_bootstrap):
    bars = _sample_bars(start=date(2020, 1, 1), end=date(2020, 3, 1))
    started = time.monotonic()
    stats = replay_bars(_producer(kafka_bootstrap), bars, topic=make_topic(), speed=1.0, max_gap_s=5.0,
                        max_seconds=0.5)
    assert stats.stopped_by == "max_seconds" and 1 <= stats.published < bars.height
    assert time.monotonic() - started < 10


@pytest.mark.timeout(120)
def test_live_cli_runs_a_named_service_bounded(awet_cli, configured_topics):
    bad = awet_cli("live", "--service", "nope")
    assert bad.exit_code == 2 and "unknown service" in bad.output
    result = awet_cli("live", "--service", "persist_bars", "--max-seconds", "2")
    assert result.exit_code == 0, result.output
    assert "persist_bars: processed" in result.output
