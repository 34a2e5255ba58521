"""Replay: a bars frame -> the time-ordered MarketRawEvent stream, and its pacing.

Order is (ts, symbol, bar_type): deterministic, and what a live feed would deliver
(all symbols' bars of one instant before the next instant). Pacing is computed from
the gap between consecutive bar timestamps, divided by ``speed`` and capped, so a
weekend gap of daily bars at 1x never turns into a two-day sleep.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import polars as pl

from awet_dagster.contracts import MarketRawEvent, new_event_id
from awet_dagster.streaming.events import bar_to_event


def replay_order(bars: pl.DataFrame) -> pl.DataFrame:
    """``bars`` sorted the way a replay publishes them: by (ts, symbol, bar_type)."""
    return bars.sort("ts", "symbol", "bar_type", maintain_order=True)


def bars_to_events(
    bars: pl.DataFrame,
    *,
    source: str | None = None,
    correlation_ids: Callable[[], str] = new_event_id,
) -> Iterator[MarketRawEvent]:
    """Yield one event per bar in replay order (lazily: a million bars stay a frame).

    ``event_id`` is deterministic per (symbol, bar_type, ts); ``correlation_id`` is fresh
    per bar (``correlation_ids`` is injectable for tests). Each event says ``replay: true``
    and keeps the bar's feed (``source`` overrides the bar's own ``source`` column).
    """
    for row in replay_order(bars).iter_rows(named=True):
        yield bar_to_event(row, correlation_id=correlation_ids(), source=source, replay=True)


class ReplayPacer:
    """Sleeps between bars so the replay runs at ``speed`` x real time.

    ``speed == 0``: no sleeping at all. Otherwise the wait before a bar is
    ``(ts - previous ts) / speed`` capped at ``max_gap_s``. Waits go through
    ``stop_event.wait`` so a stop request (SIGTERM, ``--max-seconds``) ends them at once.
    """

    def __init__(self, speed: float, *, max_gap_s: float = 5.0,
                 stop_event: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0 (0 = as fast as possible)")
        if max_gap_s < 0:
            raise ValueError("max_gap_s must be >= 0")
        self.speed = float(speed)
        self.max_gap_s = float(max_gap_s)
        self.stop_event = stop_event or threading.Event()
        self._clock = clock
        self._prev_ts: datetime | None = None
        self._due = 0.0  # monotonic time at which the next bar is due

    def delay_for(self, ts: datetime) -> float:
        """Seconds to wait before ``ts`` given the previous bar (pure: no state change)."""
        if self.speed == 0 or self._prev_ts is None:
            return 0.0
        gap = (ts - self._prev_ts).total_seconds()
        return min(max(gap, 0.0) / self.speed, self.max_gap_s)

    def wait(self, ts: datetime) -> bool:
        """Wait until the bar at ``ts`` is due; False if a stop was requested meanwhile."""
        now = self._clock()
        if self._prev_ts is None:
            self._due = now
        # Schedule against a running "due" time, not "now + delay": publishing takes
        # time too, and per-bar sleeps would drift slower than the requested speed.
        self._due = max(self._due + self.delay_for(ts), now - self.max_gap_s)
        self._prev_ts = ts
        left = self._due - now
        if left > 0:
            return not self.stop_event.wait(left)
        return not self.stop_event.is_set()
