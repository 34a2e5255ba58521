"""Consumer lag: exact arithmetic over offsets, and a smoke test of the monitor on the broker."""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from awet_dagster.observability.lag import PartitionLag, compute_lags, group_lags, partition_lag, total_lag


@pytest.mark.parametrize(
    ("end", "committed", "low", "lag"),
    [
        (100, 40, 0, 60),
        (100, 100, 0, 0),
        (5, 9, 0, 0),  # committed past the (lagging) high watermark: clamped at 0
        (100, None, 0, 100),  # never committed: the whole partition
        (100, None, 30, 70),  # ... minus what retention already deleted
        (100, -1001, 0, 100),  # librdkafka OFFSET_INVALID = no commit
        (0, None, 0, 0),  # empty partition
        (-1, 10, 0, 0),  # unknown watermark
        (100, None, 120, 0),
    ],
)
def test_partition_lag_exact(end, committed, low, lag):
    assert partition_lag(end, committed, low) == lag


def test_compute_lags_over_partitions():
    ends = {("a", 0): 10, ("a", 1): 20, ("b", 0): 7}
    committed = {("a", 0): 4, ("b", 0): 9, ("zzz", 0): 3}  # a/1 missing; zzz has no end offset
    assert compute_lags(ends, committed) == {("a", 0): 6, ("a", 1): 20, ("b", 0): 0}
    assert compute_lags(ends, committed, {("a", 1): 5}) == {("a", 0): 6, ("a", 1): 15, ("b", 0): 0}


def test_group_lags_records_and_totals():
    lags = group_lags("g", {("a", 1): 20, ("a", 0): 10}, {("a", 0): 4, ("a", 1): -1001})
    assert lags == [PartitionLag("g", "a", 0, 10, 4, 6), PartitionLag("g", "a", 1, 20, None, 20)]
    assert total_lag(lags) == {("g", "a"): 26}


# --------------------------------------------------------------------------- real broker
def _produce(bootstrap: str, topic: str, n: int) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for i in range(n):
        p.produce(topic, key=b"k", value=f"m{i}".encode())
        assert p.flush(10) == 0  # one message per batch: tansu's watermark is exact then


def _consume_and_commit(bootstrap: str, topic: str, group: str, n: int) -> None:
    from confluent_kafka import Consumer

    from awet_kafka.settings import FAST_DEV_CONSUMER_SETTINGS

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, **FAST_DEV_CONSUMER_SETTINGS})
    try:
        c.subscribe([topic])
        got, deadline = 0, time.monotonic() + 60
        while got < n and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                got += 1
        assert got == n
        c.commit(asynchronous=False)
    finally:
        c.close()


@pytest.mark.timeout(180)
def test_lag_monitor_against_broker(kafka_bootstrap, make_topic):
    from awet_dagster.observability.metrics import AwetMetrics
    from live.services.lag_monitor import LagMonitor

    topic = make_topic(2)
    group = f"lagtest-{uuid.uuid4().hex[:8]}"
    _produce(kafka_bootstrap, topic, 4)
    _consume_and_commit(kafka_bootstrap, topic, group, 4)

    metrics = AwetMetrics()
    with LagMonitor(kafka_bootstrap, {group: [topic], "ghost-group": ["no-such-topic-" + group]}, metrics,
                    interval_s=0.2, timeout_s=5) as mon:
        first = {(x.topic, x.partition): x for x in mon.measure_once()}
        assert set(first) == {(topic, 0), (topic, 1)}
        assert all(x.lag >= 0 for x in first.values())
        assert metrics.registry.get_sample_value("awet_lag_monitor_errors_total", {"group": "ghost-group"}) == 1

        _produce(kafka_bootstrap, topic, 6)
        after = mon.measure_once()
        assert all(x.lag >= 0 for x in after)
        assert sum(x.lag for x in after) > 0  # the group committed earlier and is now behind
        for x in after:
            value = metrics.registry.get_sample_value(
                "awet_consumer_lag", {"group": group, "topic": topic, "partition": str(x.partition)})
            assert value == x.lag

        # The loop: bounded, stops on its event, reports itself up while running.
        stop = threading.Event()
        t = threading.Thread(target=mon.run, args=(stop,), daemon=True)
        t.start()
        deadline = time.monotonic() + 15  # the loop reports itself up: wait for it, bounded
        while metrics.registry.get_sample_value("awet_service_up", {"service": "lag_monitor"}) != 1:
            assert time.monotonic() < deadline and t.is_alive(), "lag monitor never reported up"
            time.sleep(0.02)
        stop.set()
        t.join(15)
        assert not t.is_alive()
        assert metrics.registry.get_sample_value("awet_service_up", {"service": "lag_monitor"}) == 0
