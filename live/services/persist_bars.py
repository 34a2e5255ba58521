"""``persist_bars``: market.raw -> the ``bars`` table, idempotently, in batches.

Per bus batch: the handler only buffers rows; the bus's ``before_commit`` hook (called
after the batch's outputs are flushed and BEFORE its offsets are committed) writes the
whole buffer with one COPY + upsert inside one transaction. So:
- the DB commit happens before the Kafka commit: a crash in between re-delivers the
  batch and the upsert on (symbol, bar_type, ts) makes the second write harmless;
- a failed DB write raises ``RetryLater`` out of ``run``: no offsets are committed and
  the runner rebuilds the service, which re-reads the batch from the last commit.
Within a batch the last event of a key wins (one upsert may not touch a row twice).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import MarketRawEvent
from awet_dagster.contracts.topics import MARKET_RAW
from awet_dagster.storage.bars import copy_upsert_bars
from awet_dagster.streaming import events_to_frame
from awet_kafka.bus import MessageContext
from awet_dagster.streaming.outputs import RetryLater
from live.services._common import LazyConnection, LiveService, contract_of, db_settings, make_bus, time_guard

log = logging.getLogger("awet.live.persist_bars")

NAME = "persist_bars"


class BarWriter:
    """Buffers the bars of one bus batch; ``flush`` writes them in one transaction."""

    def __init__(self, conn: LazyConnection) -> None:
        self._conn = conn
        self._buffer: dict[tuple[str, str, Any], MarketRawEvent] = {}
        self.rows_written = 0
        self.batches_written = 0

    def handle(self, event: MarketRawEvent, ctx: MessageContext) -> None:
        self._buffer[(event.symbol, event.bar_type, event.ts)] = event  # no outputs

    def flush(self, contexts: Sequence[MessageContext] = ()) -> int:
        """Write the buffered bars (COPY + upsert, one transaction); always empties the buffer.

        On failure the buffer is dropped too: those messages are uncommitted and will be
        delivered again to a rebuilt service, which buffers them afresh.
        """
        if not self._buffer:
            return 0
        import psycopg

        events, self._buffer = list(self._buffer.values()), {}
        frame = events_to_frame(events)
        try:
            conn = self._conn.get()
            with conn.transaction():
                n = copy_upsert_bars(conn, frame)
        except psycopg.OperationalError as exc:
            self._conn.reset()
            raise RetryLater(f"bars table unavailable: {exc}") from exc
        self.rows_written += n
        self.batches_written += 1
        return n


def build(cfg: AwetConfig, endpoints: Any, *, input_topic: str = MARKET_RAW, group: str | None = None,
          name: str = NAME, **bus_kwargs: Any) -> LiveService:
    """The persist_bars service. ``input_topic``/``group`` are overridable (tests, staging)."""
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    writer = BarWriter(conn)
    return make_bus(
        cfg, endpoints, name=name,
        topics={input_topic: contract_of(input_topic, MarketRawEvent)},
        handler=writer.handle, group=group, before_commit=writer.flush, guard=time_guard(cfg, late_bars=True),
        resources=[conn], component=writer, **bus_kwargs,
    )
