"""The ``dead_letters`` table: one row per message a service dead-lettered (topic, partition,
offset, service, reason, error), what ``awet status`` counts and an operator queries. The
topic's DLQ is the record; the table is its queryable copy, written idempotently."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_INSERT = ('INSERT INTO dead_letters (topic, "partition", "offset", reason, payload, service, error_type, '
           "error, correlation_id, dlq_topic) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
           'ON CONFLICT (topic, "partition", "offset", service) DO NOTHING')


def record_dead_letters(conn: Any, rows: Sequence[tuple]) -> int:
    """Insert ``rows`` (topic, partition, offset, reason, payload bytes, service, error type,
    error, correlation id, DLQ topic) in one transaction; a message already recorded for the
    service is skipped (a redelivered poison message stays one row)."""
    if not rows:
        return 0
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(_INSERT, rows)
    return len(rows)


def has_dead_letter(conn: Any, topic: str, partition: int, offset: int, service: str) -> bool:
    """``service`` already recorded its dead letter for the message at (topic, partition, offset)."""
    return conn.execute(
        'SELECT 1 FROM dead_letters WHERE topic = %s AND "partition" = %s AND "offset" = %s AND service = %s',
        (topic, partition, offset, service)).fetchone() is not None
