"""Publishing that survives a broker outage: ``publish_acknowledged`` returns once the broker
acknowledged every event, sending again exactly those that failed (the ingestion commands and
the replay harness publish through it)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaException

from awet_kafka.producer import DeliveryError, event_headers

log = logging.getLogger("awet.kafka.publish")

#: publish_acknowledged flushes in slices of this length to notice a failed message early.
FLUSH_SLICE_S = 0.5


def publish_acknowledged(producer: Any, topic: str, events: Sequence[Any], *, timeout_s: float = 60.0,
                         renew: Callable[[], Any] | None = None) -> Any:
    """Publish ``events`` to ``topic`` and return once the broker acknowledged every one.

    Survives a broker outage or restart in the middle: every message has its own delivery
    callback, so after a round in which some were reported failed (their
    ``message.timeout.ms`` ran out, the producer died) exactly those are sent again — none
    dropped, none that was acknowledged duplicated. A round in which messages are still in
    flight with no verdict keeps waiting for it: the idempotent producer retries them itself
    and a durable broker (Kafka) de-duplicates the retries, whereas purging them and sending
    them again would duplicate every one that lands meanwhile (measured: a Kafka SIGKILLed
    mid-replay then held each in-flight bar twice). With ``renew``, a producer whose messages
    failed is replaced by ``renew()``: an idempotent producer whose broker lost its
    producer-id state (tansu with memory storage restarted) gets UNKNOWN_PRODUCER_ID until
    ``message.timeout.ms`` and only a new instance (a new InitProducerId) delivers again.
    Without ``renew`` the same producer retries.

    ``producer``: an ``EventProducer``. Returns the producer in use at the end (``renew``'s
    when it was replaced). Raises ``DeliveryError`` after ``timeout_s`` (what is still in
    flight then is purged: it may land, at least once).
    """
    deadline = time.monotonic() + timeout_s
    pending = list(events)
    for ev in pending:
        producer.check(topic, ev)
    rounds = 0
    while pending:
        raw = producer.raw
        failed: set[int] = set()
        fatal: BaseException | None = None
        try:
            for i, ev in enumerate(pending):
                value, key, headers = ev.model_dump_json().encode(), ev.kafka_key(), event_headers(ev)

                def on_delivery(err: Any, _msg: Any, i: int = i) -> None:
                    if err is not None:
                        failed.add(i)

                while True:
                    try:
                        raw.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                        break
                    except BufferError:  # local queue full: serve delivery reports, bounded
                        if time.monotonic() >= deadline:
                            raise DeliveryError(f"{topic}: producer queue still full after {timeout_s}s") from None
                        raw.poll(0.05)
                    except KafkaException:  # fatal producer: this one and the rest were not sent
                        failed.update(range(i, len(pending)))
                        raise
            # Until every message has a verdict (or one failed), bounded by the deadline.
            remaining = len(pending)
            while remaining and not failed and time.monotonic() < deadline:
                remaining = raw.flush(max(0.0, min(FLUSH_SLICE_S, deadline - time.monotonic())))
        except (KafkaException, SystemError) as exc:
            # A fatal producer error (e.g. an idempotent producer fenced by a broker that lost
            # its producer ids) is raised from produce/flush/poll, in the middle of serving the
            # delivery reports (a callback running then raises SystemError); the rest is served
            # below. (librdkafka fails every message of a fatal producer.)
            fatal, remaining = exc, 1
        if remaining and fatal is None and not failed:  # the deadline passed with messages in flight
            _drain_reports(raw)
            raise DeliveryError(f"{topic}: {remaining} event(s) not acknowledged within {timeout_s}s")
        if remaining:
            remaining = _drain_reports(raw)  # purge: the rest reports _PURGE_QUEUE / _PURGE_INFLIGHT
        if remaining:  # not accounted for: send all again (duplicates possible, no loss)
            failed = set(range(len(pending)))
        pending = [ev for i, ev in enumerate(pending) if i in failed]
        if not pending:
            break
        rounds += 1
        if time.monotonic() >= deadline:
            raise DeliveryError(f"{topic}: {len(pending)} event(s) not acknowledged within {timeout_s}s "
                                f"({rounds} round(s))")
        log.warning("%s: %d event(s) not acknowledged (round %d%s); sending them again%s", topic, len(pending),
                    rounds, f", producer failed: {fatal!r} caused by {fatal.__cause__!r}" if fatal else "",
                    " with a new producer" if renew is not None else "")
        if renew is not None:
            old, producer = producer, renew()
            if old is not producer and hasattr(old, "close"):
                old.close()  # its messages are accounted for above; its threads would keep reconnecting
        else:
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
    return producer


def _drain_reports(raw: Any, timeout_s: float = 5.0) -> int:
    """Purge what ``raw`` still holds and serve every delivery report left (bounded);
    returns how many messages are still unaccounted for."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            raw.purge()
            remaining = raw.flush(max(0.0, min(1.0, deadline - time.monotonic())))
        except (KafkaException, SystemError):  # a fatal error raised while serving: go on serving
            remaining = len(raw)
        if not remaining or time.monotonic() >= deadline:
            return remaining
