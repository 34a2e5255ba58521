"""Exchange-time <-> UTC conversion for US equities.

Vendors (Lean, yfinance) express intraday times in exchange time (America/New_York);
the bar contract is UTC. Conversions go through the tz database (chrono-tz inside
polars, the same IANA data as `zoneinfo`), never a fixed offset, so both sides of a
DST change land on the right instant.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import polars as pl

EXCHANGE_TZ = "America/New_York"
SESSION_OPEN = time(9, 30)
_NY = ZoneInfo(EXCHANGE_TZ)


def exchange_ms_to_utc(day: pl.Expr, ms_since_midnight: pl.Expr) -> pl.Expr:
    """UTC instant of `ms_since_midnight` exchange time on exchange date `day` (pl.Date).

    Ambiguous/non-existent local times (01:00-03:00 on DST days) raise rather than
    guess: US equity bars never fall there, so seeing one means the input is wrong.
    """
    naive = day.cast(pl.Datetime("us")) + pl.duration(milliseconds=ms_since_midnight)
    return (
        naive.dt.replace_time_zone(EXCHANGE_TZ, ambiguous="raise", non_existent="raise")
        .dt.convert_time_zone("UTC")
    )


def session_open_utc(day: pl.Expr) -> pl.Expr:
    """UTC instant of the 09:30 exchange-time open on exchange date `day` (pl.Date)."""
    open_ms = (SESSION_OPEN.hour * 60 + SESSION_OPEN.minute) * 60_000
    return exchange_ms_to_utc(day, pl.lit(open_ms, dtype=pl.Int64))


def exchange_datetime_to_utc(day: date, at: time) -> datetime:
    """Scalar twin of `exchange_ms_to_utc` via zoneinfo (used for request bounds)."""
    return datetime.combine(day, at, tzinfo=_NY).astimezone(timezone.utc)


def to_utc_bounds(start: date | datetime, end: date | datetime) -> tuple[datetime, datetime]:
    """Normalise a request range to a half-open UTC interval [lo, hi).

    Dates are exchange dates and inclusive: `start` maps to 00:00 New York of that day,
    `end` to 00:00 New York of the next day, so a winter post-market minute (which is
    after midnight UTC) still belongs to its own exchange date. Datetimes must be
    tz-aware (a naive one is ambiguous) and are used as given (end exclusive).
    """
    lo = _bound(start, is_end=False)
    hi = _bound(end, is_end=True)
    if hi <= lo:
        raise ValueError(f"empty range: start={start!r} is not before end={end!r}")
    return lo, hi


def _bound(value: date | datetime, *, is_end: bool) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a tz-aware datetime or a date")
        return value.astimezone(timezone.utc)
    if isinstance(value, date):
        day = value + timedelta(days=1) if is_end else value
        return exchange_datetime_to_utc(day, time(0, 0))
    raise TypeError(f"expected date or datetime, got {type(value).__name__}")
