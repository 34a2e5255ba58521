"""``EventTimeSequencer``: a consumer's events handed over in event-time order across partitions.

A topic with several partitions delivers each partition in order but interleaves partitions as
they come: risk would read A@t+1 before B@t, or B@t before A@t, while its rules couple symbols
(equity, portfolio CVaR, exposure caps, pending exposure), so a decision would depend on what
another symbol had booked first. The source says, per bar time, which bars it published (a
``BarClock``); the sequencer holds each event until every bar of its time, and of every
earlier time it was told of, has arrived, then releases them in (ts, symbol) order: the
backtest's order, whatever the partitioning and the timing.

- A time whose bars do not all come (one dead-lettered upstream), or whose clock never comes, is
  released incomplete ``max_wait_s`` after its first event (a time with none: after the first
  event of a later one), counted in ``counters["incomplete"]`` and logged: the one
  timing-dependent case. The wait starts at an event, not at the clock: clocks come one hop
  from the source and may run far ahead of a busy loop.
- An event of a time already released (late, or redelivered after a restart) is released at
  once (``counters["late"]``).
- Bar types are sequenced independently (a daily and a minute clock do not wait for each other).

Pure: no I/O; the caller passes events with their keys and the clocks it reads, and asks what
is ready. ``now`` is injectable for tests.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Generic, TypeVar

from awet_dagster.contracts import BarClock, MarketRawEvent

log = logging.getLogger("awet.streaming.sequencer")

T = TypeVar("T")


def _clock(bar_type: str, ts: datetime, symbols: Iterable[str]) -> BarClock:
    return BarClock(correlation_id=f"clock:{bar_type}:{ts.isoformat()}", bar_type=bar_type, ts=ts,
                    symbols=tuple(sorted(symbols)))


def bar_clocks(events: Iterable[MarketRawEvent]) -> list[BarClock]:
    """One ``BarClock`` per (bar type, ts) of ``events`` (symbols sorted), in time order: what a
    source publishes on market.clock once it has published those bars."""
    by_time: dict[tuple[datetime, str], set[str]] = {}
    for ev in events:
        by_time.setdefault((ev.ts, ev.bar_type), set()).add(ev.symbol)
    return [_clock(bar_type, ts, symbols) for (ts, bar_type), symbols in sorted(by_time.items())]


class ClockBuilder:
    """The clocks of a source that receives bars one at a time (the Alpaca websocket): a bar
    time's clock is due once a bar of every expected symbol came, once a bar of a later time
    came (the stream moved on), or ``grace_s`` after its first bar (a symbol without a trade in
    that minute has no bar). It lists the symbols whose bars came; one that comes after its
    clock went is late for the consumer (released at once). Not thread-safe: the caller locks."""

    def __init__(self, symbols: Iterable[str], grace_s: float, now: Callable[[], float] = time.monotonic) -> None:
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        self.expected = frozenset(symbols)
        self.grace_s = grace_s
        self._now = now
        self._open: dict[tuple[str, datetime], tuple[float, set[str]]] = {}  # (bar type, ts) -> (first bar, symbols)
        self._sent: dict[str, datetime] = {}  # bar type -> last time whose clock went

    def add(self, event: MarketRawEvent) -> list[BarClock]:
        """Note a published bar; the clocks now due (earlier times first)."""
        key = (event.bar_type, event.ts)
        last = self._sent.get(event.bar_type)
        if last is not None and event.ts <= last:
            return []  # its clock went: the bar is late
        _, symbols = self._open.setdefault(key, (self._now(), set()))
        symbols.add(event.symbol)
        return self._take(lambda k, first, syms: (k[0] == event.bar_type and k[1] < event.ts)
                          or (k == key and self.expected <= syms))

    def due(self) -> list[BarClock]:
        """The clocks whose grace ran out."""
        now = self._now()
        return self._take(lambda k, first, syms: now - first >= self.grace_s)

    def flush(self) -> list[BarClock]:
        """Every open clock (the source stops)."""
        return self._take(lambda k, first, syms: True)

    def _take(self, due: Callable[[tuple[str, datetime], float, set[str]], bool]) -> list[BarClock]:
        keys = sorted((k for k, (first, syms) in self._open.items() if due(k, first, syms)), key=lambda k: (k[1], k[0]))
        out = []
        for bar_type, ts in keys:
            _, symbols = self._open.pop((bar_type, ts))
            self._sent[bar_type] = max(ts, self._sent.get(bar_type, ts))
            out.append(_clock(bar_type, ts, symbols))
        return out


class EventTimeSequencer(Generic[T]):
    def __init__(self, max_wait_s: float, now: Callable[[], float] = time.monotonic) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self.max_wait_s = max_wait_s
        self._now = now
        self._clocks: dict[tuple[str, datetime], frozenset[str]] = {}
        self._held: dict[tuple[str, datetime], dict[str, list[T]]] = {}
        self._since: dict[tuple[str, datetime], float] = {}  # first event of the time
        self._released: dict[str, datetime] = {}  # bar type -> last time released
        self._late: list[T] = []
        self.counters = {"released": 0, "incomplete": 0, "late": 0, "clocks": 0}

    def __len__(self) -> int:
        """Events held."""
        return sum(len(items) for by_symbol in self._held.values() for items in by_symbol.values())

    def _done(self, bar_type: str, ts: datetime) -> bool:
        last = self._released.get(bar_type)
        return last is not None and ts <= last

    def on_clock(self, bar_type: str, ts: datetime, symbols: Iterable[str]) -> None:
        """The source published the bars of ``symbols`` at (``bar_type``, ``ts``)."""
        if self._done(bar_type, ts):
            return  # re-read after a restart, or came after its time was released
        key = (bar_type, ts)
        self._clocks[key] = self._clocks.get(key, frozenset()) | frozenset(symbols)
        self.counters["clocks"] += 1

    def offer(self, bar_type: str, ts: datetime, symbol: str, item: T) -> None:
        if self._done(bar_type, ts):
            self._late.append(item)
            self.counters["late"] += 1
            return
        key = (bar_type, ts)
        self._held.setdefault(key, {}).setdefault(symbol, []).append(item)
        self._since.setdefault(key, self._now())

    def ready(self) -> list[T]:
        """The events that may go now, in order: late ones first, then each complete time (or
        one that waited ``max_wait_s``) in (ts, symbol) order, stopping at the first time that
        must still wait."""
        out, self._late = self._late, []
        now = self._now()
        incomplete: list[str] = []
        keys = set(self._held) | set(self._clocks)
        for bar_type in sorted({b for b, _ in keys}):
            times = sorted(ts for b, ts in keys if b == bar_type)
            for i, ts in enumerate(times):
                key = (bar_type, ts)
                got = self._held.get(key, {})
                want = self._clocks.get(key)
                if want is None or not want <= got.keys():
                    started = [self._since[k] for k in ((bar_type, t) for t in times[i:]) if k in self._since]
                    if not started or now - min(started) < self.max_wait_s:
                        break
                    self.counters["incomplete"] += 1
                    incomplete.append(f"{bar_type} {ts.isoformat()} (without "
                                      f"{'its clock' if want is None else sorted(want - got.keys())})")
                for symbol in sorted(got):
                    out.extend(got[symbol])
                    self.counters["released"] += len(got[symbol])
                self._held.pop(key, None)
                self._clocks.pop(key, None)
                self._since.pop(key, None)
                self._released[bar_type] = ts
        if incomplete:  # one line per call, however many times went
            log.warning("sequencer: %d bar time(s) released incomplete after %.1fs: %s", len(incomplete),
                        self.max_wait_s, "; ".join(incomplete[:3]) + (" ..." if len(incomplete) > 3 else ""))
        return out

    def released(self) -> dict[str, datetime]:
        """{bar type: the last time released}: what a restart resumes from (``resume``)."""
        return dict(self._released)

    def resume(self, released: Mapping[str, datetime]) -> None:
        """Continue after the times ``released`` (stored at the last checkpoint before a restart):
        their clocks are ignored and their events, redelivered, go at once."""
        for bar_type, ts in released.items():
            if self._released.get(bar_type) is None or ts > self._released[bar_type]:
                self._released[bar_type] = ts
        for key in [k for k in self._clocks if self._done(*k)]:
            del self._clocks[key]

    def drop(self, keep: Callable[[T], bool]) -> int:
        """Forget held events for which ``keep`` is false (e.g. of partitions taken away: their
        new owner reads them again); returns how many were dropped."""
        dropped = 0
        for key in list(self._held):
            by_symbol = self._held[key]
            for symbol in list(by_symbol):
                kept = [x for x in by_symbol[symbol] if keep(x)]
                dropped += len(by_symbol[symbol]) - len(kept)
                if kept:
                    by_symbol[symbol] = kept
                else:
                    del by_symbol[symbol]
            if not by_symbol:
                del self._held[key]
                self._since.pop(key, None)
        self._late = [x for x in self._late if keep(x)]
        return dropped

    def held_items(self) -> list[T]:
        return [x for by_symbol in self._held.values() for items in by_symbol.values() for x in items]
