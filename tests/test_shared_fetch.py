"""One fetch of a topic shared by the services of a process (awet_kafka/shared_fetch.py), on the
real embedded broker: every service still gets every message once, in partition order,
and commits its own group's offsets; a restart resumes from them; what the shared log
cannot serve falls back to the service's own consumer; a wedged reader never blocks the
others."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from awet_dagster.contracts import MarketRawEvent
from awet_kafka.bus import BusService
from awet_kafka.producer import EventProducer
from awet_kafka.settings import FAST_DEV_CONSUMER_SETTINGS, FAST_DEV_PRODUCER_SETTINGS, consumer_config, producer_config
from live.registry import service_inputs, service_spec
from live.supervisor import shared_fetches
from awet_kafka.shared_fetch import SharedFetches, Subscription

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def _bars(topic: str, bootstrap: str, n: int, start: int = 0) -> None:
    prod = EventProducer(producer_config(bootstrap, producer=FAST_DEV_PRODUCER_SETTINGS))
    for i in range(start, start + n):
        sym = f"S{i % 7}"
        ev = MarketRawEvent(correlation_id=f"c-{i}", symbol=sym, bar_type="minute",
                            ts=T0 + timedelta(minutes=i), open=10.0, high=11.0, low=9.0, close=10.5,
                            volume=1000, source="stub")
        prod.send(topic, ev)
    assert prod.flush(20) == n


class _Svc:
    """A BusService on ``topic`` that records what it handled: (partition, offset, correlation id)."""

    def __init__(self, bootstrap: str, topic: str, fetches: SharedFetches | None, group: str | None = None) -> None:
        self.group = group or f"g-{uuid.uuid4().hex[:8]}"
        self.seen: list[tuple[int, int, str]] = []
        self.bus = BusService(
            f"svc-{self.group}", [topic], self._handle,
            consumer_config=consumer_config(bootstrap, self.group, consumer=FAST_DEV_CONSUMER_SETTINGS),
            producer=producer_config(bootstrap, producer=FAST_DEV_PRODUCER_SETTINGS),
            topic_models={topic: MarketRawEvent}, poll_timeout_s=0.1, shared_fetch=fetches)

    def _handle(self, ev, ctx):
        self.seen.append((ctx.partition, ctx.offset, ev.correlation_id))
        return ()

    @property
    def shared(self) -> bool:
        return isinstance(self.bus._source, Subscription)

    def run(self, n: int, timeout_s: float = 30.0):
        return self.bus.run(max_messages=n, timeout_s=timeout_s)


def _committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return [tp.offset for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)]
    finally:
        c.close()


def _in_partition_order(seen: list[tuple[int, int, str]]) -> bool:
    last: dict[int, int] = {}
    for p, off, _ in seen:
        if off <= last.get(p, -1):
            return False
        last[p] = off
    return True


def test_services_sharing_a_fetch_each_get_every_message_once_and_commit_their_own_offsets(
        kafka_bootstrap, make_topic):
    topic = make_topic(partitions=2)
    _bars(topic, kafka_bootstrap, 300)
    fetches = SharedFetches({frozenset([topic]): 3})
    svcs = [_Svc(kafka_bootstrap, topic, fetches) for _ in range(3)]
    try:
        assert all(s.shared for s in svcs)
        threads = [threading.Thread(target=s.run, args=(300,)) for s in svcs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        fetch = next(iter(fetches._fetches.values()))
        # The broker served each message once, to the shared fetch, not once per service.
        assert fetch.fetched == 300
        for s in svcs:
            assert sorted(c for _, _, c in s.seen) == sorted(f"c-{i}" for i in range(300))
            assert _in_partition_order(s.seen)
        ends = {p: max(o for q, o, _ in svcs[0].seen if q == p) + 1 for p in (0, 1)}
    finally:
        for s in svcs:
            s.bus.close()
        fetches.close()
    for s in svcs:  # each group committed what it handled, as with a private consumer
        assert _committed(kafka_bootstrap, s.group, topic, 2) == [ends[0], ends[1]]


def test_a_rebuilt_service_resumes_from_its_own_committed_offsets(kafka_bootstrap, make_topic):
    topic = make_topic()
    _bars(topic, kafka_bootstrap, 200)
    fetches = SharedFetches({frozenset([topic]): 2})
    a, b = _Svc(kafka_bootstrap, topic, fetches), _Svc(kafka_bootstrap, topic, fetches)
    try:
        tb = threading.Thread(target=b.run, args=(300,))
        tb.start()
        a.run(120)  # then "crashes" at a checkpoint: close commits what it handled
        a.bus.close()
        _bars(topic, kafka_bootstrap, 100, start=200)
        a2 = _Svc(kafka_bootstrap, topic, fetches, group=a.group)
        assert a2.shared  # the log still holds its committed offset: no private fetch
        a2.run(180)
        tb.join(60)
        a2.bus.close()
        assert [c for *_, c in a.seen] == [f"c-{i}" for i in range(120)]
        assert [c for *_, c in a2.seen] == [f"c-{i}" for i in range(120, 300)]  # no gap, no duplicate
        assert [c for *_, c in b.seen] == [f"c-{i}" for i in range(300)]
    finally:
        b.bus.close()
        fetches.close()


def test_a_service_the_shared_log_cannot_serve_consumes_on_its_own(kafka_bootstrap, make_topic):
    topic = make_topic()
    _bars(topic, kafka_bootstrap, 200)
    # A small log: it is trimmed as soon as its readers have passed messages.
    fetches = SharedFetches({frozenset([topic]): 2}, max_buffered=20)
    a = _Svc(kafka_bootstrap, topic, fetches)
    b = _Svc(kafka_bootstrap, topic, fetches)
    try:
        assert a.shared and b.shared
        ta = threading.Thread(target=a.run, args=(200,))
        ta.start()
        b.run(200)
        ta.join(60)
        fetch = next(iter(fetches._fetches.values()))
        deadline = time.monotonic() + 10
        while fetch._available_from.get((topic, 0), -2) < 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the fetch trims what both readers passed within a poll interval
        late = _Svc(kafka_bootstrap, topic, fetches)  # new group: must start at offset 0, long trimmed
        assert not late.shared
        late.run(200)
        assert [c for *_, c in late.seen] == [f"c-{i}" for i in range(200)]
        late.bus.close()
    finally:
        a.bus.close()
        b.bus.close()
        fetches.close()


def test_a_wedged_reader_is_cut_loose_instead_of_blocking_the_others(kafka_bootstrap, make_topic):
    topic = make_topic()
    _bars(topic, kafka_bootstrap, 200)
    from awet_kafka.shared_fetch import SharedFetch

    fetch = SharedFetch(consumer_config(kafka_bootstrap, "x", consumer=FAST_DEV_CONSUMER_SETTINGS), [topic],
                        expected=2, max_buffered=20, overrun_s=0.5, fetch_batch=10)
    try:
        wedged = fetch.subscribe("wedged", {(topic, 0): -2})
        live_ = fetch.subscribe("live", {(topic, 0): -2})
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 200 and time.monotonic() < deadline:
            got.extend(live_.consume(50, 0.2))
        # The live reader got everything although the wedged one never read: cut loose.
        assert [m.offset() for m in got] == list(range(200))
        assert wedged.overrun
        with pytest.raises(KafkaException, match="fell too far behind"):
            wedged.poll(0.1)
    finally:
        fetch.close()


def test_the_runner_shares_only_topic_sets_two_services_consume():
    specs = [service_spec(n) for n in ("persist_bars", "features", "signal", "execution", "risk")]
    fetches = shared_fetches(specs, {"features": {"input_topic": "other.raw"}})
    try:
        # persist_bars + signal read market.raw; features was moved elsewhere; execution
        # reads market.raw with two more topics (its own set); risk reads signals.scored.
        assert fetches.shares(service_inputs("signal", {}))
        assert not fetches.shares(service_inputs("features", {"input_topic": "other.raw"}))
        assert not fetches.shares(service_inputs("execution", {}))
        assert not fetches.shares(service_inputs("risk", {}))
    finally:
        fetches.close()
    assert shared_fetches([service_spec("signal"), service_spec("risk")], {}) is None
