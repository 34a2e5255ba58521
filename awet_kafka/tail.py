"""``TopicTail``: a background reader of side-input topics for lookup state (no commits).

Why: a service that must JOIN its clock topic (the one its BusService consumes and
commits) with another stream (predictions, fills) needs to WAIT for that other stream
while it handles a message. Waiting inside the handler for a message of the same
consumer would deadlock, so side inputs are read by this thread into state guarded by a
``threading.Condition``; the handler waits on it with a bound.

Delivery: side state is a cache rebuilt on every start. The tail is assigned every
partition of its topics from the BEGINNING (no group, no commit), so after a restart it
re-reads what retention kept; consumers make applying an event idempotent (fills by
cumulative quantity, predictions by (symbol, ts)). A side message that does not decode (or
whose event the service cannot apply) is counted (``undecodable``) and dead-lettered like any
other (``SideDeadLetters``: the topic's DLQ with the reason, and the ``dead_letters`` table),
under the reader's own name (``<service>-tail``); side topics such as ``predictions`` and
``exec.done`` have no other consumer that would. Because a tail re-reads its topics from the
beginning at every start, a letter the table already holds for this reader is not sent again.

A tail never skips messages of a log that starts over:
- ``auto.offset.reset=earliest``: a position out of range (retention truncated the log, a
  Kafka broker answers OFFSET_OUT_OF_RANGE for a recreated, shorter topic) restarts at
  the earliest offset still there, not at the end (librdkafka's default, ``latest``).
- A topic deleted and recreated under the same name is a NEW log whose offsets restart at
  0 — what every topic is after the embedded broker (tansu, memory storage) restarts. tansu
  answers a fetch beyond the end of that new log with an empty result, not
  OFFSET_OUT_OF_RANGE, so the old position would silently skip the new log's first
  messages. The tail therefore records each topic's id (Kafka topic ids, KIP-516; tansu
  has them too) at start, and after it lost every broker connection (``_ALL_BROKERS_DOWN``)
  it checks them again as soon as the broker answers (and the topic exists again): a topic
  whose id changed is re-read from the beginning. Until that check succeeds the tail
  keeps applying whatever it receives (nothing is dropped); if the new log already grew
  past the old position in that short window, those messages are applied twice (idempotent
  as above, and counted twice in ``consumed``). A broker that reports no topic ids (older
  than Kafka 2.8) only gets the ``earliest`` reset.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import ValidationError

from awet_dagster.contracts import BaseEvent, dlq_topic
from awet_kafka.dead_letters import dead_letter_for, decode_failure_reason, send_dead_letter
from awet_kafka.producer import EventProducer

log = logging.getLogger("awet.kafka.tail")


class SideDeadLetters:
    """The dead letters of one side reader (see the module doc). Called from the tail thread;
    best effort: a failure to dead-letter is logged and never stops the tail."""

    def __init__(self, service: str, producer: EventProducer, recorder: Any = None,
                 flush_timeout_s: float = 10.0) -> None:
        self.service = service
        self.producer = producer
        self.recorder = recorder  # a DeadLetterRecorder (the dead_letters table), or None
        self.flush_timeout_s = flush_timeout_s
        self.sent = 0
        self.already = 0  # found in the table: sent by an earlier run of this reader

    def __call__(self, msg: Any, reason: str, exc: BaseException) -> None:
        try:
            letter = dead_letter_for(self.service, msg, reason, exc)
            if letter is None:
                return
            if self.recorder is not None and self.recorder.holds(letter):
                self.already += 1
                return
            send_dead_letter(self.producer, letter, msg.key())
            self.producer.flush(self.flush_timeout_s)
            self.sent += 1
            if self.recorder is not None:
                self.recorder(dlq_topic(letter.original_topic), letter)
                self.recorder.flush()
        except Exception:  # noqa: BLE001 - the DLQ is best effort here; the tail must go on
            log.exception("%s: dead-lettering %s[%d]@%d failed", self.service, msg.topic(), msg.partition(),
                          msg.offset())

    def close(self) -> None:
        self.producer.close()
        if self.recorder is not None:
            self.recorder.conn.close()

#: Seconds between two attempts to check the topic ids after a broker outage.
_RECHECK_INTERVAL_S = 0.5


def describe_topic_ids(admin_conf: Mapping[str, Any], topics: Sequence[str],
                       timeout_s: float) -> dict[str, tuple[str | None, list[int]]]:
    """{topic: (topic id or None, partitions)} from the broker; raises if one is missing."""
    admin = AdminClient({**admin_conf, "socket.timeout.ms": max(int(timeout_s * 1000), 10),
                         "socket.connection.setup.timeout.ms": max(int(timeout_s * 1000), 1000)})
    futures = admin.describe_topics(TopicCollection(list(topics)), request_timeout=timeout_s)
    out = {}
    for topic, fut in futures.items():
        d = fut.result(timeout=timeout_s)
        tid = str(d.topic_id) if d.topic_id is not None else None
        out[topic] = (tid if tid and tid.strip("A=") else None, sorted(p.id for p in d.partitions))
    return out


class TopicTail:
    def __init__(self, name: str, bootstrap: str, topics: Mapping[str, type[BaseEvent]],
                 on_event: Callable[[str, BaseEvent, int], None], *, client: Mapping[str, Any] | None = None,
                 fetch_wait_ms: int | None = None, cond: threading.Condition | None = None,
                 dead_letters: Callable[[Any, str, BaseException], None] | None = None) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap, "group.id": f"tail-{name}-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "socket.timeout.ms": 30000, "client.id": f"awet-{name}-tail",
            # Out of range: re-read what is there, never jump to the end (module doc).
            "auto.offset.reset": "earliest",
        }
        conf.update(client or {})
        # The topic-id check's admin client: the connection/security settings, no consumer ones.
        self._admin_conf = {"bootstrap.servers": bootstrap, "client.id": f"awet-{name}-tail-admin",
                            **(client or {})}
        if fetch_wait_ms is not None:
            conf["fetch.wait.max.ms"] = int(fetch_wait_ms)

        def on_error(err: KafkaError) -> None:  # served by poll/consume, in the tail thread
            if err.code() == KafkaError._ALL_BROKERS_DOWN:
                self._recheck_at = time.monotonic()  # the broker may come back with new logs
            log.debug("%s: %s", self.name, err)

        conf["error_cb"] = on_error
        self.name = name
        self.topics = dict(topics)
        self._on_event = on_event
        self.dead_letters = dead_letters
        self.cond = cond or threading.Condition()
        self._consumer = Consumer(conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"tail-{name}", daemon=True)
        self.consumed: Counter[str] = Counter()  # per topic, every message read
        self.consumed_since: Counter[str] = Counter()  # per topic, Kafka timestamp >= since_ms
        #: ``consumed_since`` of the topic's CURRENT log only (restarts at 0 when the topic is
        #: found recreated): what a new reader of the topic would count again.
        self.log_consumed_since: Counter[str] = Counter()
        self.since_ms = 0
        self.undecodable = 0
        self.ready = threading.Event()
        #: Topic id per topic when started (None: the broker reports none).
        self.topic_ids: dict[str, str | None] = {}
        #: Topics found recreated (new id) after a broker outage, then re-read from the start.
        self.recreated: Counter[str] = Counter()
        self._recheck_at: float | None = None  # monotonic time of the next topic-id check

    def start(self, timeout_s: float = 30.0) -> TopicTail:
        parts: list[TopicPartition] = []
        for topic in self.topics:
            md = self._consumer.list_topics(topic, timeout=timeout_s)
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                raise RuntimeError(f"{self.name}: side topic {topic!r} not available: "
                                   f"{tmd.error if tmd is not None else 'missing'}")
            parts.extend(TopicPartition(topic, p, OFFSET_BEGINNING) for p in tmd.partitions)
        try:
            found = describe_topic_ids(self._admin_conf, list(self.topics), timeout_s)
            self.topic_ids = {t: i for t, (i, _) in found.items()}
        except Exception as exc:  # noqa: BLE001 - the check is a safety net, not a start requirement
            log.warning("%s: topic ids unavailable (a recreated side topic will not be detected): %s",
                        self.name, exc)
            self.topic_ids = dict.fromkeys(self.topics)
        self._consumer.assign(parts)
        self._thread.start()
        return self

    def _check_topics(self) -> None:
        """After a broker outage: re-read from the beginning every topic whose id changed.

        Runs in the tail thread. Retried every ``_RECHECK_INTERVAL_S`` until the broker
        answers and every topic exists again (it may come back before ``awet infra up`` /
        ``ensure_topics`` recreated them)."""
        try:
            now = describe_topic_ids(self._admin_conf, list(self.topics), 2.0)
        except Exception as exc:  # noqa: BLE001 - broker still down / topic not recreated yet
            self._recheck_at = time.monotonic() + _RECHECK_INTERVAL_S
            log.debug("%s: topic-id check deferred: %s", self.name, exc)
            return
        self._recheck_at = None
        changed = [t for t, (tid, _) in now.items() if tid is not None and tid != self.topic_ids.get(t)]
        if not changed:
            return
        try:
            # Topics that kept their id keep their position (next offset to read; never read: BEGINNING).
            keep = [tp for tp in self._consumer.assignment() if tp.topic not in changed]
            parts = [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                     for tp in (self._consumer.position(keep) if keep else [])]
            for topic in changed:
                parts.extend(TopicPartition(topic, p, OFFSET_BEGINNING) for p in now[topic][1])
            self._consumer.assign(parts)
        except Exception:  # noqa: BLE001 - try again shortly rather than kill the tail
            log.exception("%s: re-assigning recreated side topics %s failed; retrying", self.name, changed)
            self._recheck_at = time.monotonic() + _RECHECK_INTERVAL_S
            return
        for topic in changed:
            self.topic_ids[topic] = now[topic][0]
            self.recreated[topic] += 1
            self.log_consumed_since[topic] = 0
        log.warning("%s: side topic(s) %s were recreated (new topic id: e.g. the broker restarted without "
                    "its data); reading them again from the beginning", self.name, changed)

    def _main(self) -> None:
        consumer = self._consumer
        while not self._stop.is_set():
            if self._recheck_at is not None and time.monotonic() >= self._recheck_at:
                self._check_topics()
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
                        self.log_consumed_since[topic] += 1
                    value = msg.value()
                    if value is None:
                        self._refuse(msg, "empty_message", ValueError("message has no value (tombstone)"))
                        continue
                    try:
                        event = self.topics[topic].model_validate_json(value)
                    except ValidationError as exc:
                        self._refuse(msg, decode_failure_reason(exc), exc)
                        continue
                    try:
                        self._on_event(topic, event, ts_ms)
                    except Exception as exc:  # noqa: BLE001 - one bad event must not kill the tail
                        self._refuse(msg, getattr(exc, "dlq_reason", None) or "handler_error", exc)
                self.cond.notify_all()

    def _refuse(self, msg: Any, reason: str, exc: BaseException) -> None:
        self.undecodable += 1
        log.warning("%s: side message %s[%d]@%d dead-lettered (%s): %s", self.name, msg.topic(), msg.partition(),
                    msg.offset(), reason, str(exc).splitlines()[0] if str(exc) else repr(exc))
        if self.dead_letters is not None:
            self.dead_letters(msg, reason, exc)

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
        if self.dead_letters is not None and hasattr(self.dead_letters, "close"):
            self.dead_letters.close()
