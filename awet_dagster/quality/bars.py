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
    #: "error": a failure blocks what depends on the asset; "warn": a failure is shown, not blocking.
    severity: str = "error"


@dataclass(frozen=True)
class Gap:
    """Missing bars of one symbol on one session (what `bar_gaps` records)."""

    symbol: str
    bar_type: str
    session: date
    missing: int
    expected: int
    first_missing: datetime | None  # minute bars: the first missing bar start (UTC)
    tolerated: bool


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


def session_gaps(bars: pl.DataFrame, bar_type: str, max_missing_count: int,
                 max_missing_fraction: float) -> list[Gap]:
    """Bars missing against the XNYS calendar (holidays, half days, DST), per partition: for
    minute bars each session (day x symbol) that has bars, its regular-hours minutes; for daily
    bars each symbol's sessions between its first and last bar (``session`` = the first missing
    one). A gap is TOLERATED when at most ``max_missing_count`` bars, or at most
    ``max_missing_fraction`` of the expected ones, are missing (a vendor file that lacks one
    regular minute is normal: 1/390 = 0.26%)."""
    gaps: list[Gap] = []
    for (symbol,), frame in bars.group_by(["symbol"], maintain_order=True):
        local_days = frame["ts"].dt.convert_time_zone(EXCHANGE_TZ).dt.date()
        if bar_type == "daily":  # the partition is the symbol's history: one record for it
            have = set(local_days.to_list())
            want = expected_sessions(min(have), max(have))
            missing_days = sorted(set(want) - have)
            if missing_days:
                n = len(missing_days)
                tolerated = n <= max_missing_count or n / len(want) <= max_missing_fraction
                gaps.append(Gap(symbol, bar_type, missing_days[0], n, len(want), None, tolerated))
            continue
        have_ts = set(frame["ts"].to_list())
        for day in sorted(set(local_days.to_list())):
            if not expected_sessions(day, day):
                continue
            want = expected_session_minutes(day)
            missing = sorted(set(want) - have_ts)
            if missing:
                tolerated = len(missing) <= max_missing_count or len(missing) / len(want) <= max_missing_fraction
                gaps.append(Gap(symbol, bar_type, day, len(missing), len(want), missing[0], tolerated))
    return gaps


def calendar_gaps(bars: pl.DataFrame, bar_type: str, max_missing_fraction: float,
                  max_missing_count: int = 1, gaps: list[Gap] | None = None) -> QualityResult:
    """``no_calendar_gaps``: fails (blocking) when a session misses more than the tolerance
    (``session_gaps``); a session missing bars within it passes the blocking check but is
    reported by the non-blocking ``calendar_gaps_tolerated`` (see ``tolerated_gaps``)."""
    gaps = session_gaps(bars, bar_type, max_missing_count, max_missing_fraction) if gaps is None else gaps
    blocking = [g for g in gaps if not g.tolerated]
    expected = sum(g.expected for g in gaps)
    return QualityResult(
        "no_calendar_gaps", not blocking,
        f"no session misses more than {max_missing_count} {bar_type} bar(s) or {max_missing_fraction:.2%} of them "
        "against the XNYS calendar (data.max_missing_count / data.max_missing_fraction)",
        {"sessions_over_tolerance": len(blocking), "missing": sum(g.missing for g in blocking),
         "missing_by_symbol_day": {f"{g.symbol} {g.session}": g.missing for g in blocking[:50]},
         "sessions_within_tolerance": len(gaps) - len(blocking), "expected_in_gap_sessions": expected},
    )


def tolerated_gaps(gaps: list[Gap], bar_type: str) -> QualityResult:
    """Non-blocking: the sessions missing a few bars (within the tolerance), for the operator."""
    within = [g for g in gaps if g.tolerated]
    return QualityResult(
        "calendar_gaps_tolerated", not within,
        f"{bar_type} sessions missing a few bars, within the tolerance (recorded in bar_gaps; not blocking)",
        {"sessions": len(within), "missing": sum(g.missing for g in within),
         "missing_by_symbol_day": {f"{g.symbol} {g.session}": g.missing for g in within[:50]}},
        severity="warn",
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
