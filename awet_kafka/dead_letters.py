"""Dead letters: the ``DeadLetter`` envelope of a message that could not be handled (original
bytes and headers, where it was, why), sent to ``<topic>.dlq`` with the reason in headers."""
from __future__ import annotations

import base64
import logging
import traceback

from confluent_kafka import Message
from pydantic import ValidationError

from awet_dagster.contracts import DeadLetter, dlq_topic, is_dlq_topic
from awet_dagster.contracts.base import UNSUPPORTED_VERSION
from awet_kafka.producer import CORRELATION_HEADER, EventProducer

log = logging.getLogger("awet.kafka.bus")

DLQ_REASON_HEADER = "dlq_reason"
DLQ_ERROR_TYPE_HEADER = "dlq_error_type"
DLQ_ORIGINAL_TOPIC_HEADER = "dlq_original_topic"

_MAX_ERROR_CHARS = 4000


def decode_failure_reason(exc: ValidationError) -> str:
    """The DLQ reason of a message its contract refused: not JSON at all, a major version this
    consumer does not read, or the wrong shape."""
    types = {e["type"] for e in exc.errors()}
    if "json_invalid" in types:
        return "invalid_json"
    return "unsupported_version" if UNSUPPORTED_VERSION in types else "schema_mismatch"


def dead_letter_for(service: str, msg: Message, reason: str, exc: BaseException,
                    correlation_id: str | None = None) -> DeadLetter | None:
    """The DLQ envelope of ``msg`` (original bytes, headers, where it was, why), or None for a
    message of a DLQ topic itself (logged: "<x>.dlq.dlq" is not a thing)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    headers = tuple(msg.headers() or ())
    if correlation_id is None:
        raw = next((v for k, v in headers if k == CORRELATION_HEADER and v), None)
        try:
            correlation_id = raw.decode().strip() if raw else ""
        except UnicodeDecodeError:
            correlation_id = ""
        correlation_id = correlation_id or f"dlq:{topic}:{partition}:{offset}"
    if is_dlq_topic(topic):
        log.error("%s: unprocessable dead letter %s[%d]@%d: %r", service, topic, partition, offset, exc)
        return None
    error_text = "".join(traceback.format_exception(exc)) if reason == "handler_error" else str(exc)
    _, ts_ms = msg.timestamp()
    b64 = lambda b: base64.b64encode(b).decode() if b is not None else None  # noqa: E731
    return DeadLetter(
        correlation_id=correlation_id,
        reason=reason,  # type: ignore[arg-type]
        error_type=type(exc).__name__,
        error=error_text[-_MAX_ERROR_CHARS:],
        service=service,
        original_topic=topic,
        original_partition=partition,
        original_offset=offset,
        original_timestamp_ms=ts_ms if ts_ms and ts_ms > 0 else None,
        original_key_b64=b64(msg.key()),
        original_value_b64=b64(msg.value()),
        original_headers=tuple((k, b64(v)) for k, v in headers),
    )


def send_dead_letter(producer: EventProducer, letter: DeadLetter, key: bytes | None) -> None:
    """Queue ``letter`` on its topic's DLQ, with the reason headers (the caller flushes)."""
    producer.send(
        dlq_topic(letter.original_topic),
        letter,
        key=key,
        headers=[(DLQ_REASON_HEADER, letter.reason.encode()), (DLQ_ERROR_TYPE_HEADER, letter.error_type.encode()),
                 (DLQ_ORIGINAL_TOPIC_HEADER, letter.original_topic.encode())],
    )
