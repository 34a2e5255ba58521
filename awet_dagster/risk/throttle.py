"""Order throttles: orders per rolling minute, orders per symbol per exchange day, cooldown.

Time comes from the caller (the bar/decision ts), never the wall clock, so the backtest
and a replay decide exactly like the live service did.
"""
from __future__ import annotations

from collections import deque
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

_NY = ZoneInfo("America/New_York")
_MINUTE = timedelta(minutes=1)


class OrderThrottle:
    def __init__(self, max_per_minute: int, max_per_symbol_day: int, cooldown_s: float) -> None:
        self.max_per_minute = max_per_minute
        self.max_per_symbol_day = max_per_symbol_day
        self.cooldown = timedelta(seconds=cooldown_s)
        self._recent: deque[datetime] = deque()
        self._per_day: dict[tuple[str, date], int] = {}
        self._last: dict[str, datetime] = {}

    def check(self, symbol: str, ts: datetime) -> list[str]:
        """Reasons the next order on `symbol` at `ts` would break a throttle ([] = ok)."""
        reasons = []
        window = self._recent
        while window and ts - window[0] >= _MINUTE:  # time moves forward: older ones never count again
            window.popleft()
        # Recorded in time order, so after pruning all count, unless ts is older than some
        # (a late signal): then count the window exactly.
        recent = len(window) if not window or window[-1] <= ts else sum(1 for t in window if ts - t < _MINUTE)
        if recent >= self.max_per_minute:
            reasons.append(f"throttle: {recent} orders in the last minute (max {self.max_per_minute})")
        day = ts.astimezone(_NY).date()
        count = self._per_day.get((symbol, day), 0)
        if count >= self.max_per_symbol_day:
            reasons.append(f"throttle: {count} orders on {symbol} on {day} (max {self.max_per_symbol_day})")
        last = self._last.get(symbol)
        if last is not None and ts - last < self.cooldown:
            reasons.append(f"cooldown: last {symbol} order {(ts - last).total_seconds():.0f}s ago "
                           f"(< {self.cooldown.total_seconds():.0f}s)")
        return reasons

    def record(self, symbol: str, ts: datetime) -> None:
        self._recent.append(ts)
        while self._recent and ts - self._recent[0] >= _MINUTE:
            self._recent.popleft()
        day = ts.astimezone(_NY).date()
        self._per_day[(symbol, day)] = self._per_day.get((symbol, day), 0) + 1
        self._last[symbol] = ts
