"""Yahoo Finance bars via yfinance (no key; best effort, unofficial API).

One `yfinance.Ticker(symbol).history(...)` call per symbol and window, with yfinance's
errors raised rather than hidden: `yfinance.download` turns every per-ticker failure
(throttling, timeouts, unknown symbol) into an empty frame plus a line on stderr, so
nothing could be retried and every failure read "no rows". Now:

- throttling (`YFRateLimitError`) and curl timeouts / connection errors are retried
  under `RetryPolicy` (its `timeout_s` is the chart request's timeout);
- Yahoo's "no data" answers (no prices for the range, unknown symbol) and empty
  replies become `SourceUnavailable` naming the symbol, range and Yahoo's reason;
- anything else (a bug, a changed reply shape) propagates at once, unretried.

Yahoo serves at most ~8 days of 1-minute bars per request, so minute ranges are
fetched in windows of `MINUTE_WINDOW_DAYS` and concatenated.

Known limits (yfinance's, not configurable per call): the cookie/crumb requests use a
30 s timeout and the symbol-timezone lookup a 10 s one; yfinance keeps one process-wide
`YfData` (session, cookie, crumb) and caches cookies and ticker time zones in sqlite
under the user cache dir (`yfinance.set_tz_cache_location` moves it).

Tested two ways: unit tests inject the `history` callable (tests/test_sources_clients.py);
tests/test_sources_http_fakes.py runs the real yfinance code (cookie, crumb, timezone
lookup, chart JSON parsing) against a local TLS fake of Yahoo, reached by giving
`session=` a curl_cffi session whose https proxy is the fake.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from awet_dagster.sources.errors import NoData, SourceUnavailable
from awet_dagster.sources.exchange_time import EXCHANGE_TZ, to_utc_bounds
from awet_dagster.sources.retry import RetryPolicy, Sleep, call_with_retries
from awet_dagster.sources.schema import BAR_TYPES
from awet_dagster.sources.vendor_bars import to_bars

INTERVALS = {"minute": "1m", "daily": "1d"}
MINUTE_WINDOW_DAYS = 7  # Yahoo refuses 1m requests spanning more than ~8 days
_NY = ZoneInfo(EXCHANGE_TZ)
# (symbol, **Ticker.history kwargs) -> pandas DataFrame; raises yfinance's exceptions.
History = Callable[..., Any]
_config_lock = threading.Lock()


@dataclass(frozen=True)
class YFinanceSettings:
    # False: Yahoo's Close (split-adjusted, not dividend-adjusted) and Adj Close, from which
    # the raw prices and both factors are derived with the symbol's split history.
    auto_adjust: bool = False
    prepost: bool = False  # regular-session minutes only (Yahoo's extended hours are sparse)
    factors: bool = True  # raw prices + factors (one more request per symbol: its split history)


# (symbol) -> {ex-date: new shares per old share}; raises yfinance's exceptions.
Splits = Callable[[str], Mapping[date, float]]


def _names(exc: BaseException) -> set[str]:
    """Class names along the MRO: lets us match yfinance/curl_cffi errors without importing them."""
    return {cls.__name__ for cls in type(exc).__mro__}


def _http_status(exc: BaseException) -> int | None:
    """Status of a curl_cffi HTTPError (yfinance raises one from `raise_for_status`)."""
    return getattr(getattr(exc, "response", None), "status_code", None)


def classify(exc: BaseException) -> str | None:
    """Transient yfinance/curl errors are retried; anything else propagates."""
    names = _names(exc)
    status = _http_status(exc) if "HTTPError" in names else None
    if "YFRateLimitError" in names or status == 429:
        return "rate_limited"
    if isinstance(exc, (TimeoutError, ConnectionError)) or names & {"Timeout", "ConnectionError"}:
        return "unavailable"  # curl_cffi's Timeout/ConnectionError are not the builtins
    if status is not None and status >= 500:
        return "unavailable"
    return None


def _is_unknown_symbol(exc: BaseException) -> bool:
    """Yahoo knows no such symbol: no timezone for it, or (on yfinance's fallback to the
    quote endpoint, tried for the first two such symbols in a process) an HTTP 404."""
    names = _names(exc)
    return "YFTzMissingError" in names or ("HTTPError" in names and _http_status(exc) == 404)


@contextlib.contextmanager
def _yfinance_raises() -> Iterator[None]:
    """Make yfinance raise instead of logging and returning an empty frame.

    `history(raise_errors=True)` is deprecated in yfinance 1.x and does not cover the
    timezone lookup (a timeout there would surface as "no timezone found, possibly
    delisted"); the process-wide `config.debug.hide_exceptions` covers both. It is set
    only for the call and restored, under a lock so concurrent callers cannot restore it
    under one another (yfinance calls from several threads thus run one at a time, which
    Yahoo's throttling would enforce anyway).
    """
    import yfinance

    with _config_lock:
        previous = yfinance.config.debug.hide_exceptions
        yfinance.config.debug.hide_exceptions = False
        try:
            yield
        finally:
            yfinance.config.debug.hide_exceptions = previous


def minute_windows(first: date, last_exclusive: date, days: int = MINUTE_WINDOW_DAYS) -> list[tuple[date, date]]:
    """[first, last_exclusive) cut into consecutive [lo, hi) windows of at most `days`."""
    windows = []
    lo = first
    while lo < last_exclusive:
        hi = min(lo + timedelta(days=days), last_exclusive)
        windows.append((lo, hi))
        lo = hi
    return windows


class YFinanceSource:
    """`BarSource` over yfinance.Ticker.history, one symbol (and minute window) per call.

    `session`: a curl_cffi `requests.Session` for yfinance (None: yfinance's own). Note
    yfinance installs it in its process-wide `YfData`, so it serves later calls too.
    `history`: replaces the yfinance call entirely (unit tests).
    """

    name = "yfinance"

    def __init__(
        self,
        history: History | None = None,
        settings: YFinanceSettings | None = None,
        policy: RetryPolicy | None = None,
        sleep: Sleep = time.sleep,
        session: Any = None,
        splits: Splits | None = None,
    ) -> None:
        self._history = history or self._yahoo_history
        # An injected history (unit tests) without injected splits: no split events.
        self._splits = splits or (self._yahoo_splits if history is None else (lambda symbol: {}))
        self.settings = settings or YFinanceSettings()
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._session = session
        self.last_rejected = pl.DataFrame()

    def _yahoo_history(self, symbol: str, **kwargs: Any) -> Any:
        import yfinance

        with _yfinance_raises():
            return yfinance.Ticker(symbol, session=self._session).history(**kwargs)

    def _yahoo_splits(self, symbol: str) -> Mapping[date, float]:
        import yfinance

        with _yfinance_raises():
            series = yfinance.Ticker(symbol, session=self._session).splits
        return {ts.date(): float(r) for ts, r in series.items() if r and float(r) > 0}

    def split_history(self, symbol: str) -> Mapping[date, float]:
        return call_with_retries(lambda: self._splits(symbol), what=f"yfinance {symbol} splits",
                                 policy=self.policy, classify=classify, sleep=self._sleep)

    def _fetch_window(self, symbol: str, lo: date, hi: date, timeframe: str) -> tuple[Any, str | None]:
        """(pandas frame or None, Yahoo's no-data reason or None) for [lo, hi)."""
        what = f"yfinance {symbol} {timeframe} {lo}..{hi - timedelta(days=1)}"

        def call() -> Any:
            return self._history(
                symbol, start=lo.isoformat(), end=hi.isoformat(), interval=INTERVALS[timeframe],
                auto_adjust=self.settings.auto_adjust, prepost=self.settings.prepost,
                actions=False, timeout=self.policy.timeout_s,
            )

        try:
            return call_with_retries(call, what=what, policy=self.policy, classify=classify, sleep=self._sleep), None
        except Exception as exc:
            if "YFPricesMissingError" in _names(exc):
                # A window without sessions (a weekend tail of a minute range) is not an
                # error by itself; the symbol fails only if every window is empty.
                return None, str(exc)
            if _is_unknown_symbol(exc):
                raise SourceUnavailable(f"{what}: Yahoo has no data (unknown or delisted symbol?): {exc}") from None
            raise

    def _fetch_symbol(self, symbol: str, first: date, last_exclusive: date, timeframe: str) -> pl.DataFrame:
        windows = minute_windows(first, last_exclusive) if timeframe == "minute" else [(first, last_exclusive)]
        frames, reasons = [], []
        for lo, hi in windows:
            pdf, reason = self._fetch_window(symbol, lo, hi, timeframe)
            if pdf is not None and len(pdf):
                frames.append(pandas_to_vendor(pdf, symbol))
            else:
                reasons.append(reason or "empty reply")
        if not frames:
            what = f"yfinance {symbol} {timeframe} {first}..{last_exclusive - timedelta(days=1)}"
            raise NoData(
                f"{what}: Yahoo returned no rows ({'; '.join(dict.fromkeys(reasons))})"
            )
        out = pl.concat(frames)
        if self.settings.factors and not self.settings.auto_adjust:
            out = unadjust_yahoo(out, self.split_history(symbol))
        return out.drop("adj_close")

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
              "high": pl.Float64, "low": pl.Float64, "close": pl.Float64, "volume": pl.Float64,
              "adj_close": pl.Float64}
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
        "adj_close": pl.Series(pdf["Adj Close" if "Adj Close" in pdf.columns else "Close"].to_numpy(),
                               dtype=pl.Float64),
    })
    return out.select(list(schema))


def unadjust_yahoo(frame: pl.DataFrame, splits: Mapping[date, float]) -> pl.DataFrame:
    """Yahoo's bars (prices and volume split-adjusted to today's basis, ``adj_close`` also
    dividend-adjusted) -> raw prices with ``split_factor`` / ``adj_factor``.

    A split with ex-date d (r new shares per share) scales every bar before d: its split
    factor is 1 / (product of r over ex-dates after the bar's exchange date); raw price =
    Yahoo price / split factor, raw volume = Yahoo volume x split factor, and adj_factor =
    Adj Close / raw close. Needs the symbol's whole split history, not the window's: a split
    after the window adjusted it too."""
    if frame.height == 0:
        return frame.with_columns(pl.lit(1.0).alias("split_factor"), pl.lit(1.0).alias("adj_factor"))
    days = frame["ts"].dt.convert_time_zone(EXCHANGE_TZ).dt.date().to_list()
    events = sorted((d, r) for d, r in splits.items() if r and r > 0)
    factors = []
    for day in days:
        product = 1.0
        for d, r in events:
            if d > day:
                product *= r
        factors.append(1.0 / product)
    sf = pl.Series("split_factor", factors, dtype=pl.Float64)
    out = frame.with_columns(sf).with_columns(
        *[(pl.col(c) / pl.col("split_factor")).alias(c) for c in ("open", "high", "low", "close")],
        (pl.col("volume") * pl.col("split_factor")).alias("volume"),
    )
    return out.with_columns((pl.col("adj_close") / pl.col("close")).fill_nan(1.0).alias("adj_factor"))
