"""Alpaca market-data client (alpaca-py `StockHistoricalDataClient.get_stock_bars`).

alpaca-py 0.44 sends every request through a plain `requests.Session` with no timeout
(a stalled socket hangs forever) and retries only 429/504 with a fixed 3 s sleep. We
replace that session (`client._session`, set in `RESTClient.__init__`) with our
`RetryingSession`: default timeout, exponential backoff honouring Retry-After, clear
errors. Pagination over `next_page_token` stays alpaca-py's (`_get_marketdata`); each
page request goes through our session, so every page gets the timeout and retries.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import polars as pl

from awet_dagster.sources import credentials
from awet_dagster.sources.errors import AuthenticationFailed, SourceError
from awet_dagster.sources.exchange_time import to_utc_bounds
from awet_dagster.sources.retry import RetryingSession, RetryPolicy, Sleep
from awet_dagster.sources.schema import BAR_TYPES
from awet_dagster.sources.vendor_bars import to_bars, with_vendor_factors


@dataclass(frozen=True)
class AlpacaSettings:
    url_override: str | None = None  # None = https://data.alpaca.markets; tests: a local server
    feed: str | None = "iex"  # free accounts get IEX; "sip" needs a subscription
    adjustment: str = "raw"  # raw prices, like the shipped sample
    # Also ask for the split- and the fully (split + dividend) adjusted bars and derive the
    # factors from them (two more requests per fetch).
    factors: bool = True


def make_client(api_key: str, secret_key: str, settings: AlpacaSettings, policy: RetryPolicy,
                sleep: Sleep = time.sleep):
    """An alpaca-py StockHistoricalDataClient whose HTTP session has timeouts and retries."""
    from alpaca.data.historical import StockHistoricalDataClient

    client = StockHistoricalDataClient(
        api_key=api_key, secret_key=secret_key, raw_data=True, url_override=settings.url_override
    )
    if not hasattr(client, "_session"):
        # alpaca-py changed its internals: fail loudly rather than run without a timeout.
        raise SourceError("alpaca-py client has no _session; cannot enforce a request timeout")
    client._session = RetryingSession("alpaca", policy, sleep)
    return client


class AlpacaSource:
    """`BarSource` over Alpaca's /v2/stocks/bars."""

    name = "alpaca"

    def __init__(
        self,
        alpaca_api_key: Any = None,
        alpaca_secret_key: Any = None,
        settings: AlpacaSettings | None = None,
        policy: RetryPolicy | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        keys = credentials.require(
            "alpaca", alpaca_api_key=alpaca_api_key, alpaca_secret_key=alpaca_secret_key
        )
        self.settings = settings or AlpacaSettings()
        self.policy = policy or RetryPolicy()
        self._client = make_client(
            keys["alpaca_api_key"], keys["alpaca_secret_key"], self.settings, self.policy, sleep
        )
        self.last_rejected = pl.DataFrame()

    def __repr__(self) -> str:
        return f"AlpacaSource(url_override={self.settings.url_override!r})"

    def fetch_raw(self, symbols: Sequence[str], start: datetime, end: datetime,
                  timeframe: str, adjustment: str | None = None) -> dict[str, list[dict[str, Any]]]:
        from alpaca.common.exceptions import APIError
        from alpaca.data.requests import StockBarsRequest
        from alpaca.data.timeframe import TimeFrame

        request = StockBarsRequest(
            symbol_or_symbols=[s.upper() for s in symbols],
            timeframe=TimeFrame.Minute if timeframe == "minute" else TimeFrame.Day,
            start=start,
            end=end,
            adjustment=adjustment or self.settings.adjustment,
            feed=self.settings.feed,
        )
        try:
            return self._client.get_stock_bars(request) or {}
        except APIError as exc:
            status = exc.status_code
            if status in (401, 403):
                raise AuthenticationFailed(
                    f"alpaca: HTTP {status} (check alpaca_api_key/alpaca_secret_key)"
                ) from None
            raise SourceError(f"alpaca: HTTP {status}: {str(exc)[:200]}") from None

    def fetch(self, symbols: Sequence[str], start: date | datetime, end: date | datetime,
              timeframe: str) -> pl.DataFrame:
        if timeframe not in BAR_TYPES:
            raise ValueError(f"timeframe must be one of {BAR_TYPES}, got {timeframe!r}")
        lo, hi = to_utc_bounds(start, end)

        def frame(adjustment: str | None) -> pl.DataFrame:
            rows = [
                {"symbol": symbol, "t": bar["t"], "open": bar.get("o"), "high": bar.get("h"),
                 "low": bar.get("l"), "close": bar.get("c"), "volume": bar.get("v")}
                for symbol, bars in self.fetch_raw(symbols, lo, hi, timeframe, adjustment).items()
                for bar in bars or []
            ]
            return pl.DataFrame(
                rows,
                schema={"symbol": pl.Utf8, "t": pl.Utf8, "open": pl.Float64, "high": pl.Float64,
                        "low": pl.Float64, "close": pl.Float64, "volume": pl.Float64},
            ).with_columns(
                # RFC 3339 with a Z (or an offset): parse as an aware instant, then UTC.
                pl.col("t").str.to_datetime(time_zone="UTC", time_unit="us").alias("ts")
            )

        bars = frame(None)
        if self.settings.factors and self.settings.adjustment == "raw":
            bars = with_vendor_factors(bars, frame("all"), frame("split"))
        good, self.last_rejected = to_bars(bars, timeframe, self.name, lo, hi)
        return good
