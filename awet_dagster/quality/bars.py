"""Data-quality checks for stored bars.

Each returns a `QualityResult` so the same logic serves Dagster asset checks, tests and the
command line. Rejected rows are counted too: a bad row that was quarantined in
`rejected_bars` still means the partition's input was not clean.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import pandas as pd
import polars as pl

from awet_dagster.sources.exchange_time import EXCHANGE_TZ


@dataclass(frozen=True)
class QualityResult:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def duplicate_rows(bars: pl.DataFrame, rejected: pl.DataFrame) -> QualityResult:
    stored_dups = bars.height - bars.unique(["symbol", "bar_type", "ts"]).height
    rejected_dups = _rejected_with(rejected, "duplicate")
    passed = stored_dups == 0 and rejected_dups == 0
    return QualityResult(
        "no_duplicates", passed,
        "no (symbol, bar_type, ts) appears twice, in the stored bars or in the input",
        {"stored_duplicates": stored_dups, "input_duplicates_rejected": rejected_dups},
    )


def ohlc_violations(bars: pl.DataFrame, rejected: pl.DataFrame) -> QualityResult:
    bad = bars.filter(
        (pl.col("low") > pl.min_horizontal("open", "close"))
        | (pl.col("high") < pl.max_horizontal("open", "close"))
        | (pl.min_horizontal("open", "high", "low", "close") <= 0)
        | (pl.col("volume") < 0)
    ).height
    rejected_bad = rejected.height - _rejected_with(rejected, "duplicate") if rejected.height else 0
    return QualityResult(
        "ohlc_consistent", bad == 0 and rejected_bad == 0,
        "low ≤ open, close ≤ high; prices > 0; volume ≥ 0 (stored rows and input rows)",
        {"stored_violations": bad, "input_rows_rejected": rejected_bad},
    )


@lru_cache(maxsize=4)
def _calendar(start_year: int, end_year: int):
    import exchange_calendars as xcals

    return xcals.get_calendar("XNYS", start=f"{start_year}-01-01", end=f"{end_year}-12-31")


def expected_sessions(start: date, end: date) -> list[date]:
    cal = _calendar(max(start.year, 1990), end.year)
    sessions = cal.sessions_in_range(pd.Timestamp(start), pd.Timestamp(end))
    return [s.date() for s in sessions]


def expected_session_minutes(session: date) -> list[datetime]:
    """Regular-hours minute bar starts (UTC) of one session; half days end at 13:00 ET."""
    cal = _calendar(session.year, session.year)
    minutes = cal.session_minutes(pd.Timestamp(session))
    return [m.to_pydatetime().astimezone(timezone.utc) for m in minutes]


def calendar_gaps(bars: pl.DataFrame, bar_type: str, max_missing_fraction: float) -> QualityResult:
    """Sessions (daily) or regular-hours minutes (minute) missing between each symbol's first
    and last bar, against the XNYS calendar (holidays, half days, DST)."""
    missing_total, expected_total, worst = 0, 0, {}
    for (symbol,), frame in bars.group_by(["symbol"], maintain_order=True):
        local_days = frame["ts"].dt.convert_time_zone(EXCHANGE_TZ).dt.date()
        if bar_type == "daily":
            have = set(local_days.to_list())
            want = set(expected_sessions(min(have), max(have)))
        else:
            have = set(frame["ts"].to_list())
            want = set()
            for day in sorted(set(local_days.to_list())):
                if expected_sessions(day, day):
                    want.update(expected_session_minutes(day))
        missing = len(want - have)
        missing_total += missing
        expected_total += len(want)
        if missing:
            worst[symbol] = missing
    fraction = missing_total / expected_total if expected_total else 0.0
    return QualityResult(
        "no_calendar_gaps", fraction <= max_missing_fraction,
        f"missing {bar_type} bars against the XNYS calendar ≤ {max_missing_fraction:.2%}",
        {"missing": missing_total, "expected": expected_total, "missing_fraction": round(fraction, 6),
         "missing_by_symbol": worst},
    )


def staleness(bars: pl.DataFrame, bar_type: str, window_end: datetime, max_days: int) -> QualityResult:
    """The newest bar of every symbol is within `max_days` of the window end (or now)."""
    now = datetime.now(timezone.utc)
    reference = min(window_end, now)
    limit = timedelta(days=max_days)
    stale = {}
    for (symbol,), frame in bars.group_by(["symbol"], maintain_order=True):
        last = frame["ts"].max()
        if reference - last > limit:
            stale[symbol] = last.isoformat()
    return QualityResult(
        "not_stale", not stale and bars.height > 0,
        f"every symbol has a {bar_type} bar within {max_days} days of {reference.date()}",
        {"stale_symbols": stale, "rows": bars.height},
    )


def _rejected_with(rejected: pl.DataFrame, word: str) -> int:
    if rejected.height == 0 or "reason" not in rejected.columns:
        return 0
    return rejected.filter(pl.col("reason").str.contains(word)).height
