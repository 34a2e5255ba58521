"""``awet ingest --source polygon|yfinance|stub``: bars polled on the bar clock into ``market.raw``.

The polling core is ``awet_dagster.streaming.polling.BarPoller`` (which bars are closed and
new); this module is its wiring:

- ``published_marks``: the last bar per symbol already in ``market.raw`` (read back from
  the topic's tail, newest messages first, in chunks), so a restarted ingest publishes
  nothing twice. tansu's high watermark lags (../shared/notes): there the newest few bars
  may be published again; their event ids are deterministic and every consumer skips a
  bar it has seen.
- ``PollingIngestor.run``: poll, publish (acknowledged by the broker) and only then
  ``commit`` the bars, wait ``interval_s`` (through the stop event: a stop ends the wait at
  once), again. A failed publish is retried by the next poll (the bars were not committed);
  a failed fetch is logged and counted by the poller, and the loop keeps its rhythm. With a
  simulated clock (the stub) a poll that finds nothing jumps the clock to the next bar's
  close, so the offline sample streams without idling through nights and weekends.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from pydantic import ValidationError

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import BaseEvent, MarketRawEvent
from awet_dagster.streaming.polling import BarPoller, PollStats, SimulatedClock
from awet_dagster.observability.metrics import service_port
from live.metrics import start_metrics_server

log = logging.getLogger("awet.live.ingest_poll")


def published_marks(bootstrap: str, topic: str, symbols: Sequence[str], bar_type: str, *,
                    client: dict[str, Any] | None = None, timeout_s: float = 10.0, chunk: int = 5_000,
                    max_scan: int = 1_000_000, model: type[BaseEvent] = MarketRawEvent,
                    kind_field: str = "bar_type") -> dict[str, datetime]:
    """{symbol: ts of its newest ``bar_type`` bar in ``topic``}, for ``symbols``. Any keyed
    stream works the same: ``model`` is the topic's contract and ``kind_field`` the field
    compared with ``bar_type`` (Reddit sentiment: ``SentimentEvent``, ``bucket``).

    Reads each partition backwards in chunks of ``chunk`` messages until every symbol was
    found, the log's start was reached or ``max_scan`` messages were read (a symbol not found
    then: its catch-up window applies). Messages that do not decode are skipped here (the
    consumers dead-letter them)."""
    wanted = {s.upper() for s in symbols}
    found: dict[str, datetime] = {}
    conf = {"bootstrap.servers": bootstrap, "group.id": f"ingest-marks-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "client.id": "awet-ingest-marks", **(client or {})}
    consumer = Consumer(conf)
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None:
            raise RuntimeError(f"topic {topic!r} not available: {tmd.error if tmd is not None else 'missing'}")
        scanned = 0
        for p in sorted(tmd.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            end = high
            while end > low and scanned < max_scan and not wanted <= found.keys():
                begin = max(low, end - chunk)
                scanned += _scan(consumer, TopicPartition(topic, p, begin), end, bar_type, wanted, found, timeout_s,
                                 model, kind_field)
                end = begin
    finally:
        consumer.close()
    return found


def _scan(consumer: Consumer, start: TopicPartition, end: int, bar_type: str, wanted: set[str],
          found: dict[str, datetime], timeout_s: float, model: type[BaseEvent], kind_field: str) -> int:
    consumer.assign([start])
    read, offset = 0, start.offset
    deadline = time.monotonic() + timeout_s
    while offset < end - 1 or read == 0:
        msg = consumer.poll(0.5)
        if msg is None:
            position = consumer.position([TopicPartition(start.topic, start.partition)])[0].offset
            if position >= end:  # the rest were transaction markers or compacted away
                break
            if time.monotonic() > deadline:
                log.warning("ingest: reading back %s[%d] stopped at offset %d of %d (no reply in %.0f s)",
                            start.topic, start.partition, offset, end, timeout_s)
                break
            continue
        if msg.error():
            continue
        offset = msg.offset()
        read += 1
        if offset >= end:
            break
        try:
            ev: Any = model.model_validate_json(msg.value())
        except (ValidationError, ValueError):
            continue
        if getattr(ev, kind_field) == bar_type and ev.symbol in wanted and (ev.symbol not in found or ev.ts > found[ev.symbol]):
            found[ev.symbol] = ev.ts
    return read


@dataclass
class IngestResult:
    stats: PollStats
    stopped_by: str  # "stop" | "timeout" | "exhausted" (a stub with no bar ahead)


class PollingIngestor:
    def __init__(self, poller: BarPoller, publish: Callable[[list[MarketRawEvent]], None], *,
                 interval_s: float, stop_event: threading.Event | None = None,
                 simulated: SimulatedClock | None = None, look_ahead: timedelta = timedelta(days=10)) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.poller, self.publish, self.interval_s = poller, publish, float(interval_s)
        self.stop_event = stop_event or threading.Event()
        self.simulated, self.look_ahead = simulated, look_ahead
        self.publish_errors = 0
        self.last_ok = time.monotonic()  # the last poll whose fetch and publish both worked

    def health(self) -> tuple[bool, str]:
        """Healthy while polls keep working: unhealthy after ten intervals (at least a minute)
        without one (the vendor or the broker has been failing that long)."""
        quiet = time.monotonic() - self.last_ok
        limit = max(60.0, 10 * self.interval_s)
        return (quiet <= limit, f"last good poll {quiet:.0f} s ago (limit {limit:.0f} s)")

    def stop(self) -> None:
        self.stop_event.set()

    def run(self, timeout_s: float | None = None) -> IngestResult:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.stop_event.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return IngestResult(self.poller.stats, "timeout")
            errors = self.poller.stats.errors
            events = self.poller.poll()
            if self.poller.stats.errors == errors and not events:
                self.last_ok = time.monotonic()
            if events:
                try:
                    self.publish(events)
                except Exception as exc:  # not committed: the next poll hands them out again
                    self.publish_errors += 1
                    log.warning("ingest %s: publishing %d bar(s) failed, retried next poll: %s",
                                self.poller.source_name, len(events), exc)
                else:
                    self.poller.commit(events)
                    self.last_ok = time.monotonic()
            elif self.simulated is not None:
                nxt = self.poller.next_close(self.look_ahead)
                if nxt is None:
                    log.info("ingest %s: no bar within %s of %s: the stub is exhausted", self.poller.source_name,
                             self.look_ahead, self.poller.clock().isoformat())
                    return IngestResult(self.poller.stats, "exhausted")
                self.simulated.jump_to(nxt)
                continue
            self.stop_event.wait(self.interval_s if deadline is None
                                 else max(min(self.interval_s, deadline - time.monotonic()), 0.0))
        return IngestResult(self.poller.stats, "stop")


class IngestCollector:
    """``/metrics`` of an ingest process, read from its stats at each scrape:
    ``awet_ingest_bars_total{source,outcome}`` (published, late, duplicate, rejected),
    ``awet_ingest_fetch_errors_total{source}`` and ``awet_ingest_last_bar_timestamp_seconds``."""

    def __init__(self, source: str, stats: Callable[[], Any]) -> None:
        self.source, self.stats = source, stats

    def describe(self):
        return []  # collected at scrape time only

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.stats()
        bars = CounterMetricFamily("awet_ingest_bars", "Bars an ingest saw, by what became of them",
                                   labels=["source", "outcome"])
        for outcome, attr in (("published", "published"), ("late", "late"), ("duplicate", "duplicates"),
                              ("rejected", "rejected")):
            if hasattr(s, attr):
                bars.add_metric([self.source, outcome], float(getattr(s, attr)))
        yield bars
        errors = CounterMetricFamily("awet_ingest_fetch_errors", "Fetches that failed after the client's retries",
                                     labels=["source"])
        errors.add_metric([self.source], float(getattr(s, "errors", 0)))
        yield errors
        last = getattr(s, "last", None) or {}
        if last:
            stamp = GaugeMetricFamily("awet_ingest_last_bar_timestamp_seconds",
                                      "Start of the newest bar published, per symbol", labels=["source", "symbol"])
            for symbol, ts in sorted(last.items()):
                stamp.add_metric([self.source, symbol], ts.timestamp())
            yield stamp


def serve_ingest_metrics(cfg: AwetConfig, source: str, stats: Callable[[], Any],
                         health: Callable[[], tuple[bool, str]] | None = None, service: str = "ingest") -> Any:
    """Start the ingest's ``/metrics`` + ``/healthz`` on its port (``observability.metrics_port_base``
    + the ``service`` offset: ``ingest``, or ``ingest_reddit`` beside it); returns the server
    (``close()`` it)."""
    from prometheus_client import CollectorRegistry


    registry = CollectorRegistry()
    registry.register(IngestCollector(source, stats))
    return start_metrics_server(service_port(cfg, service), registry, host=cfg.observability.metrics_host,
                                health=health)
