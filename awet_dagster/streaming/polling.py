"""Bars that have closed, each once: the polling half of the ingestion service.

``BarPoller.poll()`` asks a ``BarSource`` (Polygon, yfinance, the offline sample, the
synthetic generator: anything with ``fetch(symbols, start, end, timeframe)``) for the bars
since the last one it handed out and returns those that have CLOSED by the clock, oldest
first, each (symbol, bar_type, ts) once:

- closed: a minute bar at ``ts + 1 min``, a daily bar at 16:00 New York of its session (an
  early close is earlier, so it is never published before it closed). A vendor's bar still
  forming (Polygon and yfinance return the current minute) is left for a later poll.
- once: a bar at or before the symbol's last handed-out bar is dropped (a vendor re-sending
  the last minute, a second poll of the same window). ``resume`` sets those marks from what
  an earlier run already published (the live layer reads them from ``market.raw``), so a
  restart publishes nothing twice.
- late: a bar OLDER than the last one handed out (it was missing when the later one came)
  cannot be published in order any more: counted once in ``stats.late`` and logged, like a
  downstream time guard would refuse it (``data.max_lateness_s``). Each fetch re-reads
  ``OVERLAP`` before the last bar so such a bar is seen at all.
- first poll without marks: bars closed within ``catch_up`` of the clock (default one week
  of daily bars, 15 minutes of minute bars): a service started mid-session publishes the
  recent bars, not years of history (that is what backfills are for). With marks (a
  restart), the bars missed while down follow, up to ``MAX_WINDOW`` back.

The clock is a parameter: the wall clock for a vendor; for the stub (the offline sample
replayed live) a ``SimulatedClock`` that runs from a start date at ``speed`` x real time.
Pure: no network, no Kafka; the source's own timeouts and retries apply inside ``fetch``.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

import polars as pl

from awet_dagster.contracts import MarketRawEvent
from awet_dagster.sources.errors import AuthenticationFailed, MissingCredentials, NoData
from awet_dagster.sources.exchange_time import EXCHANGE_TZ, exchange_datetime_to_utc
from awet_dagster.streaming.events import bar_to_event

log = logging.getLogger("awet.streaming.polling")

_NY = ZoneInfo(EXCHANGE_TZ)
SESSION_CLOSE = dtime(16, 0)
DEFAULT_CATCH_UP = {"minute": timedelta(minutes=15), "daily": timedelta(days=7)}
MAX_WINDOW = {"minute": timedelta(days=7), "daily": timedelta(days=60)}
OVERLAP = {"minute": timedelta(minutes=5), "daily": timedelta(days=5)}


def bar_close(ts: datetime, bar_type: str) -> datetime:
    """When the bar starting at ``ts`` (UTC) has closed."""
    if bar_type == "minute":
        return ts + timedelta(minutes=1)
    if bar_type == "daily":
        return exchange_datetime_to_utc(ts.astimezone(_NY).date(), SESSION_CLOSE)
    raise ValueError(f"bar_type must be 'minute' or 'daily', got {bar_type!r}")


class SimulatedClock:
    """A market clock that starts at ``start`` and runs ``speed`` x faster than real time
    (``speed`` 60: a minute bar per second; 86400: a day per second). Nights, weekends and
    holidays would pass at the same rate: the stub's loop ``jump_to``s the next bar's close
    when a poll finds nothing, so it never idles through a closed market."""

    def __init__(self, start: datetime, speed: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = float(speed)
        self._monotonic = monotonic
        self._t0 = monotonic()
        self._start = start.astimezone(UTC)

    def __call__(self) -> datetime:
        return self._start + timedelta(seconds=(self._monotonic() - self._t0) * self.speed)

    def jump_to(self, at: datetime) -> None:
        """Move the clock forward to ``at`` (never back)."""
        now = self()
        if at > now:
            self._start += at - now


@dataclass
class PollStats:
    polls: int = 0
    published: int = 0
    duplicates: int = 0  # the same bar twice in one reply (a re-read of a published bar is not counted)
    late: int = 0  # older than a bar already handed out: cannot be published in order
    forming: int = 0  # not closed yet at the poll: left for a later one
    errors: int = 0  # fetches that failed (the source had retried already)
    last: dict[str, datetime] = field(default_factory=dict)


class BarPoller:
    def __init__(self, source: object, symbols: Sequence[str], bar_type: str, *, clock: Callable[[], datetime],
                 source_name: str, catch_up: timedelta | None = None) -> None:
        if bar_type not in DEFAULT_CATCH_UP:
            raise ValueError(f"bar_type must be 'minute' or 'daily', got {bar_type!r}")
        if not symbols:
            raise ValueError("symbols must not be empty")
        self.source, self.bar_type, self.clock = source, bar_type, clock
        self.symbols = list(dict.fromkeys(s.upper() for s in symbols))
        self.source_name = source_name
        self.catch_up = catch_up if catch_up is not None else DEFAULT_CATCH_UP[bar_type]
        self.max_window = max(MAX_WINDOW[bar_type], self.catch_up)
        # Each fetch re-reads a few bars before the last one: a bar that was missing and came
        # late is then seen (and counted), not silently never asked for.
        self.overlap = OVERLAP[bar_type]
        self._late: set[tuple[str, datetime]] = set()
        # Per symbol, where this stream begins: bars before it (the overlap reaching back past
        # a fresh start or a resumed mark) are someone else's history, not late ones.
        self._origin: dict[str, datetime] = {}
        self._first_floor: datetime | None = None
        self.stats = PollStats()
        self._last: dict[str, datetime] = {}
        # A short memory of what was handed out per symbol: tells a re-sent older bar
        # (duplicate) from one that was missing before (late).
        self._recent: dict[str, deque[datetime]] = {}

    def resume(self, published: Mapping[str, datetime]) -> None:
        """The last bar an earlier run published per symbol: nothing at or before it again."""
        for symbol, ts in published.items():
            if symbol in self.symbols and (symbol not in self._last or ts > self._last[symbol]):
                self._last[symbol] = ts.astimezone(UTC)
                self._origin[symbol] = self._last[symbol]
        self.stats.last = dict(self._last)

    def window_start(self, now: datetime) -> datetime:
        """Where the next fetch starts: ``overlap`` before the oldest symbol's last bar; for a
        symbol with none yet, ``catch_up`` before the first poll. Never more than ``max_window``
        back (a restart after a long outage fills at most that much of the gap)."""
        if self._first_floor is None:
            self._first_floor = now - self.catch_up
            for symbol in self.symbols:
                self._origin.setdefault(symbol, self._first_floor)
        starts = [self._last[s] - self.overlap if s in self._last else self._first_floor for s in self.symbols]
        return max(min(starts), now - self.max_window)

    def poll(self) -> list[MarketRawEvent]:
        """The bars closed since the last committed ones, oldest first (see the module doc).
        Call ``commit`` with them once they are published."""
        now = self.clock()
        self.stats.polls += 1
        start = self.window_start(now)
        if start >= now:
            return []
        try:
            frame = self.source.fetch(self.symbols, start, now, self.bar_type)  # type: ignore[attr-defined]
        except NoData:
            return []  # the vendor answered: nothing in the window yet (a closed market)
        except (AuthenticationFailed, MissingCredentials):
            raise  # asking again cannot help: the run stops and says why
        except Exception as exc:  # the source retried already; the next poll asks again
            self.stats.errors += 1
            log.warning("ingest %s: fetch of %s..%s failed: %s", self.source_name, start.isoformat(),
                        now.isoformat(), exc)
            return []
        return self._select(frame, now)

    def _select(self, frame: pl.DataFrame, now: datetime) -> list[MarketRawEvent]:
        out: list[MarketRawEvent] = []
        if frame.is_empty():
            return out
        last = dict(self._last)  # moved on only by commit(): a failed publish is fetched again
        in_reply: set[tuple[str, datetime]] = set()
        for bar in frame.sort("ts", "symbol").iter_rows(named=True):
            symbol, ts = bar["symbol"], bar["ts"]
            if symbol not in self.symbols or bar.get("bar_type", self.bar_type) != self.bar_type:
                continue
            if (symbol, ts) in in_reply:  # the vendor sent the same bar twice in one reply
                self.stats.duplicates += 1
                continue
            in_reply.add((symbol, ts))
            if bar_close(ts, self.bar_type) > now:
                self.stats.forming += 1
                continue
            if ts < self._origin.get(symbol, ts):
                continue  # before this stream began (a resumed mark, or the first catch-up)
            mark = last.get(symbol)
            if mark is not None and ts <= mark:
                if ts == mark or ts in self._recent.get(symbol, ()):
                    continue  # published already: the overlap re-read, or a vendor re-sending it
                if (symbol, ts) not in self._late:
                    self._late.add((symbol, ts))
                    self.stats.late += 1
                    log.warning("ingest %s: %s bar %s arrived after %s was published: dropped (late)",
                                self.source_name, symbol, ts.isoformat(), mark.isoformat())
                continue
            out.append(bar_to_event(bar, source=self.source_name))
            last[symbol] = ts
        return out

    def commit(self, published: Sequence[MarketRawEvent]) -> None:
        """``published`` (from ``poll``) were acknowledged: never hand them out again."""
        for ev in published:
            if ev.symbol not in self._last or ev.ts > self._last[ev.symbol]:
                self._last[ev.symbol] = ev.ts
            self._recent.setdefault(ev.symbol, deque(maxlen=512)).append(ev.ts)
        self.stats.published += len(published)
        self.stats.last = dict(self._last)

    def next_close(self, horizon: timedelta) -> datetime | None:
        """Close of the first bar after the clock within ``horizon`` (None: none): where a
        simulated clock jumps when the market is closed."""
        now = self.clock()
        try:
            frame = self.source.fetch(self.symbols, now - _bar_step(self.bar_type), now + horizon,  # type: ignore[attr-defined]
                                      self.bar_type)
        except Exception as exc:
            self.stats.errors += 1
            log.warning("ingest %s: look-ahead fetch failed: %s", self.source_name, exc)
            return None
        closes = [bar_close(ts, self.bar_type) for ts in frame["ts"]] if not frame.is_empty() else []
        later = [c for c in closes if c > now]
        return min(later) if later else None


def _bar_step(bar_type: str) -> timedelta:
    return timedelta(minutes=1) if bar_type == "minute" else timedelta(days=1)
