"""``TopicTail``: a background reader of side-input topics for lookup state (no commits).

Why: a service that must JOIN its clock topic (the one its BusService consumes and
commits) with another stream (predictions, fills) needs to WAIT for that other stream
while it handles a message. Waiting inside the handler for a message of the same
consumer would deadlock, so side inputs are read by this thread into state guarded by a
``threading.Condition``; the handler waits on it with a bound.

Delivery: side state is a cache rebuilt on every start. The tail is assigned every
partition of its topics from the BEGINNING (no group, no commit), so after a restart it
re-reads what retention kept; consumers make applying an event idempotent (fills by
cumulative quantity, predictions by (symbol, ts)). A side message that does not decode is
logged and counted (``undecodable``), not dead-lettered: the topic's own consumer owns its
DLQ, and N tails writing N dead letters for one message would only add noise.
"""
from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from pydantic import ValidationError

from awet_dagster.contracts import BaseEvent

log = logging.getLogger("awet.live.tail")


class TopicTail:
    def __init__(self, name: str, bootstrap: str, topics: Mapping[str, type[BaseEvent]],
                 on_event: Callable[[str, BaseEvent, int], None], *, client: Mapping[str, Any] | None = None,
                 fetch_wait_ms: int | None = None, cond: threading.Condition | None = None) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap, "group.id": f"tail-{name}-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "socket.timeout.ms": 30000, "client.id": f"awet-{name}-tail",
        }
        conf.update(client or {})
        if fetch_wait_ms is not None:
            conf["fetch.wait.max.ms"] = int(fetch_wait_ms)
        self.name = name
        self.topics = dict(topics)
        self._on_event = on_event
        self.cond = cond or threading.Condition()
        self._consumer = Consumer(conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"tail-{name}", daemon=True)
        self.consumed: Counter[str] = Counter()  # per topic, every message read
        self.consumed_since: Counter[str] = Counter()  # per topic, Kafka timestamp >= since_ms
        self.since_ms = 0
        self.undecodable = 0
        self.ready = threading.Event()

    def start(self, timeout_s: float = 30.0) -> TopicTail:
        parts: list[TopicPartition] = []
        for topic in self.topics:
            md = self._consumer.list_topics(topic, timeout=timeout_s)
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                raise RuntimeError(f"{self.name}: side topic {topic!r} not available: "
                                   f"{tmd.error if tmd is not None else 'missing'}")
            parts.extend(TopicPartition(topic, p, OFFSET_BEGINNING) for p in tmd.partitions)
        self._consumer.assign(parts)
        self._thread.start()
        return self

    def _main(self) -> None:
        consumer = self._consumer
        while not self._stop.is_set():
            try:
                # poll() returns as soon as one message is there; the rest of what was fetched
                # is taken without waiting. (consume(500, 0.1) would hold a lone fill or
                # prediction - one a handler is waiting for - up to 100 ms.)
                first = consumer.poll(0.1)
                msgs = [first, *consumer.consume(num_messages=499, timeout=0)] if first is not None else []
            except Exception:  # noqa: BLE001 - a closed consumer at shutdown
                if self._stop.is_set():
                    return
                log.exception("%s: side consume failed", self.name)
                continue
            if not msgs:
                self.ready.set()
                continue
            with self.cond:
                for msg in msgs:
                    if msg.error() is not None:
                        continue
                    topic = msg.topic()
                    self.consumed[topic] += 1
                    ts_ms = msg.timestamp()[1] or 0
                    if ts_ms >= self.since_ms:
                        self.consumed_since[topic] += 1
                    value = msg.value()
                    try:
                        event = self.topics[topic].model_validate_json(value or b"")
                    except ValidationError as exc:
                        self.undecodable += 1
                        log.warning("%s: undecodable side message %s[%d]@%d skipped: %s", self.name, topic,
                                    msg.partition(), msg.offset(), str(exc).splitlines()[0])
                        continue
                    try:
                        self._on_event(topic, event, ts_ms)
                    except Exception:  # noqa: BLE001 - one bad event must not kill the tail
                        self.undecodable += 1
                        log.exception("%s: side event %s[%d]@%d failed", self.name, topic, msg.partition(),
                                      msg.offset())
                self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Block until ``predicate()`` (evaluated under the lock) or ``timeout_s``."""
        with self.cond:
            return self.cond.wait_for(predicate, timeout=timeout_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        try:
            self._consumer.close()
        except Exception:  # noqa: BLE001
            pass


def tail_for(cfg: Any, endpoints: Any, name: str, topics: Mapping[str, type[BaseEvent]], on_event: Callable[[str, BaseEvent, int], None]) -> TopicTail:
    """A TopicTail with the Kafka client settings of ``cfg.kafka``."""
    kafka = getattr(cfg, "kafka", None)
    client = {k: v for k, v in dict(getattr(kafka, "client", {}) or {}).items()}
    sasl = getattr(kafka, "sasl_password", None)
    if sasl is not None:
        client.setdefault("sasl.password", sasl.get_secret_value())
    fetch_wait = dict(getattr(kafka, "consumer", {}) or {}).get("fetch.wait.max.ms")
    return TopicTail(name, endpoints.kafka_bootstrap, topics, on_event, client=client, fetch_wait_ms=fetch_wait)
