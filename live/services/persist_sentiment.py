"""``persist_sentiment``: social.sentiment -> the ``reddit_mentions`` table, idempotently.

As ``persist_bars``: the handler buffers, the bus's ``before_commit`` hook (after the batch's
outputs were flushed, before its offsets are committed) writes the buffer in one transaction,
so a crash between the two re-delivers the batch and the upsert on (symbol, bucket, ts) makes
the second write harmless; a failed write is a ``RetryLater`` (nothing committed).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import psycopg

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import SentimentEvent
from awet_dagster.contracts.topics import SOCIAL_SENTIMENT
from awet_dagster.storage.reddit import upsert_mentions
from awet_kafka.bus import MessageContext
from awet_dagster.streaming.outputs import RetryLater
from live.services._common import LazyConnection, LiveService, contract_of, db_settings, make_bus

NAME = "persist_sentiment"


class SentimentWriter:
    """Buffers the buckets of one bus batch; ``flush`` writes them in one transaction."""

    def __init__(self, conn: LazyConnection) -> None:
        self._conn = conn
        self._buffer: dict[tuple[str, str, Any], SentimentEvent] = {}
        self.rows_written = 0

    def handle(self, event: SentimentEvent, ctx: MessageContext) -> None:
        self._buffer[(event.symbol, event.bucket, event.ts)] = event  # the last of a key wins

    def flush(self, contexts: Sequence[MessageContext] = ()) -> int:
        if not self._buffer:
            return 0
        events, self._buffer = list(self._buffer.values()), {}
        n = 0
        try:
            conn = self._conn.get()
            with conn.transaction():
                for bucket in sorted({e.bucket for e in events}):
                    frame = pl.DataFrame(
                        [(e.symbol, e.ts, e.mentions, e.sentiment) for e in events if e.bucket == bucket],
                        schema={"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "mentions": pl.Int64,
                                "sentiment": pl.Float64}, orient="row")
                    n += upsert_mentions(conn, frame, source="reddit", bucket=bucket)
        except psycopg.OperationalError as exc:
            self._conn.reset()
            raise RetryLater(f"reddit_mentions table unavailable: {exc}") from exc
        self.rows_written += n
        return n


def build(cfg: AwetConfig, endpoints: Any, *, input_topic: str = SOCIAL_SENTIMENT, group: str | None = None,
          name: str = NAME, **bus_kwargs: Any) -> LiveService:
    """The persist_sentiment service. ``input_topic``/``group`` are overridable (tests, staging)."""
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    writer = SentimentWriter(conn)
    return make_bus(
        cfg, endpoints, name=name, topics={input_topic: contract_of(input_topic, SentimentEvent)},
        handler=writer.handle, group=group, before_commit=writer.flush, resources=[conn], component=writer,
        **bus_kwargs,
    )
