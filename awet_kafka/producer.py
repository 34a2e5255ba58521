"""``EventProducer``: contracts onto Kafka, keyed by symbol, with correlation/type/version
headers; a flush that raises ``DeliveryError`` when anything sent was not acknowledged."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from awet_dagster.contracts import BaseEvent, model_for_topic

CORRELATION_HEADER = "correlation_id"
EVENT_TYPE_HEADER = "event_type"
SCHEMA_VERSION_HEADER = "schema_version"


class DeliveryError(RuntimeError):
    """Some produced messages were not acknowledged; offsets must not be committed."""


def event_headers(event: BaseEvent) -> list[tuple[str, bytes]]:
    return [
        (CORRELATION_HEADER, event.correlation_id.encode()),
        (EVENT_TYPE_HEADER, event.event_type.encode()),
        (SCHEMA_VERSION_HEADER, str(event.schema_version).encode()),
    ]


class EventProducer:
    """confluent-kafka Producer wrapper that serialises contracts and tracks delivery errors.

    ``send`` is asynchronous; ``flush`` waits (bounded) and raises ``DeliveryError`` if
    anything sent since the previous flush failed or is still in flight.

    Delivery reports: only FAILED deliveries call back into Python
    (``delivery.report.only.error``), served by ``flush`` (and by ``poll`` while the local
    queue is full). A success needs no Python work: nothing left in flight and no error
    reported means every message since the previous flush was acknowledged. In a process
    running several services, a per-message callback (and a ``poll(0)`` per send) was a
    GIL release/re-acquire per message among busy threads.
    """

    def __init__(self, config: Mapping[str, Any], *, check_topics: bool = True) -> None:
        conf = dict(config)
        conf.setdefault("delivery.report.only.error", True)
        self._producer = Producer(conf)
        self.client_id = str(conf.get("client.id", "rdkafka"))
        self._errors: list[str] = []
        self._sent = 0  # produced since the previous flush
        self._check_topics = check_topics
        self.closed = False

    def close(self) -> None:
        """Destroy the client: its librdkafka threads stop (reconnecting to a broker that is
        gone, every few seconds, for as long as anything referenced the object). What is
        still queued is purged: flush first to deliver it. Idempotent; ``send`` afterwards
        raises RuntimeError."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(KafkaException, RuntimeError, SystemError):
            self._producer.purge()
            self._producer.flush(0)  # serve the purge's delivery reports
        with contextlib.suppress(KafkaException, RuntimeError):
            self._producer.close()  # nothing queued: returns at once

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # librdkafka calls this from poll()/flush() in the calling thread (failures only).
    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def check(self, topic: str, event: BaseEvent) -> None:
        """Raise TypeError if ``topic`` is registered for another contract than ``event``'s."""
        try:
            expected = model_for_topic(topic)
        except KeyError:
            return  # ad-hoc topic (tests, benchmarks): no contract to enforce
        if not isinstance(event, expected):
            raise TypeError(f"topic {topic!r} carries {expected.__name__}, got {type(event).__name__}")

    def send(
        self,
        topic: str,
        event: BaseEvent,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        timeout_s: float = 10.0,
    ) -> None:
        """Queue ``event`` as JSON, keyed by symbol, with correlation/type headers."""
        if self._check_topics:
            self.check(topic, event)
        self.send_checked(topic, event, key, headers, timeout_s)

    def send_checked(
        self,
        topic: str,
        event: BaseEvent,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        timeout_s: float = 10.0,
    ) -> None:
        """``send`` without the topic/contract check (the caller already did ``check``)."""
        hdrs = event_headers(event)
        if headers:
            hdrs.extend(headers)
        self._produce(topic, event.model_dump_json().encode(), key if key is not None else event.kafka_key(),
                      hdrs, timeout_s)

    def send_raw(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
        timeout_s: float = 10.0,
    ) -> None:
        """Queue raw bytes (dead letters, tests). Waits up to ``timeout_s`` if the queue is full."""
        self._produce(topic, value, key, list(headers), timeout_s)

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]],
                 timeout_s: float) -> None:
        producer = self._producer
        try:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
        except BufferError:
            # Local queue full: serve delivery reports to make room, bounded.
            deadline = time.monotonic() + timeout_s
            while True:
                if time.monotonic() >= deadline:
                    raise DeliveryError(f"producer queue still full after {timeout_s}s") from None
                producer.poll(0.05)
                try:
                    producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                    break
                except BufferError:
                    continue
        self._sent += 1

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for every queued message; return how many were acknowledged since last flush.

        Nothing outstanding (``len(producer) == 0``: no message queued or in flight and no
        delivery report left to serve) and no failure reported means everything sent since
        the previous flush was acknowledged: no flush call needed.
        """
        if self.closed or (self._producer.__len__() == 0 and not self._errors):
            delivered, self._sent = self._sent, 0
            return delivered
        remaining = self._producer.flush(timeout_s)
        errors, self._errors = self._errors, []
        sent, self._sent = self._sent, 0
        delivered = sent - remaining - len(errors)
        if remaining:
            raise DeliveryError(f"{remaining} message(s) not delivered within {timeout_s}s"
                                + (f"; errors: {errors[:5]}" if errors else ""))
        if errors:
            raise DeliveryError(f"{len(errors)} delivery failure(s): {errors[:5]}")
        return delivered

    def __len__(self) -> int:
        return 0 if self.closed else len(self._producer)

    @property
    def raw(self) -> Producer:
        return self._producer
