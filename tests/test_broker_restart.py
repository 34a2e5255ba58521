"""Fault test (issue #7): the Kafka broker restarts in the middle of a replay -> no lost events.

The test runs its OWN embedded broker (tansu, started with the project's infra code on a
free port, in a scratch AWET home), never the session broker the other tests share, and
restarts it on the SAME port, so every client keeps its bootstrap address. tansu keeps
everything in memory: a restart loses every topic, message, committed offset, consumer
group and idempotent-producer id. After the restart the topics are recreated as
``awet infra up`` does (``ensure_topics``), empty.

What that restart breaks, and what handles it (each has its own check below):
- Idempotent producers (every service's, the replay's): the broker no longer knows their
  producer id, answers UNKNOWN_PRODUCER_ID forever and librdkafka retries until the
  message times out. Worse, the new broker hands out the same ids again (from 1), so an old
  producer can fence a new one (PRODUCER_FENCED, OUT_OF_ORDER_SEQUENCE: fatal, raised by
  confluent-kafka from flush, often as a SystemError in a delivery callback). Either way
  the service's checkpoint flush raises, its run fails and the supervisor (``run_services``)
  rebuilds it with a new producer; ``close`` purges the failed one instead of waiting for
  it. The replay sends exactly the unacknowledged bars again through a new producer
  (``live.runner.publish_acknowledged``).
- Consumer groups: their state is gone; each member loses its assignment, rejoins, finds
  no committed offset and starts at the earliest offset of the new, empty log.
- Side readers (``TopicTail``, no group): tansu answers a fetch beyond the end of the new
  log with nothing, not OFFSET_OUT_OF_RANGE, so a tail would wait at its old position and
  skip the new log's first messages. It now detects the recreated topic (new topic id) and
  re-reads it from the beginning.
- ``LoopTracker``: a failed run's consumed/produced counts are dropped (the rebuilt
  service consumes and produces them again), else the loop never looks drained; a rebuilt
  service's new side reader cannot re-read the lost log: what the old one read stays counted.
- Rebuilt services restore their state from the database, as after a crash. The exit
  monitor restored the trailing stop's peak as the fill price (found here: an exit came 3
  bars late); it now marks the closes held so far again.

What the embedded broker can and cannot guarantee: messages still in a topic when it stops
are gone with it. The lockstep test therefore stops it when the loop has DRAINED (every
bar handled by every service, outputs acknowledged, DB rows written): then nothing is lost
and the trades equal a run without restart. A restart while bars are IN FLIGHT (published,
not yet consumed by every service) loses, on this broker, what the log held and some
consumer had not read yet; only bars whose delivery was not yet acknowledged are safe
(the replay re-sends them). ``test_broker_restart_with_bars_in_flight_recovers`` checks
what does hold then. With a real Kafka (``KAFKA_BOOTSTRAP``, docker/ KRaft) the logs,
offsets and producer state survive a restart: consumers resume from their committed
offsets and nothing in flight is lost; the same code paths are exercised only partly (no
producer-id loss, no recreated topics).
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
from awet_dagster.infra import Endpoints
from awet_dagster.infra.broker import start_broker, stop_broker
from awet_dagster.infra.paths import HomeLayout
from awet_dagster.storage.db import connect
from live.bus import EventProducer, MetricSample
from live.kafka_settings import FAST_DEV_PRODUCER_SETTINGS, producer_config
from live.runner import LoopTracker, publish_acknowledged, replay_through_loop, start_loop
from live.topics import ensure_topics

log = logging.getLogger("test.broker_restart")


# --------------------------------------------------------------------------- own broker
class OwnBroker:
    """A tansu broker of this test only, restartable on the same port."""

    def __init__(self, home: Path) -> None:
        self.home = HomeLayout(home).ensure()
        self.log_path = self.home.logs_dir / "broker.log"
        info, _ = start_broker(self.home.broker_pid_file, self.log_path, timeout_s=30)
        self.port = info.port
        self.bootstrap = info.bootstrap
        self.topics: dict[str, int] = {}
        self.restarts = 0

    def ensure_topics(self, topics: dict[str, int]) -> None:
        self.topics.update(topics)
        ensure_topics(self.bootstrap, self.topics, timeout_s=30)

    def stop(self) -> None:
        assert stop_broker(self.home.broker_pid_file, timeout_s=10), "broker did not stop"

    def start(self) -> None:
        info, started = start_broker(self.home.broker_pid_file, self.log_path, timeout_s=30, port=self.port)
        assert started and info.bootstrap == self.bootstrap
        self.ensure_topics({})  # recreate every topic, as `awet infra up` does
        self.restarts += 1

    def restart(self, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@pytest.fixture
def own_broker(awet_tmp_home):
    from conftest import _start_watchdog

    watchdog = _start_watchdog(awet_tmp_home)  # stops the broker if this session is killed
    try:
        yield OwnBroker(awet_tmp_home)
    finally:
        stop_broker(HomeLayout(awet_tmp_home).broker_pid_file, timeout_s=10)
        watchdog.kill()
        watchdog.wait(10)


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
    from live.runner import lagging_of

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

    def __init__(self, fail: set[bytes] = frozenset(), hold: set[bytes] = frozenset(), fatal: bool = False) -> None:
        self.fail, self.hold, self.fatal = set(fail), set(hold), fatal
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
            if value in self.hold:
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

    import live.runner as runner

    monkeypatch.setattr(runner, "_DELIVERY_ROUND_S", 0.01)
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
    # Without renew the same producer retries; past the deadline it raises.
    stuck = _FakeRaw(hold={values[0]})
    with pytest.raises(Exception, match="not acknowledged"):
        publish_acknowledged(_FakeProducer(stuck), "raw", bars[:1], timeout_s=0.2)


# --------------------------------------------------------------------------- side reader
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_side_reader_rereads_a_topic_recreated_by_a_broker_restart(own_broker):
    """The new log grows PAST the tail's old position before the tail reads it: without the
    topic-id check the tail would read from its old position and skip the first messages."""
    from awet_dagster.contracts import MarketRawEvent
    from live.services._tail import TopicTail
    from tests.test_live_loop import _bar

    topic = f"t-{uuid.uuid4().hex[:10]}"
    own_broker.ensure_topics({topic: 1})
    got: list[str] = []
    t0 = datetime(2024, 1, 2, tzinfo=UTC)
    before = [_bar("T", t0) for _ in range(20)]
    after = [_bar("T", t0) for _ in range(50)]  # more than the old position (20)
    tail = TopicTail("restart-probe", own_broker.bootstrap, {topic: MarketRawEvent},
                     lambda _t, ev, _ts: got.append(ev.correlation_id), fetch_wait_ms=5).start()
    try:
        prod = _producer(own_broker.bootstrap)
        publish_acknowledged(prod, topic, before, timeout_s=30)
        deadline = time.monotonic() + 20
        while len(got) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(got) == 20
        own_broker.stop()
        time.sleep(2.0)
        own_broker.start()
        publish_acknowledged(_producer(own_broker.bootstrap), topic, after, timeout_s=30)
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
                                                        "rejected", "exits", "orders", "done")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_broker_restart_mid_lockstep_replay_loses_no_event(own_broker, test_config_for, database_url, tmp_path,
                                                           monkeypatch):
    """Lockstep replay; when half the bars went through (loop drained), the broker is
    stopped for 3 s, restarted on the same port with its topics recreated empty, and the
    replay goes on with the producer it had (whose id the new broker does not know). Every
    bar must be persisted and scored exactly once and the trades must equal
    ``run_backtest``'s on the same bars, as without a restart."""
    import live.runner as runner
    from tests.test_live_loop import _live_orders, _overrides, _sample_bars, _uid

    monkeypatch.setattr(runner, "_DELIVERY_ROUND_S", 3.0)  # a dead replay producer is renewed after 3 s, not 10
    base = test_config_for(tmp_path / "home")
    # A dead producer is found by its checkpoint flush timing out: 4 s instead of 10 (a flush on
    # a live broker takes milliseconds). The fill of an order decided just before the restart
    # comes from execution once it is rebuilt (that timeout + a rebuild, ~5-10 s): risk and
    # exit_monitor wait up to 30 s for it (default 2 s: they would book it one bar late, and
    # the trades would differ from the backtest's: late, not lost), and the consumers may
    # spend that long in one handler (max.poll.interval.ms, test profile: 10 s).
    cfg = base.model_copy(update={"kafka": base.kafka.model_copy(update={
        "flush_timeout_s": 4.0, "consumer": {**base.kafka.consumer, "max.poll.interval.ms": 60000}})})
    endpoints = Endpoints(database_url, own_broker.bootstrap)
    bars = _sample_bars(start=date(2019, 1, 1), end=date(2019, 9, 30))
    symbols = bars["symbol"].unique().to_list()
    times = bars["ts"].unique().sort()
    cut = times[len(times) // 2]
    first, second = bars.filter(bars["ts"] < cut), bars.filter(bars["ts"] >= cut)
    t, ns = _loop_topics(), f"ns-{_uid()}"
    own_broker.ensure_topics({name: 1 for name in t.values()})
    overrides = _overrides(t, ns, tmp_path)
    for name in ("risk", "exit_monitor"):
        overrides[name]["fill_wait_s"] = 30.0
    tracker = LoopTracker()
    loop = start_loop(cfg, endpoints, overrides=overrides, tracker=tracker, timeout_s=270, backoff_s=0.2,
                      max_restarts=10)
    producer = _producer(own_broker.bootstrap)
    renewed = []

    def renew() -> EventProducer:
        renewed.append(_producer(own_broker.bootstrap))
        return renewed[-1]

    timing: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        n1, drained = replay_through_loop(producer, first, tracker, topic=t["raw"], lockstep=True,
                                          drain_timeout_s=120, renew_producer=renew)
        assert drained, tracker.lagging()
        timing["first_half_s"] = time.monotonic() - t0
        before = _counts(database_url, symbols, ns)
        t0 = time.monotonic()
        own_broker.restart(down_s=3.0)
        # The first step after the restart: every producing service is rebuilt meanwhile.
        n_step = second.filter(second["ts"] == cut).height
        n2a, drained = replay_through_loop(producer, second.head(n_step), tracker, topic=t["raw"], lockstep=True,
                                           drain_timeout_s=120, renew_producer=renew)
        assert drained, tracker.lagging()
        timing["restart_and_first_step_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        n2b, drained = replay_through_loop(renewed[-1] if renewed else producer, second.tail(second.height - n_step),
                                           tracker, topic=t["raw"], lockstep=True, drain_timeout_s=120,
                                           renew_producer=renew)
        assert drained, tracker.lagging()
        timing["second_half_s"] = time.monotonic() - t0
        n2 = n2a + n2b
    finally:
        loop.stop()
        results = loop.join(60)
    assert not loop.alive, "the loop did not stop within 60 s"
    after = _counts(database_url, symbols, ns)
    restarts = {n: r.restarts for n, r in results.items()}
    log.warning("broker restart: before %s after %s; service restarts %s; renewed replay producers %d; %s",
                before, after, restarts, len(renewed), {k: round(v, 1) for k, v in timing.items()})
    assert (n1, n2) == (first.height, second.height) and own_broker.restarts == 1
    assert sum(restarts.values()) >= 1, "services whose producer lost its id must have been rebuilt"
    assert before["bars"] == before["signals"] == first.height
    # Every bar persisted and scored exactly once (idempotent writes; no loss, no double row).
    assert after["bars"] == after["distinct_bars"] == bars.height
    assert after["signals"] == after["distinct_signals"] == bars.height
    assert renewed, "the replay producer lost its producer id with the broker: it must have been renewed"
    # Trades: exactly the backtest's on the same bars, as without a restart.
    expected = run_backtest(bars, None, None, None, cfg)
    want = sorted((r["ts"], r["symbol"], r["side"], r["qty"], r["intent"])
                  for r in expected.orders.iter_rows(named=True))
    got = sorted((o["ts"], o["symbol"], o["side"], o["qty"], o["intent"]) for o in _live_orders(database_url, ns))
    assert len(want) >= 4, "the sample period should trade"
    assert any(ts < cut for ts, *_ in want) and any(ts >= cut for ts, *_ in want), "trades on both sides"
    assert got == want
    assert after["fills"] == expected.fills.height


@pytest.mark.timeout(90)
def test_a_failed_service_closes_without_waiting_for_its_dead_producer(kafka_bootstrap, make_topic):
    """close() after a failed run purges the producer: what it holds is produced again by the
    replacement; flushing it would delay the rebuild by the flush timeout (and keep alive an
    idempotent producer that a restarted tansu may fence the replacement with)."""
    from live.bus import BusService, DeliveryError, Output
    from live.kafka_settings import consumer_config
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
    assert len(dead) == 0


def _rows_for(database_url: str, table: str, keys: list[tuple[str, datetime]]) -> dict[tuple[str, datetime], int]:
    """{(symbol, ts): rows} in ``table`` for those bars (0 when absent)."""
    with connect(database_url) as conn:
        rows = conn.execute(f"SELECT symbol, ts, count(*) FROM {table} WHERE symbol = ANY(%s) GROUP BY symbol, ts",
                            (sorted({s for s, _ in keys}),)).fetchall()
    got = {(s, ts): n for s, ts, n in rows}
    return {k: got.get(k, 0) for k in keys}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_broker_restart_with_bars_in_flight_recovers(own_broker, test_config_for, database_url, tmp_path,
                                                     monkeypatch):
    """The broker is stopped while the loop is still working on bars (published and
    acknowledged, not yet consumed by every service), and bars are published WHILE it is
    down. What holds on the memory broker, and is asserted:
    - every bar whose delivery was not acknowledged before the stop (published during the
      outage) is delivered once the broker is back and processed: persisted and scored once;
    - so is every bar published after the restart; the loop recovers without giving up;
    - no bar is persisted or scored twice, no order is duplicated (idempotent writes).
    What does NOT hold on the memory broker: a bar that was acknowledged but not yet consumed
    by some service is gone with the log; that service never sees it (counted below, and
    reported). The same goes for outputs in flight (a fill report, a scored signal). A real
    Kafka keeps them: consumers resume from their committed offsets after the restart.
    Free-running (no lockstep: the tracker cannot drain across lost messages), so trades are
    not compared with the backtest here."""
    import live.runner as runner
    from awet_dagster.streaming import bars_to_events
    from tests.test_live_loop import _overrides, _sample_bars, _uid

    monkeypatch.setattr(runner, "_DELIVERY_ROUND_S", 3.0)
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
    for name in ("risk", "exit_monitor"):
        # Free-running, fills are late anyway, and a fill report lost with the log never
        # comes: waiting 2 s (default) for it on every later bar of the symbol would make a
        # batch of hundreds of bars take minutes (and the loop slow to stop).
        overrides[name]["fill_wait_s"] = 0.2
    tracker = LoopTracker()
    loop = start_loop(cfg, endpoints, overrides=overrides, tracker=tracker, timeout_s=200, backoff_s=0.2,
                      max_restarts=10)
    renew = lambda: _producer(own_broker.bootstrap)  # noqa: E731
    try:
        n, drained = replay_through_loop(_producer(own_broker.bootstrap), warm, tracker, topic=t["raw"],
                                         lockstep=True, drain_timeout_s=60, renew_producer=renew)
        assert drained and n == warm.height, tracker.lagging()
        producer = publish_acknowledged(_producer(own_broker.bootstrap), t["raw"], in_flight, timeout_s=30)
        own_broker.stop()  # the loop is still working on `in_flight`
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
        time.sleep(2.0)  # let late duplicates, if any, land before counting
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
            if part != "in_flight":
                assert min(rows.values()) == 1, (table, part, [k for k, v in rows.items() if not v][:5])
    with connect(database_url) as conn:
        coids = [r[0] for r in conn.execute("SELECT client_order_id FROM orders WHERE payload->>'ns' = %s",
                                            (ns,)).fetchall()]
        decided = conn.execute("SELECT count(DISTINCT correlation_id) FROM audit_log WHERE actor = 'risk' AND "
                               "correlation_id = ANY(%s)", ([e.correlation_id for e in in_flight],)).fetchone()[0]
    assert len(coids) == len(set(coids))
    lost = {table: len(in_flight) - sum(parts["in_flight"].values()) for table, parts in counts.items()}
    lost["risk decisions"] = len(in_flight) - decided  # signals in flight to risk when the log was lost
    log.warning("in flight at the stop: %d bars; lost on the memory broker: %s; bars sent while down: %d "
                "(acknowledged after %.1fs); service restarts %s", len(in_flight), lost, len(during), resend_s,
                {n: r.restarts for n, r in results.items()})


# --------------------------------------------------------------------------- exit monitor restart
class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def execute(self, sql, params):
        assert "FROM bars" in sql
        symbol, _bar_type, since, before = params
        return type("R", (), {"fetchall": lambda _self: [(c,) for s, ts, c in self.rows
                                                         if s == symbol and since <= ts < before]})()


class _Conn:
    def __init__(self, rows):
        self._rows = _Rows(rows)

    def get(self):
        return self._rows


def test_exit_monitor_rebuilt_mid_position_exits_like_the_running_one(test_config_for, tmp_path):
    """A rebuilt exit monitor (broker restart, crash) restores the position from the fills,
    whose peak is the fill price: it must mark the closes held so far again, or a trailing
    stop set by an earlier high close would fire late (found by the broker-restart test)."""
    from datetime import timedelta

    from awet_dagster.risk.portfolio import Fill
    from live.services.exit_monitor import ExitService
    from tests.test_live_loop import _bar

    cfg = test_config_for(tmp_path / "home")
    t0 = datetime(2024, 3, 1, tzinfo=UTC)
    closes = [100.0, 102.5, 102.9, 100.8]  # trailing 2% from 102.9 -> 100.84: the 4th bar exits
    bars = [_bar("X", t0 + timedelta(days=i), c) for i, c in enumerate(closes)]
    fill = Fill("coid-x", "X", "buy", 10, 100.0, 0.0, t0, "corr-x", "entry")

    running = ExitService(cfg, _Conn([]), exits_topic="exits")
    running.ledger.portfolio.apply_fill(fill)
    out = [running._handle(b) for b in bars]
    assert [len(o) for o in out] == [0, 0, 0, 1] and out[3][0].event.reason == "trailing"

    rebuilt = ExitService(cfg, _Conn([(b.symbol, b.ts, b.close) for b in bars[:3]]), exits_topic="exits")
    rebuilt.ledger.portfolio.apply_fill(fill)  # what ledger.rebuild books from the fills table
    rebuilt._restored = {"X"}
    again = rebuilt._handle(bars[3])
    assert [(o.event.reason, o.event.ts) for o in again] == [("trailing", bars[3].ts)]
    assert rebuilt.monitor._bars_held == running.monitor._bars_held == {("X", "corr-x"): 4}
