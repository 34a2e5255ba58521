"""Polygon.io REST aggregates client.

GET {base}/v2/aggs/ticker/{sym}/range/{mult}/{timespan}/{from}/{to}, following
`next_url` until the range is exhausted. The key travels in the Authorization header
(Polygon accepts `Bearer <key>` as well as `?apiKey=`), so it never appears in a URL,
a log line or an error message.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import polars as pl

from awet_dagster.sources import credentials
from awet_dagster.sources.errors import AuthenticationFailed, SourceError
from awet_dagster.sources.exchange_time import EXCHANGE_TZ, to_utc_bounds
from awet_dagster.sources.retry import RetryingSession, RetryPolicy, Sleep, redact_url
from awet_dagster.sources.schema import BAR_TYPES
from awet_dagster.sources.vendor_bars import to_bars, with_vendor_factors

TIMESPANS = {"minute": "minute", "daily": "day"}
_NY = ZoneInfo(EXCHANGE_TZ)


@dataclass(frozen=True)
class PolygonSettings:
    base_url: str = "https://api.polygon.io"
    adjusted: bool = False  # raw prices, like the shipped sample; True for split-adjusted
    # Also ask for the split-adjusted aggregates and derive the factors from them (Polygon
    # adjusts aggregates for splits only, so adj_factor = split_factor: no dividends).
    factors: bool = True
    page_limit: int = 50_000  # Polygon's maximum aggregates per page
    max_pages: int = 1_000  # guard against a next_url loop


class PolygonSource:
    """`BarSource` over Polygon aggregates."""

    name = "polygon"

    def __init__(
        self,
        polygon_api_key: Any = None,
        settings: PolygonSettings | None = None,
        policy: RetryPolicy | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        self._key = credentials.require("polygon", polygon_api_key=polygon_api_key)["polygon_api_key"]
        self.settings = settings or PolygonSettings()
        self.policy = policy or RetryPolicy()
        self._session = RetryingSession("polygon", self.policy, sleep)
        self._session.headers["Authorization"] = f"Bearer {self._key}"
        self.last_rejected = pl.DataFrame()

    def __repr__(self) -> str:  # the default repr is fine, but say explicitly: no key here
        return f"PolygonSource(base_url={self.settings.base_url!r})"

    def _get_json(self, url: str, params: dict[str, Any] | None) -> dict[str, Any]:
        response = self._session.get(url, params=params)
        where = f"polygon GET {redact_url(url)}"
        if response.status_code in (401, 403):
            raise AuthenticationFailed(f"{where}: HTTP {response.status_code} (check polygon_api_key)")
        if response.status_code >= 400:
            raise SourceError(f"{where}: HTTP {response.status_code}: {response.text[:200]}")
        try:
            body = response.json()
        except ValueError as exc:
            raise SourceError(f"{where}: reply is not JSON") from exc
        if body.get("status") == "ERROR":
            raise SourceError(f"{where}: {body.get('error') or body.get('message')}")
        return body

    def fetch_records(self, symbol: str, timeframe: str, first: str, last: str,
                      adjusted: bool | None = None) -> list[dict[str, Any]]:
        """All aggregate records of one symbol, following next_url pagination."""
        s = self.settings
        adjusted = s.adjusted if adjusted is None else adjusted
        url = f"{s.base_url.rstrip('/')}/v2/aggs/ticker/{symbol}/range/1/{TIMESPANS[timeframe]}/{first}/{last}"
        params: dict[str, Any] | None = {
            "adjusted": str(adjusted).lower(), "sort": "asc", "limit": s.page_limit,
        }
        records: list[dict[str, Any]] = []
        for _ in range(s.max_pages):
            body = self._get_json(url, params)
            records.extend(body.get("results") or [])
            next_url = body.get("next_url")
            if not next_url:
                return records
            # next_url carries its own cursor and query; Polygon points it at its own
            # host, so keep our base (proxy, test server) and only take path + query.
            url, params = _rebase(next_url, s.base_url), None
        raise SourceError(f"polygon {symbol}: more than {s.max_pages} pages, giving up")

    def fetch(self, symbols: Sequence[str], start: date | datetime, end: date | datetime,
              timeframe: str) -> pl.DataFrame:
        if timeframe not in BAR_TYPES:
            raise ValueError(f"timeframe must be one of {BAR_TYPES}, got {timeframe!r}")
        lo, hi = to_utc_bounds(start, end)
        if timeframe == "daily":
            # Daily aggregates are stamped at midnight New York: ask by exchange date.
            first = lo.astimezone(_NY).date().isoformat()
            last = (hi - timedelta(microseconds=1)).astimezone(_NY).date().isoformat()
        else:
            first, last = str(int(lo.timestamp() * 1000)), str(int(hi.timestamp() * 1000) - 1)
        def frame(adjusted: bool | None) -> pl.DataFrame:
            rows = []
            for symbol in symbols:
                for r in self.fetch_records(symbol.upper(), timeframe, first, last, adjusted):
                    rows.append({"symbol": symbol.upper(), "t": r["t"], "open": r.get("o"),
                                 "high": r.get("h"), "low": r.get("l"), "close": r.get("c"),
                                 "volume": r.get("v")})
            return pl.DataFrame(
                rows,
                schema={"symbol": pl.Utf8, "t": pl.Int64, "open": pl.Float64, "high": pl.Float64,
                        "low": pl.Float64, "close": pl.Float64, "volume": pl.Float64},
            ).with_columns(pl.from_epoch("t", time_unit="ms").dt.replace_time_zone("UTC").alias("ts"))

        raw = frame(None)
        if self.settings.factors and not self.settings.adjusted:
            split = frame(True)
            raw = with_vendor_factors(raw, split, split)
        good, self.last_rejected = to_bars(raw, timeframe, self.name, lo, hi)
        return good


def _rebase(next_url: str, base_url: str) -> str:
    parts = urlsplit(next_url)
    return f"{base_url.rstrip('/')}{parts.path}" + (f"?{parts.query}" if parts.query else "")

