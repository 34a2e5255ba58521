"""``awet ingest --source alpaca``: live bars from Alpaca's websocket to ``market.raw``.

A Kafka-free component (the command wires its ``publish`` / ``publish_clock`` to the bus),
testable without network: ``AlpacaBarIngestor`` drives any object with
the ``StockDataStream`` surface we use (``subscribe_bars``/``subscribe_daily_bars``,
blocking ``run()``, ``stop()``), built by an injected factory.

- Reconnect: when ``run()`` returns or raises while we were not asked to stop (socket
  closed, auth hiccup, alpaca-py giving up), a NEW stream is built after an exponential
  backoff (``Backoff``: initial * factor^n, capped, reset once a connection delivered
  data). alpaca-py also retries inside ``run()``; this outer loop covers the cases where
  it returns (e.g. "insufficient subscription") or dies.
- No duplicates: Alpaca re-sends the current minute's bar after a reconnect; bars are
  deduplicated on (symbol, bar_type, ts) for the whole session (bounded memory: only the
  last ``dedupe_window`` timestamps per symbol are kept; older bars are dropped as stale).
  The event_id is deterministic anyway, so a duplicate across sessions is also detectable
  downstream.
- Clocks (``publish_clock``): the stream brings bars one symbol at a time, so a bar time's
  ``BarClock`` (risk's event-time order) goes once every symbol's bar came, once a later bar
  time began, or ``clock_grace_s`` after its first bar (``ClockBuilder``; a ticker thread checks
  the grace, and what is open when the stream stops goes then).
- Every wait is bounded: backoff waits go through the stop event; ``run(timeout_s)``
  stops the stream from a timer.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from awet_dagster.contracts import BarClock, MarketRawEvent, new_event_id
from awet_dagster.sources import credentials
from awet_dagster.streaming import bar_event_id
from awet_dagster.streaming.sequencer import ClockBuilder

log = logging.getLogger("awet.streaming.alpaca_ingest")


class BarStream(Protocol):
    def subscribe_bars(self, handler: Callable[..., Any], *symbols: str) -> None: ...

    def run(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Backoff:
    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0

    def delay(self, attempt: int) -> float:
        """Delay before reconnect number ``attempt`` (1-based)."""
        return min(self.initial_s * self.factor ** max(attempt - 1, 0), self.max_s)


@dataclass
class IngestStats:
    received: int = 0
    published: int = 0
    duplicates: int = 0
    rejected: int = 0  # bars that failed the contract (logged)
    connections: int = 0
    reconnects: int = 0
    stopped_by: str = ""


def alpaca_stream_factory(api_key: Any, secret_key: Any, *, feed: str = "iex") -> Callable[[], BarStream]:
    """Factory of real ``StockDataStream``s; raises ``MissingCredentials`` without keys."""
    keys = credentials.require("alpaca", alpaca_api_key=api_key, alpaca_secret_key=secret_key)

    def make() -> BarStream:
        from alpaca.data.enums import DataFeed
        from alpaca.data.live import StockDataStream

        return StockDataStream(keys["alpaca_api_key"], keys["alpaca_secret_key"], feed=DataFeed(feed))

    return make


class AlpacaBarIngestor:
    """Subscribes to bars of ``symbols`` and calls ``publish(event)`` once per new bar."""

    def __init__(
        self,
        symbols: list[str] | tuple[str, ...],
        publish: Callable[[MarketRawEvent], None],
        stream_factory: Callable[[], BarStream],
        *,
        bar_type: str = "minute",
        backoff: Backoff = Backoff(),
        max_reconnects: int | None = None,
        dedupe_window: int = 10_000,
        publish_clock: Callable[[BarClock], None] | None = None,
        clock_grace_s: float = 5.0,
    ) -> None:
        if not symbols:
            raise ValueError("at least one symbol is required")
        if bar_type not in ("minute", "daily"):
            raise ValueError(f"bar_type must be 'minute' or 'daily', got {bar_type!r}")
        self.symbols = tuple(s.upper() for s in symbols)
        self.bar_type = bar_type
        self._publish = publish
        self._factory = stream_factory
        self._backoff = backoff
        self._max_reconnects = max_reconnects
        self._window = dedupe_window
        self._seen: dict[str, tuple[set[datetime], deque[datetime]]] = {}
        self._stop = threading.Event()
        self._stream: BarStream | None = None
        self._lock = threading.Lock()
        self._got_data = False
        self.stats = IngestStats()
        self._publish_clock = publish_clock
        self._clocks = ClockBuilder(self.symbols, clock_grace_s)
        self._clock_lock = threading.Lock()

    def _send_clocks(self, take: Callable[[], list[BarClock]]) -> None:
        if self._publish_clock is None:
            return
        with self._clock_lock:
            clocks = take()
        for clock in clocks:
            try:
                self._publish_clock(clock)
            except Exception as exc:  # noqa: BLE001 - a lost clock costs risk one clock_wait_s, not the stream
                log.warning("publishing the clock of %s %s failed: %s", clock.bar_type, clock.ts.isoformat(), exc)

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Stop from any thread: the current stream is stopped, no reconnect follows."""
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            try:
                stream.stop()
            except Exception:  # noqa: BLE001 - alpaca-py's stop fails if run() never started its loop
                log.debug("stream.stop() failed", exc_info=True)

    # ------------------------------------------------------------------ bars
    def _is_new(self, symbol: str, ts: datetime) -> bool:
        seen, order = self._seen.setdefault(symbol, (set(), deque()))
        if ts in seen or (order and len(order) >= self._window and ts <= order[0]):
            return False
        return True

    def _remember(self, symbol: str, ts: datetime) -> None:
        seen, order = self._seen[symbol]
        seen.add(ts)
        order.append(ts)
        while len(order) > self._window:
            seen.discard(order.popleft())

    def to_event(self, bar: Any) -> MarketRawEvent:
        """MarketRawEvent of an alpaca-py ``Bar`` (or anything with its attributes)."""
        ts = bar.timestamp
        if ts.tzinfo is None:  # alpaca-py gives aware UTC; be explicit if a fake does not
            ts = ts.replace(tzinfo=UTC)
        symbol = bar.symbol.upper()
        return MarketRawEvent(
            event_id=bar_event_id(symbol, self.bar_type, ts),
            correlation_id=new_event_id(),
            symbol=symbol,
            bar_type=self.bar_type,  # type: ignore[arg-type]
            ts=ts,
            open=bar.open, high=bar.high, low=bar.low, close=bar.close,
            volume=round(float(bar.volume)),  # alpaca-py gives a float; whole shares on the wire
            source="alpaca",
        )

    async def on_bar(self, bar: Any) -> None:
        """alpaca-py handler (must be a coroutine function)."""
        self.stats.received += 1
        self._got_data = True
        try:
            event = self.to_event(bar)
        except (ValidationError, AttributeError, TypeError, ValueError) as exc:
            self.stats.rejected += 1
            log.warning("rejected bar %r: %s", bar, exc)
            return
        if not self._is_new(event.symbol, event.ts):
            self.stats.duplicates += 1
            return
        self._publish(event)  # raises -> alpaca-py logs it; the bar is not remembered
        self._remember(event.symbol, event.ts)
        self.stats.published += 1
        self._send_clocks(lambda: self._clocks.add(event))

    # ------------------------------------------------------------------ loop
    def run(self, timeout_s: float | None = None) -> IngestStats:
        """Stream until ``stop()``, ``timeout_s`` or ``max_reconnects`` exhausted."""
        timer = None
        if timeout_s is not None:
            timer = threading.Timer(timeout_s, self._timeout)
            timer.daemon = True
            timer.start()
        attempt = 0
        done = threading.Event()
        if self._publish_clock is not None:
            threading.Thread(target=self._tick, args=(done,), name="alpaca-clocks", daemon=True).start()
        try:
            while not self._stop.is_set():
                stream = self._factory()
                if self.bar_type == "daily":
                    stream.subscribe_daily_bars(self.on_bar, *self.symbols)  # type: ignore[attr-defined]
                else:
                    stream.subscribe_bars(self.on_bar, *self.symbols)
                with self._lock:
                    self._stream = stream
                if self._stop.is_set():
                    break
                self.stats.connections += 1
                self._got_data = False
                try:
                    stream.run()  # blocks until the connection ends or stop()
                except Exception as exc:  # noqa: BLE001 - any end of the stream means reconnect
                    log.warning("alpaca stream failed: %r", exc)
                finally:
                    with self._lock:
                        self._stream = None
                if self._stop.is_set():
                    break
                attempt = 1 if self._got_data else attempt + 1  # data since connect: reset
                if self._max_reconnects is not None and self.stats.reconnects >= self._max_reconnects:
                    self.stats.stopped_by = "max_reconnects"
                    log.error("alpaca stream: giving up after %d reconnect(s)", self.stats.reconnects)
                    return self.stats
                delay = self._backoff.delay(attempt)
                log.info("alpaca stream ended; reconnecting in %.1fs (attempt %d)", delay, attempt)
                if self._stop.wait(delay):
                    break
                self.stats.reconnects += 1
        finally:
            if timer is not None:
                timer.cancel()
            done.set()
            self._send_clocks(self._clocks.flush)  # bars published without their clock yet
        self.stats.stopped_by = self.stats.stopped_by or ("timeout" if self._timed_out else "stop")
        return self.stats

    _timed_out = False

    def _tick(self, done: threading.Event) -> None:
        while not done.wait(0.5):
            self._send_clocks(self._clocks.due)

    def _timeout(self) -> None:
        self._timed_out = True
        self.stop()
