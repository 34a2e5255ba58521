"""The shared Kafka loop (awet_kafka/bus.py) against real brokers: every test runs on the session's
Kafka and again on the embedded fallback, tansu (the smoke subset that keeps it honest)."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from awet_dagster.contracts import DeadLetter, MarketRawEvent, dlq_topic
from awet_dagster.contracts.examples import example_events
from awet_kafka.bus import BusService, MetricSample, Output, PublishFirst, RetryLater
from awet_kafka.dead_letters import DLQ_REASON_HEADER
from awet_kafka.producer import CORRELATION_HEADER, DeliveryError, EventProducer
from awet_kafka.settings import (
    FAST_DEV_CONSUMER_SETTINGS,
    FAST_DEV_PRODUCER_SETTINGS,
    consumer_config,
    producer_config,
)

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "bus_child.py"


# --------------------------------------------------------------------------- brokers
@pytest.fixture(params=["kafka", "tansu"])
def kafka_bootstrap(request: pytest.FixtureRequest, infra_endpoints) -> str:
    """This module's broker: the session's (Kafka) and the tansu fallback, each test on both."""
    if request.param == "tansu":
        return request.getfixturevalue("tansu_bootstrap")
    return infra_endpoints.kafka_bootstrap


@pytest.fixture
def make_topic(kafka_bootstrap: str):
    from awet_kafka.admin import ensure_topics

    def _make(partitions: int = 1) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        ensure_topics(kafka_bootstrap, {name: partitions}, timeout_s=30)
        return name

    return _make


# --------------------------------------------------------------------------- helpers
def _producer(bootstrap: str, **extra) -> EventProducer:
    return EventProducer(producer_config(bootstrap, producer={**FAST_DEV_PRODUCER_SETTINGS, **extra}))


def _service(bootstrap: str, topics, handler, *, group: str | None = None, models=None, **kw) -> BusService:
    group = group or f"g-{uuid.uuid4().hex[:8]}"
    return BusService(
        "test-svc",
        topics,
        handler,
        consumer_config=consumer_config(bootstrap, group, consumer=FAST_DEV_CONSUMER_SETTINGS),
        producer=kw.pop("producer", None) or _producer(bootstrap),
        topic_models=models,
        poll_timeout_s=kw.pop("poll_timeout_s", 0.2),
        **kw,
    )


def _read_all(bootstrap: str, topic: str, n: int, timeout_s: float = 20.0):
    """Read the first ``n`` messages of partition 0 by assignment (no group join: fast)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out, deadline = [], time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                out.append(m)
    finally:
        c.close()
    return out


def _published_bars(bootstrap: str, topic: str, n: int) -> list[MarketRawEvent]:
    """Bars S0..S<n-1> on ``topic``, acknowledged, before the service under test starts."""
    p = _producer(bootstrap)
    sent = [_bar(f"S{i}") for i in range(n)]
    for ev in sent:
        p.send(topic, ev)
    p.flush(10)
    return sent


def _committed(bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        c.close()


def _bar(symbol: str = "AAPL", corr: str | None = None) -> MarketRawEvent:
    ev = example_events()[MarketRawEvent]
    return ev.model_copy(update={"symbol": symbol, "correlation_id": corr or f"c-{uuid.uuid4().hex[:6]}",
                                 "event_id": str(uuid.uuid4())})


def _child(bootstrap: str, topic: str, out: str, group: str, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(CHILD), "--bootstrap", bootstrap, "--topic", topic, "--out", out,
         "--group", group, "--mode", mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )


# --------------------------------------------------------------------------- round trip
@pytest.mark.timeout(90)
def test_every_contract_round_trips_through_the_broker(kafka_bootstrap, make_topic):
    examples = example_events(correlation_id="corr-rt")
    topics = {make_topic(): model for model in examples}
    prod = _producer(kafka_bootstrap)
    for topic, model in topics.items():
        prod.send(topic, examples[model])
    assert prod.flush(10) == len(topics)

    seen: dict[str, tuple] = {}

    def handle(event, ctx):
        seen[ctx.topic] = (event, ctx)
        return ()

    with _service(kafka_bootstrap, list(topics), handle, models=topics) as svc:
        stats = svc.run(max_messages=len(topics), timeout_s=60)
    assert stats.processed == len(topics), stats
    assert stats.dead_lettered == 0
    for topic, model in topics.items():
        event, ctx = seen[topic]
        assert type(event) is model
        assert event == examples[model]
        assert ctx.correlation_id == "corr-rt"
        assert ctx.header(CORRELATION_HEADER) == b"corr-rt"
        assert ctx.key == examples[model].kafka_key()  # keyed by symbol (None when no symbol)


# --------------------------------------------------------------------------- poison messages
@pytest.mark.timeout(90)
def test_poison_messages_go_to_dlq_and_the_loop_keeps_going(kafka_bootstrap, make_topic):
    topic, out = make_topic(), make_topic()
    good1, good2, boom = _bar("AAPL"), _bar("MSFT"), _bar("BOOM", corr="corr-boom")
    naive = good1.model_dump_json().replace('"ts":"2024-01-02T14:30:00Z"', '"ts":"2024-01-02T14:30:00"')
    assert naive != good1.model_dump_json()
    raw_bad = [
        (b"{not json", "invalid_json"),
        (b'{"foo": 1}', "schema_mismatch"),
        (naive.encode(), "schema_mismatch"),
        # A producer still on version 1 (float volume, "sample" source): refused as a version.
        (good1.model_dump_json().replace('"schema_version":2', '"schema_version":1').encode(), "unsupported_version"),
    ]
    prod = _producer(kafka_bootstrap)
    prod.send(topic, good1)
    for value, _ in raw_bad:
        prod.send_raw(topic, value, key=b"K", headers=[("trace", b"t1")])
    prod.send(topic, boom)
    prod.send(topic, good2)
    prod.flush(10)

    def handle(event, ctx):
        if event.symbol == "BOOM":
            raise RuntimeError("handler exploded")
        yield Output(out, event)

    metrics: list[MetricSample] = []
    group = f"g-{uuid.uuid4().hex[:8]}"
    with _service(kafka_bootstrap, [topic], handle, group=group, models={topic: MarketRawEvent},
                  on_metrics=metrics.append) as svc:
        stats = svc.run(max_messages=7, timeout_s=60)
    assert (stats.processed, stats.produced, stats.dead_lettered) == (2, 2, 5), stats

    # The good messages after the poison ones were processed.
    echoed = [MarketRawEvent.model_validate_json(m.value()) for m in _read_all(kafka_bootstrap, out, 2)]
    assert echoed == [good1, good2]

    letters = _read_all(kafka_bootstrap, dlq_topic(topic), 5)
    assert len(letters) == 5
    decoded = [DeadLetter.model_validate_json(m.value()) for m in letters]
    expected = [*raw_bad, (boom.model_dump_json().encode(), "handler_error")]
    for msg, letter, (orig, reason) in zip(letters, decoded, expected, strict=True):
        assert letter.reason == reason
        assert dict(msg.headers())[DLQ_REASON_HEADER] == reason.encode()
        assert base64.b64decode(letter.original_value_b64) == orig
        assert letter.original_topic == topic and letter.original_partition == 0
        assert letter.service == "test-svc"
    assert [d.original_offset for d in decoded] == [1, 2, 3, 4, 5]
    assert "naive datetime" in decoded[2].error
    assert "market_raw schema_version 1 is not supported: this consumer reads major version 2" in decoded[3].error
    assert decoded[0].original_headers[-1] == ("trace", base64.b64encode(b"t1").decode())
    assert letters[0].key() == b"K"
    boom_letter = decoded[4]
    assert boom_letter.error_type == "RuntimeError" and "handler exploded" in boom_letter.error
    assert boom_letter.correlation_id == "corr-boom"

    # Everything, poison included, was committed: a restart does not loop on them.
    assert _committed(kafka_bootstrap, group, topic) == 7
    names = [m.name for m in metrics]
    assert names.count("messages_in") == 7 and names.count("dead_letters") == 5
    assert names.count("messages_out") == 2 and "handle_seconds" in names


# --------------------------------------------------------------------------- bounded runs / stop
@pytest.mark.timeout(60)
def test_bounded_run_returns_within_timeout_without_messages(kafka_bootstrap, make_topic):
    topic = make_topic()
    with _service(kafka_bootstrap, [topic], lambda e, c: (), models={topic: MarketRawEvent}) as svc:
        t0 = time.monotonic()
        stats = svc.run(timeout_s=2.0)
        # the run lasted its budget (a lower bound cannot be broken by a busy machine; a hang is
        # what the test timeout catches)
        assert time.monotonic() - t0 >= 1.9
        assert stats.stopped_by == "timeout" and stats.consumed == 0

        # stop() from another thread ends an unbounded run (no timeout given: it ends by the stop).
        timer = threading.Timer(0.5, svc.stop)
        timer.start()
        stats = svc.run()
        assert stats.stopped_by == "stop"


def test_signal_handlers_only_in_main_thread(kafka_bootstrap, make_topic):
    topic = make_topic()
    with _service(kafka_bootstrap, [topic], lambda e, c: (), models={topic: MarketRawEvent}) as svc:
        result: list[bool] = []
        t = threading.Thread(target=lambda: result.append(svc.install_signal_handlers()))
        t.start()
        t.join(5)
        assert result == [False]
        before = signal.getsignal(signal.SIGTERM)
        assert svc.install_signal_handlers() is True
        assert signal.getsignal(signal.SIGTERM) != before
    assert signal.getsignal(signal.SIGTERM) == before  # close() restored it


# --------------------------------------------------------------------------- crash / signals
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_crash_between_flush_and_commit_redelivers(kafka_bootstrap, make_topic):
    topic, out = make_topic(), make_topic()
    group = f"g-crash-{uuid.uuid4().hex[:8]}"
    event = _bar("NVDA")
    prod = _producer(kafka_bootstrap)
    prod.send(topic, event)
    prod.flush(10)

    child = _child(kafka_bootstrap, topic, out, group, "crash_after_flush")
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 17, stdout + stderr
    assert "FLUSHED" in stdout
    # Its output was delivered, but the input offset was never committed...
    assert [MarketRawEvent.model_validate_json(m.value()) for m in _read_all(kafka_bootstrap, out, 1)] == [event]
    assert _committed(kafka_bootstrap, group, topic) < 0

    # ...so the next consumer of the same group gets the message again (no loss).
    got = []
    with _service(kafka_bootstrap, [topic], lambda e, c: got.append(e) or (), group=group,
                  models={topic: MarketRawEvent}) as svc:
        stats = svc.run(max_messages=1, timeout_s=60)
    assert stats.processed == 1 and got == [event]
    assert _committed(kafka_bootstrap, group, topic) == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_finishes_commits_and_exits_cleanly(kafka_bootstrap, make_topic):
    topic, out = make_topic(), make_topic()
    group = f"g-term-{uuid.uuid4().hex[:8]}"
    events = [_bar(s) for s in ("AAPL", "MSFT", "AMZN")]
    prod = _producer(kafka_bootstrap)
    for e in events:
        prod.send(topic, e)
    prod.flush(10)

    child = _child(kafka_bootstrap, topic, out, group, "serve")
    try:
        echoed = _read_all(kafka_bootstrap, out, 3, timeout_s=60)
        assert len(echoed) == 3
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == 0, stdout + stderr
    stats = json.loads(stdout.split("STATS ", 1)[1])
    assert stats["processed"] == 3 and stats["stopped_by"] == "stop"
    assert _committed(kafka_bootstrap, group, topic) == 3


# --------------------------------------------------------------------------- delivery failure
@pytest.mark.timeout(60)
def test_failed_delivery_raises_and_does_not_commit(kafka_bootstrap, make_topic):
    topic = make_topic()
    group = f"g-fail-{uuid.uuid4().hex[:8]}"
    p = _producer(kafka_bootstrap)
    p.send(topic, _bar())
    p.flush(10)
    # The output producer points at a dead address: deliveries time out after 1.5 s.
    failing = EventProducer(producer_config("127.0.0.1:1", producer={"message.timeout.ms": 1500}))
    out = make_topic()
    with _service(kafka_bootstrap, [topic], lambda e, c: [Output(out, e)], group=group,
                  models={topic: MarketRawEvent}, producer=failing, flush_timeout_s=10) as svc:
        with pytest.raises(DeliveryError):
            svc.run(max_messages=1, timeout_s=30)
    assert _committed(kafka_bootstrap, group, topic) < 0


@pytest.mark.timeout(60)
def test_retry_later_stops_without_commit_or_dead_letter(kafka_bootstrap, make_topic):
    topic = make_topic()
    group = f"g-retry-{uuid.uuid4().hex[:8]}"
    p = _producer(kafka_bootstrap)
    p.send(topic, _bar())
    p.flush(10)

    def handle(event, ctx):
        raise RetryLater("database down")

    with _service(kafka_bootstrap, [topic], handle, group=group, models={topic: MarketRawEvent}) as svc:
        with pytest.raises(RetryLater):
            svc.run(max_messages=1, timeout_s=30)
        # Its position is past the uncommitted message: this instance must not go on.
        with pytest.raises(RuntimeError, match="rebuild the service"):
            svc.run(max_messages=1, timeout_s=1)
    assert _committed(kafka_bootstrap, group, topic) < 0
    assert _read_all(kafka_bootstrap, dlq_topic(topic), 1, timeout_s=2) == []


# --------------------------------------------------------------------------- batch hooks
@pytest.mark.timeout(90)
def test_batch_hooks_run_once_per_batch_and_outputs_wait_for_before_produce(kafka_bootstrap, make_topic):
    topic, out = make_topic(), make_topic()
    sent = _published_bars(kafka_bootstrap, topic, 5)
    calls: list[tuple] = []

    def before_batch(batch):
        calls.append(("batch", len(batch)))

    def handle(event, ctx):
        calls.append(("handle", event.symbol))
        return [Output(out, event)]

    def before_produce(contexts):
        # Nothing of this batch may be on the output topic yet.
        calls.append(("produce", len(contexts), len(_read_all(kafka_bootstrap, out, 1, timeout_s=0.5))))

    with _service(kafka_bootstrap, [topic], handle, models={topic: MarketRawEvent, out: MarketRawEvent},
                  before_batch=before_batch, before_produce=before_produce) as svc:
        stats = svc.run(max_messages=5, timeout_s=30)
    assert stats.processed == 5 and stats.produced == 5
    batches = [c for c in calls if c[0] == "batch"]
    produces = [c for c in calls if c[0] == "produce"]
    assert sum(n for _, n in batches) == 5 and len(produces) == len(batches)
    assert calls[0][0] == "batch" and all(c[2] == 0 for c in produces[:1])  # held until before_produce
    assert [m.key() for m in _read_all(kafka_bootstrap, out, 5)] == [e.kafka_key() for e in sent]


@pytest.mark.timeout(90)
def test_publish_first_publishes_the_batch_so_far_then_hands_the_message_back_once(kafka_bootstrap, make_topic):
    topic, out = make_topic(), make_topic()
    group = f"g-first-{uuid.uuid4().hex[:8]}"
    sent = _published_bars(kafka_bootstrap, topic, 5)
    calls: list[tuple] = []
    metrics: list[int] = []

    def before_batch(batch):
        calls.append(("batch", len(batch)))

    def handle(event, ctx):
        if event.symbol == "S3" and not any(c == ("again", "S3") for c in calls):
            calls.append(("again", "S3"))
            # What it needs comes from the outputs held so far: none of them is out yet.
            calls.append(("published", len(_read_all(kafka_bootstrap, out, 1, timeout_s=0.5))))
            raise PublishFirst("S3 needs what S0..S2 cause")
        calls.append(("handle", event.symbol, len(_read_all(kafka_bootstrap, out, 3, timeout_s=5))
                      if event.symbol == "S3" else None))
        return [Output(out, event)]

    def on_metrics(sample):
        if sample.name == "messages_in":
            metrics.append(sample.offset)
        elif sample.name == "checkpoint_seconds":
            calls.append(("checkpoint",))

    with _service(kafka_bootstrap, [topic], handle, group=group, models={topic: MarketRawEvent, out: MarketRawEvent},
                  before_batch=before_batch, before_produce=lambda contexts: calls.append(("produce", len(contexts))),
                  on_metrics=on_metrics, batch_size=500, commit_interval_s=0.0) as svc:
        deadline = time.monotonic() + 30
        stats = svc.run(max_messages=5, timeout_s=30)
        assert time.monotonic() < deadline
    assert stats.processed == 5 and stats.produced == 5 and stats.dead_lettered == 0
    assert ("published", 0) in calls
    # S3 is handled again after S0..S2's outputs went out, and only then.
    assert ("handle", "S3", 3) in calls, calls
    assert [c[1] for c in calls if c[0] == "handle"] == ["S0", "S1", "S2", "S3", "S4"]
    assert sorted(metrics) == [0, 1, 2, 3, 4]  # every message counted once
    # No checkpoint (which reports what was counted in as consumed) while S3 is carried.
    cut, again = calls.index(("again", "S3")), next(i for i, c in enumerate(calls) if c[:2] == ("handle", "S3"))
    assert ("checkpoint",) not in calls[cut:again], calls
    assert [m.key() for m in _read_all(kafka_bootstrap, out, 5)] == [e.kafka_key() for e in sent]
    assert _committed(kafka_bootstrap, group, topic) == 5


@pytest.mark.timeout(90)
def test_before_produce_retry_later_publishes_and_commits_nothing(kafka_bootstrap, make_topic):
    topic, out = make_topic(), make_topic()
    group = f"g-hold-{uuid.uuid4().hex[:8]}"
    p = _producer(kafka_bootstrap)
    p.send(topic, _bar())
    p.flush(10)

    def before_produce(contexts):
        raise RetryLater("audit table down")

    with _service(kafka_bootstrap, [topic], lambda ev, ctx: [Output(out, ev)], group=group,
                  models={topic: MarketRawEvent, out: MarketRawEvent}, before_produce=before_produce) as svc:
        with pytest.raises(RetryLater):
            svc.run(max_messages=1, timeout_s=30)
    assert _read_all(kafka_bootstrap, out, 1, timeout_s=2) == []
    assert _committed(kafka_bootstrap, group, topic) < 0


# --------------------------------------------------------------------------- unit-level
def test_consumer_config_forces_manual_commit_and_layers_settings():
    conf = consumer_config("h:1", "p.svc", client={"client.rack": "a", "session.timeout.ms": 1},
                           consumer={"session.timeout.ms": 6000})
    assert conf["enable.auto.commit"] is False and conf["auto.offset.reset"] == "earliest"
    assert conf["session.timeout.ms"] == 6000 and conf["client.rack"] == "a"
    assert "fetch.wait.max.ms" not in conf  # fast-join settings are opt-in, not defaults
    with pytest.raises(ValueError, match="enable.auto.commit"):
        consumer_config("h:1", "g", consumer={"enable.auto.commit": True})


def test_producer_refuses_wrong_contract_for_registered_topic():
    p = EventProducer(producer_config("127.0.0.1:1"))
    with pytest.raises(TypeError, match="market.raw carries MarketRawEvent|carries MarketRawEvent"):
        p.send("market.raw", example_events()[DeadLetter])



class _CommitCounter:
    """The service's consumer, counting async commits in flight (the proxy sees each call;
    the service's own callback, chained below, sees each answer)."""

    def __init__(self, consumer) -> None:
        self._c = consumer
        self.in_flight = self.peak = self.sent = 0

    def commit(self, *args, **kwargs):
        if kwargs.get("asynchronous", True):
            self.in_flight += 1
            self.sent += 1
            self.peak = max(self.peak, self.in_flight)
        return self._c.commit(*args, **kwargs)

    def answered(self, err, partitions) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def __getattr__(self, name):
        return getattr(self._c, name)


def test_at_most_one_async_commit_in_flight_and_every_offset_committed(kafka_bootstrap, make_topic):
    """A commit is due after every message here (batch 1, interval 0); while one is in flight
    the next ones coalesce into the commit its answer triggers, and at the end everything
    handled is committed."""
    topic = make_topic()
    prod = _producer(kafka_bootstrap)
    for i in range(200):
        prod.send(topic, _bar(f"S{i % 7}"))
    prod.flush(10)
    group = f"g-{uuid.uuid4().hex[:8]}"
    counter: _CommitCounter | None = None

    def on_commit(err, partitions) -> None:
        if counter is not None:
            counter.answered(err, partitions)

    conf = {**consumer_config(kafka_bootstrap, group, consumer=FAST_DEV_CONSUMER_SETTINGS), "on_commit": on_commit}
    svc = BusService("test-svc", [topic], lambda e, c: (), consumer_config=conf, producer=_producer(kafka_bootstrap),
                     topic_models={topic: MarketRawEvent}, poll_timeout_s=0.2, batch_size=1, commit_interval_s=0.0)
    counter = _CommitCounter(svc._consumer)
    svc._consumer = svc._source = counter
    with svc:
        stats = svc.run(max_messages=200, timeout_s=60)
    assert stats.processed == 200
    assert counter.peak == 1 and counter.sent >= 1, (counter.peak, counter.sent)
    assert _committed(kafka_bootstrap, group, topic) == 200


@pytest.mark.timeout(120)
def test_a_stop_mid_batch_ends_the_batch_and_the_rest_is_redelivered(kafka_bootstrap, make_topic):
    """A slow handler (risk waiting for fills, bar by bar) in a long batch: a stop returns after
    the message in hand, commits what was handled, and a new instance gets the rest."""
    topic = make_topic()
    group = f"g-stop-{uuid.uuid4().hex[:8]}"
    events = [_bar(f"S{i:02d}") for i in range(20)]
    prod = _producer(kafka_bootstrap)
    for e in events:
        prod.send(topic, e)
    prod.flush(10)
    handled: list = []
    holder: dict = {}

    def slow(event, ctx):
        handled.append(event)
        if len(handled) == 3:
            holder["svc"].stop()  # as SIGTERM does, from another thread in real life
        time.sleep(0.2)
        return ()

    with _service(kafka_bootstrap, [topic], slow, group=group, models={topic: MarketRawEvent},
                  batch_size=50) as svc:
        holder["svc"] = svc
        stats = svc.run(timeout_s=60)
        assert stats.stopped_by == "stop" and len(handled) == 3, len(handled)  # not the rest of its batch
        assert _committed(kafka_bootstrap, group, topic) == 3
        with pytest.raises(RuntimeError, match=r"stopped after \d of a batch of \d+"):
            svc.run(timeout_s=1)  # its position is past uncommitted messages: rebuild it
    rest: list = []
    with _service(kafka_bootstrap, [topic], lambda e, c: rest.append(e) or (), group=group,
                  models={topic: MarketRawEvent}) as svc:
        svc.run(max_messages=17, timeout_s=60)
    assert [e.event_id for e in handled + rest] == [e.event_id for e in events]


@pytest.mark.timeout(60)
def test_a_fill_wait_returns_at_once_when_the_service_is_asked_to_stop():
    import threading

    from live.services._common import wait_until as wait_for_fills

    cond, stop = threading.Condition(), threading.Event()
    threading.Timer(0.3, stop.set).start()
    with cond:  # an hour's wait: only the stop request can end it within the test's timeout
        assert wait_for_fills(cond, lambda: False, 3600.0, stop.is_set) is False
    with cond:
        assert wait_for_fills(cond, lambda: True, 30.0, stop.is_set) is True
