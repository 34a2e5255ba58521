"""Tradability filters: market hours, liquidity (10-day average volume), spread, earnings,
confidence and the regime rule.

Each filter returns a `FilterResult`. A filter whose input is missing (no quotes for the
spread) is *not applicable*: it neither passes nor fails, and the signal records it in
`filters_passed` as "<name>:not_applicable" so the audit trail shows it was not checked.
"""
from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

EXCHANGE_TZ = ZoneInfo("America/New_York")
CALENDAR_NAME = "XNYS"
CALENDAR_START = "1990-01-01"  # the shipped sample starts in 1998; the default start is 20y back


@dataclass(frozen=True)
class FilterResult:
    name: str
    passed: bool
    reason: str | None = None  # why it failed, or why it did not apply
    applicable: bool = True

    @property
    def label(self) -> str:
        return self.name if self.applicable else f"{self.name}:not_applicable"


@functools.lru_cache(maxsize=1)
def exchange_calendar():
    """The XNYS calendar (DST-aware, holidays, half days), built once per process (~1 s)."""
    import exchange_calendars as xcals

    return xcals.get_calendar(CALENDAR_NAME, start=CALENDAR_START)


def exchange_date(ts: datetime) -> date:
    return ts.astimezone(EXCHANGE_TZ).date()


def market_hours_filter(ts: datetime, bar_type: str) -> FilterResult:
    """Minute bar: its start minute must be a regular-session minute (09:30 <= t < close,
    close 13:00 ET on half days). Daily bar: its exchange date must be a session."""
    import pandas as pd

    cal = exchange_calendar()
    if bar_type == "daily":
        day = exchange_date(ts)
        ok = bool(cal.is_session(pd.Timestamp(day)))
        return FilterResult("market_hours", ok, None if ok else f"{day} is not an XNYS session")
    if bar_type != "minute":
        raise ValueError(f"unknown bar_type {bar_type!r}")
    stamp = pd.Timestamp(ts)
    if stamp < cal.first_minute or stamp > cal.last_minute:
        return FilterResult("market_hours", False, f"{ts.isoformat()} outside the calendar range")
    ok = bool(cal.is_trading_minute(stamp))
    local = ts.astimezone(EXCHANGE_TZ).strftime("%Y-%m-%d %H:%M %Z")
    return FilterResult("market_hours", ok, None if ok else f"{local} is outside regular XNYS hours")


class VolumeTracker:
    """Average daily volume over the last `days` sessions, point in time.

    Daily bars: the last `days` bars including the current one (it is closed when we
    decide). Minute bars: minute volumes are summed per exchange date and the average is
    over the last `days` *completed* sessions (today's partial volume would understate it);
    with no completed session yet the average is unknown and the filter fails.
    """

    def __init__(self, days: int = 10) -> None:
        self.days = days
        self._totals: deque[float] = deque(maxlen=days)
        self._current_day: date | None = None
        self._current_total = 0.0

    def update(self, ts: datetime, volume: float, bar_type: str) -> None:
        if bar_type == "daily":
            self._totals.append(volume)
            return
        day = exchange_date(ts)
        if self._current_day is not None and day != self._current_day:
            self._totals.append(self._current_total)
            self._current_total = 0.0
        self._current_day = day
        self._current_total += volume

    def average(self) -> float | None:
        return sum(self._totals) / len(self._totals) if self._totals else None

    @property
    def sessions(self) -> int:
        return len(self._totals)


def volume_filter(avg_volume: float | None, sessions: int, minimum: float) -> FilterResult:
    if avg_volume is None:
        return FilterResult("volume", False, "no completed session of volume history yet")
    ok = avg_volume >= minimum
    reason = None if ok else f"{sessions}-session average volume {avg_volume:,.0f} < {minimum:,.0f}"
    return FilterResult("volume", ok, reason)


def spread_filter(bid: float | None, ask: float | None, max_spread_pct: float) -> FilterResult:
    """(ask - bid) / mid < max_spread_pct. Missing/invalid quotes: not applicable."""
    if bid is None or ask is None or bid != bid or ask != ask or bid <= 0 or ask <= 0:
        return FilterResult("spread", True, "no quotes for this bar", applicable=False)
    if bid > ask:
        return FilterResult("spread", False, f"crossed quote bid {bid} > ask {ask}")
    spread = (ask - bid) / ((ask + bid) / 2.0)
    ok = spread < max_spread_pct
    return FilterResult("spread", ok, None if ok else f"spread {spread:.4%} >= {max_spread_pct:.4%}")


def parse_earnings_blackout(entries: Iterable[str]) -> frozenset[tuple[str, date]]:
    """`("AAPL:2021-01-27", ...)` -> {("AAPL", date(2021, 1, 27))}; malformed entries raise."""
    out: set[tuple[str, date]] = set()
    for entry in entries:
        symbol, sep, day = entry.partition(":")
        if not sep or not symbol.strip():
            raise ValueError(f"earnings blackout entry {entry!r} is not SYMBOL:YYYY-MM-DD")
        try:
            out.add((symbol.strip().upper(), date.fromisoformat(day.strip())))
        except ValueError:
            raise ValueError(f"earnings blackout entry {entry!r} has a bad date (want YYYY-MM-DD)") from None
    return frozenset(out)


def earnings_filter(symbol: str, ts: datetime, blackout: frozenset[tuple[str, date]]) -> FilterResult:
    """Blocks the listed exchange date of a symbol (the day of the report)."""
    day = exchange_date(ts)
    if (symbol.upper(), day) in blackout:
        return FilterResult("earnings", False, f"{symbol} earnings blackout on {day}")
    return FilterResult("earnings", True)


def confidence_filter(probability: float, minimum: float) -> FilterResult:
    """`probability`: the calibrated chance that the signal's direction is right."""
    ok = probability >= minimum
    return FilterResult("confidence", ok, None if ok else f"calibrated probability {probability:.3f} < {minimum:.3f}")


def regime_filter(regime: str, direction: int, probability: float, rule) -> FilterResult:
    """The regime's extra bar for a new position (``signals.regime_filter.<regime>``): a long
    (``direction`` +1) needs ``rule.long_min_prob``, a short ``rule.short_min_prob``. No
    direction, or no bar for it: not applicable."""
    need = rule.long_min_prob if direction > 0 else rule.short_min_prob if direction < 0 else None
    if need is None:
        return FilterResult("regime", True, f"no {regime} rule for this direction", applicable=False)
    side = "long" if direction > 0 else "short"
    ok = probability >= need
    return FilterResult("regime", ok, None if ok else
                        f"{regime} regime: a new {side} needs calibrated probability {need:.3f}, got {probability:.3f}")
