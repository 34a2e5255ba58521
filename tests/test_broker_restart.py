"""Fault tests: the broker dies in the middle of a replay -> no lost events, no duplicate orders.

Each test runs its OWN embedded broker (started with the project's infra code on a free
port, in a scratch AWET home), never the session broker the other tests share, and brings
it back on the SAME port, so every client keeps its bootstrap address.

On Kafka (what the loop runs on) the broker is SIGKILLed: no controlled shutdown. It
restarts on the same data directory with its logs, committed offsets and idempotent-producer
state, so consumers resume from their committed offsets and nothing in flight is lost; the
tests assert exactly that (zero lost bars, zero duplicate orders, the backtest's trades).

The embedded fallback, tansu, keeps everything in memory: a restart loses every topic,
message, committed offset, consumer group and idempotent-producer id. What handles that
stays in the code for development use (services rebuilt with new producers when a flush
fails, the replay re-sending what was not acknowledged: ``publish_acknowledged``, unit-tested
below; side readers re-reading a recreated topic: tested on tansu below). Messages that
were acknowledged but not yet consumed are gone with it: a trading day needs Kafka.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException

from awet_dagster.backtest.runner import run_backtest
from awet_dagster.contracts import ScoredSignal
from awet_dagster.signals import signal_passed
from awet_dagster.infra import Endpoints
from awet_dagster.infra.broker import BrokerOptions, kill_broker, start_broker, stop_broker
from awet_dagster.infra.guard import stop_guard
from awet_dagster.infra.paths import HomeLayout
from awet_dagster.storage.db import connect
from awet_kafka.bus import MetricSample
from awet_kafka.producer import EventProducer
from awet_kafka.settings import FAST_DEV_PRODUCER_SETTINGS, producer_config
from live.loop_harness import LoopTracker, replay_through_loop, start_loop
from awet_kafka.publish import publish_acknowledged
from awet_kafka.admin import admin_ready, ensure_topics

log = logging.getLogger("test.broker_restart")


# --------------------------------------------------------------------------- own broker
class OwnBroker:
    """A broker of this test only (Kafka, or tansu), restartable on the same port.

    Kafka keeps its data directory across a stop, a SIGKILL and a start (same home);
    tansu loses everything, so its topics are recreated as ``awet infra up`` does."""

    def __init__(self, home: Path, kind: str = "kafka") -> None:
        from tests.conftest import KAFKA_LIBS

        self.home = HomeLayout(home).ensure()
        self.kind = kind
        self.opts = BrokerOptions(libs_root=KAFKA_LIBS)
        self.log_path = self.home.logs_dir / "broker.log"
        info, _ = start_broker(self.home, kind=kind, timeout_s=90, opts=self.opts, ready=admin_ready)
        self.port = info.port
        self.bootstrap = info.bootstrap
        self.pid = info.pid
        self.topics: dict[str, int] = {}
        self.restarts = 0

    def ensure_topics(self, topics: dict[str, int]) -> None:
        self.topics.update(topics)
        ensure_topics(self.bootstrap, self.topics, timeout_s=30)

    def stop(self) -> None:
        assert stop_broker(self.home.broker_pid_file, timeout_s=20, home=self.home), "broker did not stop"

    def kill(self) -> None:
        """SIGKILL: no controlled shutdown, no flush; the OS keeps what was written."""
        assert kill_broker(self.home.broker_pid_file) == self.pid

    def start(self) -> None:
        info, started = start_broker(self.home, kind=self.kind, timeout_s=90, port=self.port, opts=self.opts,
                                     ready=admin_ready)
        assert started and info.bootstrap == self.bootstrap
        self.pid = info.pid
        if self.kind == "tansu":
            self.ensure_topics({})  # recreate every topic, as `awet infra up` does
        self.restarts += 1

    def restart(self, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


def _own(home: Path, kind: str):
    from tests.conftest import _start_watchdog

    watchdog = _start_watchdog(home)  # stops the broker if this session is killed
    try:
        yield OwnBroker(home, kind)
    finally:
        stop_broker(HomeLayout(home).broker_pid_file, timeout_s=20, home=HomeLayout(home))
        stop_guard(watchdog)


@pytest.fixture
def own_broker(awet_tmp_home):
    """A Kafka of this test (the broker the loop is meant to run on)."""
    yield from _own(awet_tmp_home, "kafka")


@pytest.fixture
def own_tansu(awet_tmp_home):
    """A tansu of this test: what a restart of the memory broker does (topics recreated)."""
    yield from _own(awet_tmp_home, "tansu")


def _producer(bootstrap: str) -> EventProducer:
    return EventProducer(producer_config(bootstrap, producer=FAST_DEV_PRODUCER_SETTINGS))


# --------------------------------------------------------------------------- unit: no servers
def test_tracker_drops_what_a_failed_run_counted_and_counts_at_checkpoints():
    tr = LoopTracker()
    tr.add_external("raw", 2)
    hook = tr.hook("svc", ["raw"])
    down = tr.hook("down", ["out"])
    for name, topic in (("messages_in", "raw"), ("messages_out", "out"), ("messages_in", "raw"),
                        ("messages_out", "out")):
        hook(MetricSample(name, topic, 1))
    assert tr.lagging() == ["svc: batch in flight", "svc: raw 0/2"]  # not checkpointed yet
    hook(MetricSample("run_failures", "raw", 1))  # flush failed: nothing of it counts
    assert tr.lagging() == ["svc: raw 0/2"] and tr.produced == {"raw": 2}
    # The rebuilt service consumes both again and produces both again, then checkpoints.
    for name, topic in (("messages_in", "raw"), ("messages_in", "raw"), ("messages_out", "out"),
                        ("messages_out", "out")):
        hook(MetricSample(name, topic, 1))
    hook(MetricSample("checkpoint_seconds", "raw", 0.001))
    assert tr.lagging() == ["down: out 0/2"] and tr.produced == {"raw": 2, "out": 2}
    for _ in range(2):
        down(MetricSample("messages_in", "out", 1))
    down(MetricSample("checkpoint_seconds", "out", 0.001))
    assert tr.lagging() == [] and tr.wait_drained(0.1)


def test_loop_split_over_processes_drains_on_the_merged_counts():
    """Two trackers (one per process of a split loop): a topic's messages are what every part
    produced plus what was published from outside, so neither part alone can tell."""
    from live.loop_harness import lagging_of

    up, down = LoopTracker(), LoopTracker()
    up.add_external("raw", 3)  # the replay publishes through the first part
    feed = up.hook("features", ["raw"])
    risk = down.hook("risk", ["scored"])
    for _ in range(3):
        feed(MetricSample("messages_in", "raw", 1))
        feed(MetricSample("messages_out", "scored", 1))
    feed(MetricSample("checkpoint_seconds", "raw", 0.001))
    # The second part alone sees nothing to do; merged, risk owes the 3 signals.
    assert down.lagging() == [] and up.lagging() == []
    assert lagging_of([up.snapshot(), down.snapshot()]) == ["risk: scored 0/3"]
    for _ in range(2):
        risk(MetricSample("messages_in", "scored", 1))
    risk(MetricSample("checkpoint_seconds", "scored", 0.001))
    risk(MetricSample("messages_in", "scored", 1))  # read, not checkpointed yet
    snaps = [up.snapshot(), down.snapshot()]
    assert lagging_of(snaps) == ["risk: batch in flight", "risk: scored 2/3"]
    import pickle

    assert pickle.loads(pickle.dumps(snaps)) == snaps  # what the second process sends over a pipe
    risk(MetricSample("checkpoint_seconds", "scored", 0.001))
    assert lagging_of([up.snapshot(), down.snapshot()]) == []


class _FakeRaw:
    """librdkafka producer stand-in: ``fail`` = values whose delivery fails once (reported at
    flush), ``hold`` = values left undelivered at flush (purge reports them failed)."""

    def __init__(self, fail: set[bytes] = frozenset(), hold: set[bytes] = frozenset(), fatal: bool = False,
                 late: dict[bytes, int] | None = None) -> None:
        self.fail, self.hold, self.fatal = set(fail), set(hold), fatal
        self.late = dict(late or {})  # value -> flushes it stays in flight before it is acknowledged
        self.sent: list[bytes] = []
        self.delivered: list[bytes] = []
        self._queue: list[tuple[bytes, object]] = []

    def produce(self, topic, value, key, headers, on_delivery) -> None:
        self.sent.append(value)
        self._queue.append((value, on_delivery))

    def flush(self, timeout: float) -> int:
        if self.fatal:  # like confluent-kafka: a fatal error raised from flush, reports still queued
            self.fatal = False
            raise KafkaException(KafkaError(KafkaError._FATAL, "fenced", fatal=True))
        left = []
        for value, cb in self._queue:
            if self.late.get(value, 0) > 0:
                self.late[value] -= 1
                left.append((value, cb))
            elif value in self.hold:
                left.append((value, cb))
            elif value in self.fail:
                self.fail.discard(value)
                cb("boom", None)
            else:
                self.delivered.append(value)
                cb(None, None)
        self._queue = left
        return len(left)

    def purge(self) -> None:
        for _, cb in self._queue:
            cb("purged", None)
        self._queue = []

    def poll(self, timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return len(self._queue)


class _FakeProducer:
    def __init__(self, raw: _FakeRaw) -> None:
        self.raw = raw

    def check(self, topic, event) -> None:
        pass


def test_publish_acknowledged_resends_exactly_the_unacknowledged_events(monkeypatch):
    from tests.test_live_loop import _bar

    import awet_kafka.publish as publish

    monkeypatch.setattr(publish, "FLUSH_SLICE_S", 0.01)
    bars = [_bar(f"S{i}", datetime(2024, 1, 2, tzinfo=UTC)) for i in range(4)]
    values = [b.model_dump_json().encode() for b in bars]
    first = _FakeRaw(fail={values[1]}, hold={values[3]})  # one fails, one never lands (wedged)
    second = _FakeRaw()
    renewed: list[_FakeProducer] = []

    def renew() -> _FakeProducer:
        renewed.append(_FakeProducer(second))
        return renewed[-1]

    out = publish_acknowledged(_FakeProducer(first), "raw", bars, timeout_s=10, renew=renew)
    assert out is renewed[0] and len(renewed) == 1
    assert first.delivered == [values[0], values[2]]
    assert second.sent == [values[1], values[3]] and second.delivered == [values[1], values[3]]
    # A fatal producer error raised from flush: everything it held is re-sent by a new producer.
    dead, fresh = _FakeRaw(fatal=True), _FakeRaw()
    out = publish_acknowledged(_FakeProducer(dead), "raw", bars, timeout_s=10, renew=lambda: _FakeProducer(fresh))
    assert out.raw is fresh and dead.delivered == [] and fresh.delivered == values
    # In flight with no verdict (a broker restarting): waited for, never purged and sent again,
    # which would duplicate it on a broker that keeps it (Kafka).
    slow = _FakeRaw(late={values[0]: 5})
    spare: list[_FakeRaw] = []
    out = publish_acknowledged(_FakeProducer(slow), "raw", bars, timeout_s=10,
                               renew=lambda: spare.append(_FakeRaw()) or _FakeProducer(spare[-1]))
    assert out.raw is slow and spare == [] and slow.sent == values and slow.delivered == values[1:] + values[:1]
    # Without renew the same producer retries; past the deadline it raises.
    stuck = _FakeRaw(hold={values[0]})
    with pytest.raises(Exception, match="not acknowledged"):
        publish_acknowledged(_FakeProducer(stuck), "raw", bars[:1], timeout_s=0.2)


# --------------------------------------------------------------------------- side reader
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_side_reader_rereads_a_topic_recreated_by_a_broker_restart(own_tansu):
    """The new log grows PAST the tail's old position before the tail reads it: without the
    topic-id check the tail would read from its old position and skip the first messages."""
    from awet_dagster.contracts import MarketRawEvent
    from awet_kafka.tail import TopicTail
    from tests.test_live_loop import _bar

    topic = f"t-{uuid.uuid4().hex[:10]}"
    own_tansu.ensure_topics({topic: 1})
    got: list[str] = []
    t0 = datetime(2024, 1, 2, tzinfo=UTC)
    before = [_bar("T", t0) for _ in range(20)]
    after = [_bar("T", t0) for _ in range(50)]  # more than the old position (20)
    tail = TopicTail("restart-probe", own_tansu.bootstrap, {topic: MarketRawEvent},
                     lambda _t, ev, _ts: got.append(ev.correlation_id), fetch_wait_ms=5).start()
    try:
        prod = _producer(own_tansu.bootstrap)
        publish_acknowledged(prod, topic, before, timeout_s=30)
        deadline = time.monotonic() + 20
        while len(got) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(got) == 20
        own_tansu.stop()
        time.sleep(2.0)
        own_tansu.start()
        publish_acknowledged(_producer(own_tansu.bootstrap), topic, after, timeout_s=30)
        deadline = time.monotonic() + 20
        while len(got) < 70 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        tail.close()
    assert got[20:] == [b.correlation_id for b in after]
    assert tail.recreated[topic] == 1


# --------------------------------------------------------------------------- the loop
def _counts(database_url: str, symbols: list[str], ns: str) -> dict[str, int]:
    with connect(database_url) as conn:
        one = lambda sql, *a: int(conn.execute(sql, a).fetchone()[0])  # noqa: E731
        return {
            "bars": one("SELECT count(*) FROM bars WHERE symbol = ANY(%s)", symbols),
            "distinct_bars": one("SELECT count(DISTINCT (symbol, ts)) FROM bars WHERE symbol = ANY(%s)", symbols),
            "signals": one("SELECT count(*) FROM signals WHERE symbol = ANY(%s)", symbols),
            "distinct_signals": one("SELECT count(DISTINCT (symbol, ts)) FROM signals WHERE symbol = ANY(%s)",
                                    symbols),
            "orders": one("SELECT count(*) FROM orders WHERE payload->>'ns' = %s", ns),
            "fills": one("SELECT count(*) FROM fills f JOIN orders o USING (client_order_id) "
                         "WHERE o.payload->>'ns' = %s", ns),
        }


def _loop_topics() -> dict[str, str]:
    return {k: f"t-{uuid.uuid4().hex[:12]}" for k in ("raw", "eng", "alpha", "pred", "scored", "approved",
                                                        "rejected", "exits", "orders", "done", "clock")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kafka_sigkilled_mid_replay_loses_no_bar_and_trades_like_the_backtest(
        own_broker, test_config_for, database_url, tmp_path, monkeypatch):
    """Lockstep replay on Kafka; in the middle of it, with bars in flight, the broker is
    SIGKILLed (no controlled shutdown), left down for 3 s and started again on the same
    port and data directory. Kafka keeps the logs, the committed offsets and the idempotent
    producers' state: every client reconnects and goes on where it was. Every bar must be
    persisted and scored exactly once, no order duplicated, and the trades must equal
    ``run_backtest``'s on the same bars."""
    from tests.test_live_loop import _live_orders, _overrides, _sample_bars, _uid

    base = test_config_for(tmp_path / "home")
    # Risk and the exit monitor wait for the fill of an order decided just before the kill
    # (default 2 s: it would be booked one bar late and the trades would differ: late, not
    # lost); consumers may spend that long in one handler.
    cfg = base.model_copy(update={"kafka": base.kafka.model_copy(update={
        "consumer": {**base.kafka.consumer, "max.poll.interval.ms": 60000}})})
    endpoints = Endpoints(database_url, own_broker.bootstrap)
    bars = _sample_bars(start=date(2019, 1, 1), end=date(2019, 9, 30))
    symbols = bars["symbol"].unique().to_list()
    times = bars["ts"].unique().sort()
    kill_after = bars.filter(bars["ts"] < times[len(times) // 2]).height  # bars published before the kill
    t, ns = _loop_topics(), f"ns-{_uid()}"
    own_broker.ensure_topics({name: 1 for name in t.values()})
    overrides = _overrides(t, ns, tmp_path)
    tracker = LoopTracker()
    loop = start_loop(cfg, endpoints, overrides=overrides, tracker=tracker, timeout_s=270, backoff_s=0.2,
                      max_restarts=10)
    killed = threading.Event()
    at_kill: dict[str, object] = {}

    def killer() -> None:
        # Kill as soon as the replay has published past the middle: that step is in flight.
        while tracker.produced.get(t["raw"], 0) <= kill_after:
            if stop.is_set():
                return
            time.sleep(0.005)
        at_kill["in_flight"] = tracker.lagging()
        own_broker.kill()
        killed.set()
        time.sleep(3.0)
        own_broker.start()

    stop = threading.Event()
    thread = threading.Thread(target=killer, name="broker-killer", daemon=True)
    thread.start()
    renewed: list[EventProducer] = []

    def renew() -> EventProducer:
        renewed.append(_producer(own_broker.bootstrap))
        return renewed[-1]

    try:
        t0 = time.monotonic()
        n, drained = replay_through_loop(_producer(own_broker.bootstrap), bars, tracker, topic=t["raw"],
                                         lockstep=True, drain_timeout_s=240, renew_producer=renew)
        assert drained, tracker.lagging()
        wall = time.monotonic() - t0
    finally:
        stop.set()
        thread.join(30)
        loop.stop()
        results = loop.join(60)
    assert not loop.alive, "the loop did not stop within 60 s"
    assert killed.is_set() and own_broker.restarts == 1
    assert at_kill["in_flight"], "the kill must come while the loop is working on bars"
    after = _counts(database_url, symbols, ns)
    log.warning("Kafka SIGKILL mid-replay: in flight at the kill %s; after %s; service restarts %s; renewed "
                "replay producers %d; replay %.1f s", at_kill["in_flight"], after,
                {n_: r.restarts for n_, r in results.items()}, len(renewed), wall)
    assert n == bars.height
    # Every bar persisted and scored exactly once: nothing lost with the broker, nothing twice.
    assert after["bars"] == after["distinct_bars"] == bars.height
    assert after["signals"] == after["distinct_signals"] == bars.height
    with connect(database_url) as conn:
        coids = [r[0] for r in conn.execute("SELECT client_order_id FROM orders WHERE payload->>'ns' = %s",
                                            (ns,)).fetchall()]
    assert len(coids) == len(set(coids))
    expected = run_backtest(bars, None, None, None, cfg)
    want = sorted((r["ts"], r["symbol"], r["side"], r["qty"], r["intent"])
                  for r in expected.orders.iter_rows(named=True))
    got = sorted((o["ts"], o["symbol"], o["side"], o["qty"], o["intent"]) for o in _live_orders(database_url, ns))
    assert len(want) >= 4, "the sample period should trade"
    assert got == want
    assert after["fills"] == expected.fills.height


@pytest.mark.timeout(90)
def test_a_failed_service_closes_without_waiting_for_its_dead_producer(kafka_bootstrap, make_topic):
    """close() after a failed run purges the producer: what it holds is produced again by the
    replacement; flushing it would delay the rebuild by the flush timeout (and keep alive an
    idempotent producer that a restarted tansu may fence the replacement with)."""
    from awet_kafka.bus import BusService, Output
    from awet_kafka.producer import DeliveryError
    from awet_kafka.settings import consumer_config
    from tests.test_live_loop import _bar

    topic, out = make_topic(), make_topic()
    publish_acknowledged(_producer(kafka_bootstrap), topic, [_bar("CLOSE", datetime(2024, 1, 2, tzinfo=UTC))])
    dead = EventProducer(producer_config("127.0.0.1:1", producer={"message.timeout.ms": 60000}))
    from awet_dagster.contracts import MarketRawEvent

    svc = BusService("closer", [topic], lambda e, c: [Output(out, e)], topic_models={topic: MarketRawEvent},
                     consumer_config=consumer_config(kafka_bootstrap, f"g-{uuid.uuid4().hex[:8]}",
                                                     consumer={"session.timeout.ms": 6000,
                                                               "heartbeat.interval.ms": 500}),
                     producer=dead, flush_timeout_s=2)
    with pytest.raises(DeliveryError):
        svc.run(max_messages=1, timeout_s=30)
    t0 = time.monotonic()
    svc.close(timeout_s=10)
    assert time.monotonic() - t0 < 5, "close() waited for the undeliverable message"
    # The message was purged, not left queued. (Not ``len(dead) == 0``: len() also counts the
    # connection-refused error events a producer of a dead address posts every few hundred ms,
    # which made that check fail at random, seed 2475682660.)
    with pytest.raises(DeliveryError, match="Purged in queue"):
        dead.flush(0)
    dead.close()


def _rows_for(database_url: str, table: str, keys: list[tuple[str, datetime]]) -> dict[tuple[str, datetime], int]:
    """{(symbol, ts): rows} in ``table`` for those bars (0 when absent)."""
    with connect(database_url) as conn:
        rows = conn.execute(f"SELECT symbol, ts, count(*) FROM {table} WHERE symbol = ANY(%s) GROUP BY symbol, ts",
                            (sorted({s for s, _ in keys}),)).fetchall()
    got = {(s, ts): n for s, ts, n in rows}
    return {k: got.get(k, 0) for k in keys}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kafka_sigkilled_with_bars_in_flight_and_bars_sent_while_down_loses_nothing(
        own_broker, test_config_for, database_url, tmp_path, monkeypatch):
    """Kafka is SIGKILLed while the loop is still working on bars (published and
    acknowledged, not yet consumed by every service), and bars are published WHILE it is
    down. Kafka keeps the log and the committed offsets, so:
    - every bar acknowledged before the kill is processed once the broker is back (the
      memory broker loses these: see test_memory_broker_restart_keeps_what_was_not_acknowledged);
    - every bar sent during the outage is delivered (the replay re-sends what was not
      acknowledged) and processed, as is every bar published after the restart;
    - no bar is persisted or scored twice, no order is duplicated; every in-flight signal
      reaches a risk decision. Free-running, so trades are not compared with the backtest
      here (the lockstep test above does that)."""
    import live.registry as registry
    from awet_dagster.streaming import bars_to_events
    from awet_dagster.observability.metrics import AwetMetrics
    from live.services.lag_monitor import LagMonitor
    from tests.test_live_loop import _overrides, _sample_bars, _uid

    cfg = test_config_for(tmp_path / "home")
    endpoints = Endpoints(database_url, own_broker.bootstrap)
    bars = _sample_bars(start=date(2019, 1, 1), end=date(2019, 4, 30))
    times = bars["ts"].unique().sort()
    t1, t2, t3 = times[20], times[35], times[50]
    warm = bars.filter(bars["ts"] < t1)  # lockstep, drained
    in_flight = list(bars_to_events(bars.filter((bars["ts"] >= t1) & (bars["ts"] < t2))))
    during = list(bars_to_events(bars.filter((bars["ts"] >= t2) & (bars["ts"] < t3))))  # broker down
    after = list(bars_to_events(bars.filter(bars["ts"] >= t3)))
    t, ns = _loop_topics(), f"ns-{_uid()}"
    own_broker.ensure_topics({name: 1 for name in t.values()})
    overrides = _overrides(t, ns, tmp_path)
    tracker = LoopTracker()
    loop = start_loop(cfg, endpoints, overrides=overrides, tracker=tracker, timeout_s=200, backoff_s=0.2,
                      max_restarts=10)
    renew = lambda: _producer(own_broker.bootstrap)  # noqa: E731
    try:
        n, drained = replay_through_loop(_producer(own_broker.bootstrap), warm, tracker, topic=t["raw"],
                                         lockstep=True, drain_timeout_s=60, renew_producer=renew)
        assert drained and n == warm.height, tracker.lagging()
        producer = publish_acknowledged(_producer(own_broker.bootstrap), t["raw"], in_flight, timeout_s=30)
        own_broker.kill()  # the loop is still working on `in_flight`
        restarter = threading.Timer(3.0, own_broker.start)
        restarter.start()
        t0 = time.monotonic()
        producer = publish_acknowledged(producer, t["raw"], during, timeout_s=90, renew=renew)
        restarter.join(30)
        resend_s = time.monotonic() - t0
        publish_acknowledged(producer, t["raw"], after, timeout_s=30, renew=renew)
        must = [(e.symbol, e.ts) for e in during + after]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all(_rows_for(database_url, "signals", must).values()):
                break
            time.sleep(0.5)
        # Before counting: every service's group has committed everything on its inputs, so a
        # redelivered message (a would-be duplicate) has been handled and written, not still coming.
        inputs = {o["group"]: list(registry.service_inputs(name, o)) for name, o in overrides.items()}
        with LagMonitor(own_broker.bootstrap, inputs, AwetMetrics(), timeout_s=5) as mon:
            def caught_up() -> bool:
                lags = mon.measure_once()
                return {x.group for x in lags} == set(inputs) and all(x.lag == 0 for x in lags)

            deadline = time.monotonic() + 120
            while not caught_up():
                assert time.monotonic() < deadline, [x for x in mon.last if x.lag]
                time.sleep(0.2)
        assert loop.alive, "the loop must still run (no service gave up)"
    finally:
        loop.stop()
        results = loop.join(60)
    assert not loop.alive, "the loop did not stop within 60 s"
    keys = {e: [(b.symbol, b.ts) for b in evs] for e, evs in (("in_flight", in_flight), ("during", during),
                                                                ("after", after))}
    keys["warm"] = [(r["symbol"], r["ts"]) for r in warm.iter_rows(named=True)]
    counts = {table: {part: _rows_for(database_url, table, k) for part, k in keys.items()}
              for table in ("bars", "signals")}
    for table, parts in counts.items():
        for part, rows in parts.items():
            assert max(rows.values()) <= 1, (table, part)  # never twice
            assert min(rows.values()) == 1, (table, part, [k for k, v in rows.items() if not v][:5])
    with connect(database_url) as conn:
        coids = [r[0] for r in conn.execute("SELECT client_order_id FROM orders WHERE payload->>'ns' = %s",
                                            (ns,)).fetchall()]
        corr = [e.correlation_id for e in in_flight]
        decided = {r[0] for r in conn.execute("SELECT DISTINCT correlation_id FROM audit_log WHERE actor = 'risk' "
                                              "AND correlation_id = ANY(%s)", (corr,)).fetchall()}
        # Risk decides (and audits) the tradable signals; the others only mark the bar.
        tradable = {r[0] for r in conn.execute("SELECT correlation_id, payload FROM signals WHERE correlation_id = "
                                               "ANY(%s)", (corr,)).fetchall()
                    if signal_passed(ScoredSignal.model_validate(r[1]))}
    assert len(coids) == len(set(coids))
    log.warning("in flight at the kill: %d bars; bars sent while down: %d (acknowledged after %.1fs); "
                "service restarts %s", len(in_flight), len(during), resend_s,
                {n: r.restarts for n, r in results.items()})
    assert tradable and tradable <= decided, "every tradable signal in flight at the kill reaches a risk decision"


# --------------------------------------------------------------------------- exits after a restart
def test_risk_rebuilt_mid_position_exits_like_the_running_one(test_config_for, tmp_path):
    """A rebuilt risk desk (broker restart, crash) restores the position from the fills, whose
    peak is the fill price: its exit rules must mark the closes held so far again, or a trailing
    stop set by an earlier high close would fire late (found by the broker-restart test)."""
    from datetime import timedelta

    from awet_dagster.execution.ledger import StoredFill
    from awet_dagster.risk.desk import RiskDesk
    from awet_dagster.risk.portfolio import Fill
    from awet_dagster.risk.store import InMemoryRiskStore
    from awet_dagster.streaming.events import event_to_bar
    from awet_dagster.streaming.time_guard import TimeGuard, TimeLimits
    from tests.test_live_components import _quiet_signal
    from tests.test_live_loop import _bar

    cfg = test_config_for(tmp_path / "home")
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    closes = [100.0, 102.5, 102.9, 100.8]  # trailing 2% from 102.9 -> 100.84: the 4th bar exits
    bars = [_bar("X", t0 + timedelta(days=i), c) for i, c in enumerate(closes)]
    signals = [_quiet_signal("X", b.ts, b.close) for b in bars]
    fill = Fill("coid-x", "X", "buy", 10, 100.0, 0.0, t0, "corr-x", "entry")

    def desk(store: InMemoryRiskStore) -> RiskDesk:
        return RiskDesk(cfg, store, approved_topic="ok", rejected_topic="no", exits_topic="exits",
                        guard=TimeGuard(TimeLimits.from_config(cfg)))

    running = desk(InMemoryRiskStore())
    running.ledger.portfolio.apply_fill(fill)
    out = [running.handle(s) for s in signals]
    assert [len(o) for o in out] == [0, 0, 0, 1] and out[3][0].event.reason == "trailing"

    stored = StoredFill(fill.client_order_id, "X", "buy", 10, 100.0, 0.0, t0, "corr-x", "entry", None)
    rebuilt = desk(InMemoryRiskStore(bars={"X": [event_to_bar(b) for b in bars[:3]]}, fills=[stored]))
    rebuilt.start()  # the ledger rebuilds the position from the stored fill
    again = rebuilt.handle(signals[3])
    assert [(o.topic, o.event.reason, o.event.ts) for o in again] == [("exits", "trailing", bars[3].ts)]
    assert rebuilt.exits.monitor.bars_held() == running.exits.monitor.bars_held() == {("X", "corr-x"): 4}
