"""Publish a bars frame to ``market.raw`` as MarketRawEvents, in time order, paced.

The ordering/ids/pacing live in the core (``awet_dagster.streaming.replay``); this module
only sends. Events are keyed by symbol (one symbol stays on one partition, in order); with
``clock_topic``, each bar time's ``BarClock`` follows its bars (risk's event-time order).
Every wait is bounded: pacing sleeps are capped and interruptible, ``max_seconds`` and
``stop_event`` end the replay between two bars, and every flush has a timeout.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from awet_dagster.contracts.topics import MARKET_RAW
from awet_dagster.streaming import ReplayPacer, bars_to_events
from awet_dagster.streaming.sequencer import bar_clocks
from awet_kafka.producer import EventProducer

log = logging.getLogger("awet.live.replay")

#: Flush every this many events: bounds memory in librdkafka's queue and how much a
#: failure can leave unacknowledged, without a broker round trip per event.
FLUSH_EVERY = 5000


@dataclass
class ReplayStats:
    published: int = 0
    total: int = 0
    stopped_by: str = ""  # "done" | "max_seconds" | "stop"
    elapsed_s: float = 0.0


def replay_bars(
    producer: EventProducer,
    bars: pl.DataFrame,
    *,
    topic: str = MARKET_RAW,
    speed: float = 0.0,
    max_gap_s: float = 5.0,
    max_seconds: float | None = None,
    stop_event: threading.Event | None = None,
    source: str | None = None,
    flush_timeout_s: float = 30.0,
    on_progress: Callable[[int, int], None] | None = None,
    clock_topic: str | None = None,
) -> ReplayStats:
    """Send every bar of ``bars`` to ``topic``; returns when done, stopped or out of time.

    ``speed=0``: as fast as the producer goes; ``N``: N x real time between bar
    timestamps, each gap capped at ``max_gap_s`` seconds. Everything sent is flushed
    (acknowledged) before returning; ``DeliveryError`` if the broker did not ack it.
    """
    stop_event = stop_event or threading.Event()
    pacer = ReplayPacer(speed, max_gap_s=max_gap_s, stop_event=stop_event)
    stats = ReplayStats(total=bars.height)
    start = time.monotonic()
    deadline = start + max_seconds if max_seconds is not None else None
    if deadline is not None:
        # The pacer's waits are interruptible: a timer turns the deadline into a stop.
        timer = threading.Timer(max_seconds, stop_event.set)  # type: ignore[arg-type]
        timer.daemon = True
        timer.start()
    else:
        timer = None
    group: list = []  # the bars of the current bar time (for its clock)
    try:
        for event in bars_to_events(bars, source=source):
            if not pacer.wait(event.ts):
                break
            if group and (event.ts, event.bar_type) != (group[0].ts, group[0].bar_type):
                for clock in bar_clocks(group) if clock_topic is not None else ():
                    producer.send(clock_topic, clock)
                group = []
            group.append(event)
            producer.send(topic, event)
            stats.published += 1
            if stats.published % FLUSH_EVERY == 0:
                producer.flush(flush_timeout_s)
            if on_progress is not None:
                on_progress(stats.published, stats.total)
        for clock in bar_clocks(group) if clock_topic is not None and group else ():
            producer.send(clock_topic, clock)  # the last time (or what a stop left of it) was published
        producer.flush(flush_timeout_s)
    finally:
        if timer is not None:
            timer.cancel()
    if stats.published == stats.total:
        stats.stopped_by = "done"
    elif deadline is not None and time.monotonic() >= deadline:
        stats.stopped_by = "max_seconds"
    else:
        stats.stopped_by = "stop"
    stats.elapsed_s = time.monotonic() - start
    log.info("replay: %d/%d bars to %s in %.1fs (%s)", stats.published, stats.total, topic,
             stats.elapsed_s, stats.stopped_by)
    return stats
