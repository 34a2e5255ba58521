"""Yahoo Finance bars via yfinance (no key; best effort, unofficial API).

yfinance swallows per-ticker failures (no network, unknown symbol, throttling) and
returns an EMPTY frame, printing to stderr. We treat an empty reply as
`SourceUnavailable` naming the symbol and range, and retry what does raise (rate limits,
timeouts). The download callable is injectable so tests need neither network nor
curl_cffi.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from awet_dagster.sources.errors import SourceUnavailable
from awet_dagster.sources.exchange_time import EXCHANGE_TZ, to_utc_bounds
from awet_dagster.sources.retry import RetryPolicy, Sleep, call_with_retries
from awet_dagster.sources.schema import BAR_TYPES
from awet_dagster.sources.vendor_bars import to_bars

INTERVALS = {"minute": "1m", "daily": "1d"}
_NY = ZoneInfo(EXCHANGE_TZ)
Download = Callable[..., Any]  # yfinance.download-compatible: returns a pandas DataFrame


@dataclass(frozen=True)
class YFinanceSettings:
    auto_adjust: bool = False  # raw prices, like the shipped sample
    prepost: bool = False  # regular-session minutes only (Yahoo's extended hours are sparse)


def _default_download() -> Download:
    import yfinance

    return yfinance.download


def classify(exc: BaseException) -> str | None:
    """Transient yfinance/curl errors are retried; anything else propagates."""
    name = type(exc).__name__
    if name == "YFRateLimitError":
        return "rate_limited"
    if isinstance(exc, (TimeoutError, ConnectionError)) or "Timeout" in name or "Connection" in name:
        return "unavailable"
    return None


class YFinanceSource:
    """`BarSource` over yfinance.download, one symbol per call (empty replies are per symbol)."""

    name = "yfinance"

    def __init__(
        self,
        download: Download | None = None,
        settings: YFinanceSettings | None = None,
        policy: RetryPolicy | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        self._download = download
        self.settings = settings or YFinanceSettings()
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self.last_rejected = pl.DataFrame()

    def _fetch_symbol(self, symbol: str, first: date, last_exclusive: date, timeframe: str) -> pl.DataFrame:
        download = self._download or _default_download()
        what = f"yfinance {symbol} {timeframe} {first}..{last_exclusive - timedelta(days=1)}"

        def call() -> Any:
            return download(
                tickers=symbol, start=first.isoformat(), end=last_exclusive.isoformat(),
                interval=INTERVALS[timeframe], auto_adjust=self.settings.auto_adjust,
                prepost=self.settings.prepost, actions=False, progress=False, threads=False,
                multi_level_index=False, timeout=self.policy.timeout_s,
            )

        pdf = call_with_retries(call, what=what, policy=self.policy, classify=classify, sleep=self._sleep)
        if pdf is None or len(pdf) == 0:
            raise SourceUnavailable(
                f"{what}: yfinance returned no rows (no network, unknown symbol, or no "
                "sessions in range; yfinance hides the cause)"
            )
        return pandas_to_vendor(pdf, symbol)

    def fetch(self, symbols: Sequence[str], start: date | datetime, end: date | datetime,
              timeframe: str) -> pl.DataFrame:
        if timeframe not in BAR_TYPES:
            raise ValueError(f"timeframe must be one of {BAR_TYPES}, got {timeframe!r}")
        lo, hi = to_utc_bounds(start, end)
        # yfinance takes exchange dates, end exclusive; cover [lo, hi) then filter exactly.
        first = lo.astimezone(_NY).date()
        last_exclusive = (hi - timedelta(microseconds=1)).astimezone(_NY).date() + timedelta(days=1)
        frames = [self._fetch_symbol(s.upper(), first, last_exclusive, timeframe) for s in symbols]
        raw = pl.concat(frames) if frames else pandas_to_vendor(None, "")
        good, self.last_rejected = to_bars(raw, timeframe, self.name, lo, hi)
        return good


def pandas_to_vendor(pdf: Any, symbol: str) -> pl.DataFrame:
    """yfinance frame (index Date/Datetime, columns Open..Volume) -> VENDOR_COLUMNS.

    Flattens a (field, ticker) MultiIndex if one slips through. A naive index is taken as
    exchange time: yfinance stamps intraday bars in the exchange zone and daily bars at
    the date.
    """
    schema = {"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "open": pl.Float64,
              "high": pl.Float64, "low": pl.Float64, "close": pl.Float64, "volume": pl.Float64}
    if pdf is None or len(pdf) == 0:
        return pl.DataFrame(schema=schema)
    import pandas as pd

    pdf = pdf.copy()
    if isinstance(pdf.columns, pd.MultiIndex):
        pdf.columns = pdf.columns.get_level_values(0)
    index = pd.DatetimeIndex(pdf.index)
    if index.tz is None:
        index = index.tz_localize(EXCHANGE_TZ)
    out = pl.DataFrame({
        "symbol": [symbol] * len(pdf),
        "ts": pl.Series(index.tz_convert("UTC")).cast(pl.Datetime("us", "UTC")),
        **{c.lower(): pl.Series(pdf[c].to_numpy(), dtype=pl.Float64)
           for c in ("Open", "High", "Low", "Close", "Volume")},
    })
    return out.select(list(schema))
