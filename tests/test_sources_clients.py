"""Vendor clients against local fake servers (loopback only) and injected fakes.

Polygon and Alpaca run against `fake_http.FakeServer`; yfinance and Reddit get injected
fakes here (their real libraries against fake servers: test_sources_http_fakes.py).
Each client: success, pagination, 429 then success (Retry-After honoured), a reply
slower than the client timeout (retried, then a clear error), missing credentials.
Sleeps between retries are recorded, not slept.
"""
from __future__ import annotations

import json
import time
from datetime import date, datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import polars as pl
import pytest

from awet_dagster.sources.alpaca import AlpacaSettings, AlpacaSource
from awet_dagster.sources.errors import (
    AuthenticationFailed,
    MissingCredentials,
    RateLimited,
    SourceUnavailable,
)
from awet_dagster.sources.polygon import PolygonSettings, PolygonSource
from awet_dagster.sources.reddit import RedditMentions, RedditSettings, extract_mentions
from awet_dagster.sources.retry import RetryPolicy, parse_retry_after
from awet_dagster.sources.schema import BAR_SCHEMA
from awet_dagster.sources.yfinance_source import YFinanceSource
from tests.fake_http import FakeServer, Reply

FIXTURES = Path(__file__).parent / "fixtures"
UTC = timezone.utc
FAST = RetryPolicy(timeout_s=0.2, max_retries=2, backoff_base_s=0.01)
SECRET = "sk-test-SECRET-value"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


# ---------------------------------------------------------------- fake HTTP server

@pytest.fixture
def server():
    with FakeServer() as s:
        yield s


@pytest.fixture
def sleeps():
    return []


# ---------------------------------------------------------------- retry helpers

def test_retry_after_parses_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    now = datetime(2024, 1, 3, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Wed, 03 Jan 2024 12:00:05 GMT", now=now) == 5.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert RetryPolicy(backoff_max_s=10).backoff(1, retry_after_s=3600) == 10  # capped
    assert [RetryPolicy(backoff_base_s=0.5).backoff(k) for k in (1, 2, 3)] == [0.5, 1.0, 2.0]


# ---------------------------------------------------------------- polygon

def polygon(server: FakeServer, sleeps: list[float], policy: RetryPolicy = FAST, factors: bool = False) -> PolygonSource:
    return PolygonSource(SECRET, PolygonSettings(base_url=server.url, factors=factors), policy, sleep=sleeps.append)


def test_polygon_daily_success_maps_to_session_open_and_keeps_key_out_of_urls(server, sleeps):
    body = {
        "ticker": "AAPL", "queryCount": 2, "resultsCount": 2, "adjusted": False, "status": "OK",
        "request_id": "a1", "count": 2,
        "results": [  # daily aggregates are stamped at midnight New York
            {"v": 58414460.0, "vw": 184.74, "o": 184.22, "c": 184.25, "h": 185.88, "l": 183.43, "t": 1704258000000, "n": 656956},
            {"v": 71983570.0, "vw": 181.99, "o": 182.15, "c": 181.91, "h": 183.09, "l": 180.88, "t": 1704344400000, "n": 712109},
        ],
    }
    server.respond = lambda seen, n: Reply(200, body)
    df = polygon(server, sleeps).fetch(["aapl"], date(2024, 1, 3), date(2024, 1, 4), "daily")
    assert df.schema == BAR_SCHEMA
    assert df["ts"].to_list() == [utc(2024, 1, 3, 14, 30), utc(2024, 1, 4, 14, 30)]
    assert df["close"].to_list() == [184.25, 181.91] and (df["source"] == "polygon").all()
    seen = server.requests[0]
    assert seen.path == "/v2/aggs/ticker/AAPL/range/1/day/2024-01-03/2024-01-04"
    assert seen.query["adjusted"] == ["false"] and seen.query["sort"] == ["asc"]
    assert seen.headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in seen.path and all(SECRET not in v for vs in seen.query.values() for v in vs)


def test_polygon_follows_next_url_pagination(server, sleeps):
    page1, page2 = fixture("polygon_aggs_minute_page1.json"), fixture("polygon_aggs_minute_page2.json")
    server.respond = lambda seen, n: Reply(200, page2 if "cursor" in seen.query else page1)
    df = polygon(server, sleeps).fetch(["AAPL"], utc(2024, 1, 3, 14, 30), utc(2024, 1, 3, 14, 33), "minute")
    assert df["ts"].to_list() == [utc(2024, 1, 3, 14, 30), utc(2024, 1, 3, 14, 31), utc(2024, 1, 3, 14, 32)]
    assert len(server.requests) == 2
    assert server.requests[1].query["cursor"] == ["bGltaXQ9MiZzb3J0PWFzYw"]
    assert server.requests[1].headers["authorization"] == f"Bearer {SECRET}"  # key kept on page 2


def test_polygon_retries_429_honouring_retry_after_then_succeeds(server, sleeps):
    page = fixture("polygon_aggs_minute_page2.json")
    server.respond = lambda seen, n: (
        Reply(429, {"status": "ERROR", "error": "exceeded the maximum requests per minute"},
              {"Retry-After": "0.05"}) if n == 1 else Reply(200, page)
    )
    df = polygon(server, sleeps).fetch(["AAPL"], date(2024, 1, 3), date(2024, 1, 3), "minute")
    assert df.height == 1 and len(server.requests) == 2
    assert sleeps == [0.05]  # the vendor's Retry-After, not our backoff


def test_polygon_persistent_429_raises_rate_limited(server, sleeps):
    server.respond = lambda seen, n: Reply(429, {"status": "ERROR"}, {"Retry-After": "7"})
    with pytest.raises(RateLimited) as info:
        polygon(server, sleeps).fetch(["AAPL"], date(2024, 1, 3), date(2024, 1, 3), "daily")
    assert info.value.retry_after_s == 7.0 and len(server.requests) == FAST.max_attempts
    assert "HTTP 429 after 3 attempt(s)" in str(info.value)


def test_polygon_5xx_backs_off_exponentially_then_unavailable(server, sleeps):
    server.respond = lambda seen, n: Reply(503, "upstream down")
    with pytest.raises(SourceUnavailable, match="HTTP 503"):
        polygon(server, sleeps).fetch(["AAPL"], date(2024, 1, 3), date(2024, 1, 3), "daily")
    assert sleeps == [0.01, 0.02]


def test_polygon_slow_reply_times_out_retries_then_clear_error(server, sleeps):
    server.respond = lambda seen, n: Reply(200, fixture("polygon_aggs_minute_page2.json"), delay_s=0.6)
    t0 = time.perf_counter()
    with pytest.raises(SourceUnavailable, match=r"no reply within 0\.2 s after 3 attempt") as info:
        polygon(server, sleeps).fetch(["AAPL"], date(2024, 1, 3), date(2024, 1, 3), "minute")
    assert time.perf_counter() - t0 < 2.0  # 3 x 0.2 s, not 3 x 0.6 s
    assert len(server.requests) == 3 and SECRET not in str(info.value)


def test_polygon_slow_first_reply_then_fast_succeeds(server, sleeps):
    page = fixture("polygon_aggs_minute_page2.json")
    server.respond = lambda seen, n: Reply(200, page, delay_s=0.6 if n == 1 else 0.0)
    df = polygon(server, sleeps).fetch(["AAPL"], date(2024, 1, 3), date(2024, 1, 3), "minute")
    assert df.height == 1 and len(sleeps) == 1


def test_polygon_bad_key_and_missing_key(server, sleeps):
    server.respond = lambda seen, n: Reply(401, {"status": "ERROR", "error": "Unknown API Key"})
    with pytest.raises(AuthenticationFailed) as info:
        polygon(server, sleeps).fetch(["AAPL"], date(2024, 1, 3), date(2024, 1, 3), "daily")
    assert SECRET not in str(info.value)
    with pytest.raises(MissingCredentials, match="polygon_api_key"):
        PolygonSource(None)
    with pytest.raises(MissingCredentials, match="polygon_api_key"):
        PolygonSource(SimpleNamespace(get_secret_value=lambda: "  "))  # blank SecretStr


def test_polygon_unreachable_server_is_unavailable(sleeps):
    with FakeServer() as s:
        url = s.url  # a port that was free, now closed again
    src = PolygonSource(SECRET, PolygonSettings(base_url=url), FAST, sleep=sleeps.append)
    with pytest.raises(SourceUnavailable, match="connection failed"):
        src.fetch(["AAPL"], date(2024, 1, 3), date(2024, 1, 3), "daily")


# ---------------------------------------------------------------- alpaca

def alpaca(server: FakeServer, sleeps: list[float], policy: RetryPolicy = FAST, factors: bool = False) -> AlpacaSource:
    # factors=False: one request series per fetch (the factor requests have their own test)
    return AlpacaSource("key-id", SECRET, AlpacaSettings(url_override=server.url, factors=factors), policy,
                        sleep=sleeps.append)


def test_alpaca_success_and_page_token_pagination(server, sleeps):
    page1, page2 = fixture("alpaca_bars_page1.json"), fixture("alpaca_bars_page2.json")
    server.respond = lambda seen, n: Reply(200, page2 if seen.query.get("page_token") else page1)
    df = alpaca(server, sleeps).fetch(["aapl", "msft"], date(2024, 1, 3), date(2024, 1, 4), "daily")
    assert df.schema == BAR_SCHEMA
    assert df.select("symbol", "ts", "close").rows() == [
        ("AAPL", utc(2024, 1, 3, 14, 30), 184.25),
        ("AAPL", utc(2024, 1, 4, 14, 30), 181.91),
        ("MSFT", utc(2024, 1, 3, 14, 30), 370.6),
    ]
    first, second = server.requests
    assert first.path == "/v2/stocks/bars"
    assert first.query["symbols"] == ["AAPL,MSFT"] and first.query["timeframe"] == ["1Day"]
    assert first.query["feed"] == ["iex"] and first.query["adjustment"] == ["raw"]
    assert first.headers["apca-api-key-id"] == "key-id"
    assert second.query["page_token"] == [page1["next_page_token"]]


def test_alpaca_429_then_success(server, sleeps):
    page = fixture("alpaca_bars_page2.json")
    server.respond = lambda seen, n: Reply(429, {"message": "too many requests."}, {"Retry-After": "1"}) if n == 1 else Reply(200, page)
    df = alpaca(server, sleeps).fetch(["AAPL"], date(2024, 1, 4), date(2024, 1, 4), "daily")
    assert df.height == 1 and sleeps == [1.0]  # Retry-After honoured, no 3 s alpaca-py sleep


def test_alpaca_timeout_is_enforced_and_reported(server, sleeps):
    server.respond = lambda seen, n: Reply(200, fixture("alpaca_bars_page2.json"), delay_s=0.6)
    t0 = time.perf_counter()
    with pytest.raises(SourceUnavailable, match=r"alpaca GET .*/v2/stocks/bars: no reply within 0\.2 s"):
        alpaca(server, sleeps).fetch(["AAPL"], date(2024, 1, 4), date(2024, 1, 4), "minute")
    assert time.perf_counter() - t0 < 2.0 and len(server.requests) == 3


def test_alpaca_credentials(server, sleeps):
    server.respond = lambda seen, n: Reply(403, {"code": 40310000, "message": "forbidden."})
    with pytest.raises(AuthenticationFailed, match="alpaca: HTTP 403") as info:
        alpaca(server, sleeps).fetch(["AAPL"], date(2024, 1, 4), date(2024, 1, 4), "daily")
    assert SECRET not in str(info.value)
    with pytest.raises(MissingCredentials, match="alpaca_secret_key"):
        AlpacaSource("key-id", None)


# ---------------------------------------------------------------- yfinance

def yf_frame(index: pd.DatetimeIndex, closes: list[float]) -> pd.DataFrame:
    """The shape yfinance.Ticker.history(..., auto_adjust=False, actions=False) returns."""
    return pd.DataFrame(
        {"Open": closes, "High": [c + 1 for c in closes], "Low": [c - 1 for c in closes],
         "Close": closes, "Adj Close": closes, "Volume": [1_000_000] * len(closes)},
        index=index,
    )


class FakeHistory:
    """Stands in for yfinance.Ticker(symbol).history; outcomes are frames or exceptions."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[dict[str, Any]] = []

    def __call__(self, symbol: str, **kwargs: Any) -> pd.DataFrame:
        self.calls.append({"symbol": symbol, **kwargs})
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def test_yfinance_daily_success():
    idx = pd.DatetimeIndex(["2013-11-01", "2013-11-04"], name="Date").tz_localize("America/New_York")
    fake = FakeHistory(yf_frame(idx, [176.14, 176.86]))
    df = YFinanceSource(history=fake, policy=FAST).fetch(["spy"], date(2013, 11, 1), date(2013, 11, 4), "daily")
    assert df["ts"].to_list() == [utc(2013, 11, 1, 13, 30), utc(2013, 11, 4, 14, 30)]
    assert df["close"].to_list() == [176.14, 176.86] and df["symbol"].unique().to_list() == ["SPY"]
    call = fake.calls[0]
    assert (call["symbol"], call["start"], call["end"], call["interval"]) == ("SPY", "2013-11-01", "2013-11-05", "1d")
    assert call["timeout"] == 0.2 and call["actions"] is False and call["auto_adjust"] is False


def test_yfinance_minute_index_in_exchange_time_becomes_utc():
    idx = pd.DatetimeIndex(["2013-11-04 09:30", "2013-11-04 09:31"], name="Datetime").tz_localize("America/New_York")
    fake = FakeHistory(yf_frame(idx, [176.0, 176.1]))
    df = YFinanceSource(history=fake, policy=FAST).fetch(["SPY"], date(2013, 11, 4), date(2013, 11, 4), "minute")
    assert df["ts"].to_list() == [utc(2013, 11, 4, 14, 30), utc(2013, 11, 4, 14, 31)]


def test_yfinance_minute_ranges_are_cut_into_7_day_windows():
    from awet_dagster.sources.yfinance_source import minute_windows

    assert minute_windows(date(2024, 3, 4), date(2024, 3, 19)) == [
        (date(2024, 3, 4), date(2024, 3, 11)), (date(2024, 3, 11), date(2024, 3, 18)),
        (date(2024, 3, 18), date(2024, 3, 19))]
    assert minute_windows(date(2024, 3, 4), date(2024, 3, 4)) == []
    fake = FakeHistory(pd.DataFrame())
    with pytest.raises(SourceUnavailable):
        YFinanceSource(history=fake, policy=FAST).fetch(["SPY"], date(2024, 3, 4), date(2024, 3, 18), "minute")
    assert [(c["start"], c["end"]) for c in fake.calls] == [
        ("2024-03-04", "2024-03-11"), ("2024-03-11", "2024-03-18"), ("2024-03-18", "2024-03-19")]


def test_yfinance_silent_empty_frame_raises_naming_symbol_and_range():
    fake = FakeHistory(pd.DataFrame())
    with pytest.raises(SourceUnavailable, match=r"yfinance SPY daily 2013-11-01\.\.2013-11-04: .*no rows"):
        YFinanceSource(history=fake, policy=FAST).fetch(["SPY"], date(2013, 11, 1), date(2013, 11, 4), "daily")


def test_yfinance_no_data_errors_name_symbol_range_and_yahoos_reason():
    from yfinance.exceptions import YFPricesMissingError, YFTzMissingError

    missing = FakeHistory(YFPricesMissingError("SPY", "", yahoo_reason="Data doesn't exist for startDate"))
    with pytest.raises(SourceUnavailable, match=r"yfinance SPY daily 2013-11-02\.\.2013-11-03: .*Data doesn't exist"):
        YFinanceSource(history=missing, policy=FAST).fetch(["SPY"], date(2013, 11, 2), date(2013, 11, 3), "daily")
    assert len(missing.calls) == 1  # not retried
    unknown = FakeHistory(YFTzMissingError("NOPE"))
    with pytest.raises(SourceUnavailable, match=r"yfinance NOPE daily .*no timezone found"):
        YFinanceSource(history=unknown, policy=FAST).fetch(["NOPE"], date(2013, 11, 1), date(2013, 11, 4), "daily")


def test_yfinance_rate_limit_retried_then_success_and_persistent_timeouts_fail(sleeps):
    from yfinance.exceptions import YFRateLimitError

    idx = pd.DatetimeIndex(["2013-11-04"]).tz_localize("America/New_York")
    fake = FakeHistory(YFRateLimitError(), yf_frame(idx, [176.86]))
    df = YFinanceSource(history=fake, policy=FAST, sleep=sleeps.append).fetch(
        ["SPY"], date(2013, 11, 4), date(2013, 11, 4), "daily")
    assert df.height == 1 and len(fake.calls) == 2 and sleeps == [0.01]

    always_slow = FakeHistory(TimeoutError("read timed out"))
    with pytest.raises(SourceUnavailable, match="TimeoutError after 3 attempt"):
        YFinanceSource(history=always_slow, policy=FAST, sleep=sleeps.append).fetch(
            ["SPY"], date(2013, 11, 4), date(2013, 11, 4), "daily")
    assert len(always_slow.calls) == 3

    limited = FakeHistory(YFRateLimitError())
    with pytest.raises(RateLimited):
        YFinanceSource(history=limited, policy=FAST, sleep=sleeps.append).fetch(
            ["SPY"], date(2013, 11, 4), date(2013, 11, 4), "daily")


def test_yfinance_programming_errors_are_not_retried():
    fake = FakeHistory(KeyError("Close"))
    with pytest.raises(KeyError):
        YFinanceSource(history=fake, policy=FAST).fetch(["SPY"], date(2013, 11, 4), date(2013, 11, 4), "daily")
    assert len(fake.calls) == 1


# ---------------------------------------------------------------- reddit

def ts(*args: int) -> float:
    return utc(*args).timestamp()


class FakeSubreddit:
    def __init__(self, submissions: list[Any], comments: list[Any], failures: list[BaseException]) -> None:
        self._submissions, self._comments, self._failures = submissions, comments, failures

    def new(self, limit: int) -> Any:
        if self._failures:
            raise self._failures.pop(0)
        return iter(self._submissions)

    def comments(self, limit: int) -> Any:
        return iter(self._comments)


class FakeReddit:
    def __init__(self, submissions=(), comments=(), failures=()) -> None:
        self.sub = FakeSubreddit(list(submissions), list(comments), list(failures))
        self.asked: list[str] = []

    def subreddit(self, name: str) -> FakeSubreddit:
        self.asked.append(name)
        return self.sub


def reddit_settings(**kw: Any) -> RedditSettings:
    return RedditSettings(subreddits=("stocks",), **kw)


def test_reddit_counts_mentions_per_hour_with_vader_sentiment():
    fake = FakeReddit(
        submissions=[  # newest first, like Reddit listings
            SimpleNamespace(created_utc=ts(2024, 1, 3, 16, 0), title="Outside the window $TSLA", selftext=""),
            SimpleNamespace(created_utc=ts(2024, 1, 3, 10, 40), title="$TSLA is great, love this rally!", selftext=""),
            SimpleNamespace(created_utc=ts(2024, 1, 3, 10, 5), title="TSLA and AAPL earnings", selftext="terrible, awful quarter"),
            SimpleNamespace(created_utc=ts(2024, 1, 3, 8, 0), title="Too old $AAPL", selftext=""),
            SimpleNamespace(created_utc=ts(2024, 1, 3, 11, 0), title="never read: listing stops at the old one", selftext="$AAPL"),
        ],
        comments=[SimpleNamespace(created_utc=ts(2024, 1, 3, 11, 15), body="bought more aapl... I mean $AAPL, happy")],
    )
    src = RedditMentions(reddit=fake, settings=reddit_settings())
    df = src.fetch(["TSLA", "AAPL"], utc(2024, 1, 3, 9), utc(2024, 1, 3, 12))
    rows = {(r["symbol"], r["ts"]): r for r in df.iter_rows(named=True)}
    assert set(rows) == {("AAPL", utc(2024, 1, 3, 10)), ("AAPL", utc(2024, 1, 3, 11)), ("TSLA", utc(2024, 1, 3, 10))}
    assert rows[("TSLA", utc(2024, 1, 3, 10))]["mentions"] == 2
    assert rows[("AAPL", utc(2024, 1, 3, 10))]["sentiment"] < 0 < rows[("AAPL", utc(2024, 1, 3, 11))]["sentiment"]
    assert df.schema == pl.Schema({"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"),
                                   "mentions": pl.Int64, "sentiment": pl.Float64})


def test_reddit_daily_buckets_and_bare_single_letters_ignored():
    fake = FakeReddit(submissions=[
        SimpleNamespace(created_utc=ts(2024, 1, 3, 15, 0), title="A day for $F and F", selftext=""),
        SimpleNamespace(created_utc=ts(2024, 1, 3, 10, 0), title="A great day", selftext=""),
    ])
    df = RedditMentions(reddit=fake, settings=reddit_settings(bucket="1d", include_comments=False)).fetch(
        ["A", "F"], date(2024, 1, 3), date(2024, 1, 3))
    # the one $F text, scored by VADER itself (a wrong text or a missing score would differ;
    # "A great day" mentions no symbol: a bare single letter is not a mention)
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    expected = SentimentIntensityAnalyzer().polarity_scores("A day for $F and F")["compound"]
    assert df.rows() == [("F", utc(2024, 1, 3), 1, pytest.approx(expected))]
    assert extract_mentions("IBM ibm $ibm", ["IBM"]) == {"IBM"}
    assert extract_mentions("ibm only lowercase", ["IBM"]) == set()


def _response(status: int, headers: dict[str, str] | None = None):
    import requests

    r = requests.Response()
    r.status_code = status
    r.headers.update(headers or {})
    r._content = b"{}"
    return r


def test_reddit_429_retried_with_retry_after_then_success(sleeps):
    from prawcore.exceptions import TooManyRequests

    fake = FakeReddit(
        submissions=[SimpleNamespace(created_utc=ts(2024, 1, 3, 10), title="$SPY", selftext="")],
        failures=[TooManyRequests(_response(429, {"retry-after": "2"}))],
    )
    src = RedditMentions(reddit=fake, settings=reddit_settings(include_comments=False), policy=FAST, sleep=sleeps.append)
    df = src.fetch(["SPY"], date(2024, 1, 3), date(2024, 1, 3))
    assert df["mentions"].to_list() == [1] and sleeps == [2.0]


def test_reddit_timeouts_retried_then_clear_error(sleeps):
    from prawcore.exceptions import RequestException

    timeout = RequestException(TimeoutError("read timed out"), ("GET",), {})
    fake = FakeReddit(failures=[timeout] * 5)
    src = RedditMentions(reddit=fake, settings=reddit_settings(), policy=FAST, sleep=sleeps.append)
    with pytest.raises(SourceUnavailable, match=r"reddit r/stocks submissions: RequestException after 3 attempt"):
        src.fetch(["SPY"], date(2024, 1, 3), date(2024, 1, 3))
    assert len(sleeps) == 2


def test_reddit_bad_credentials_are_not_retried(sleeps):
    from prawcore.exceptions import OAuthException

    fake = FakeReddit(failures=[OAuthException(_response(401), "invalid_grant", None)])
    src = RedditMentions(reddit=fake, settings=reddit_settings(), policy=FAST, sleep=sleeps.append)
    with pytest.raises(AuthenticationFailed, match="reddit_client_id"):
        src.fetch(["SPY"], date(2024, 1, 3), date(2024, 1, 3))
    assert sleeps == []


def test_reddit_missing_credentials_and_real_praw_defaults_to_reddit_hosts():
    with pytest.raises(MissingCredentials, match="reddit_client_secret"):
        RedditMentions(reddit_client_id="id")
    src = RedditMentions(reddit_client_id="id", reddit_client_secret=SECRET, policy=FAST)  # no network yet
    assert src._reddit.read_only
    assert (src._reddit.config.oauth_url, src._reddit.config.reddit_url) == (
        "https://oauth.reddit.com", "https://www.reddit.com")
    # The policy's timeout reaching real requests is checked against a fake server in
    # test_sources_http_fakes.py (praw 8 ignores its own `timeout` setting).


# ---------------------------------------------------------------- corporate actions (issue #17 item 9)

def _agg(t_ms: int, close: float, volume: float) -> dict:
    return {"v": volume, "o": close, "c": close, "h": close, "l": close, "t": t_ms}


AAPL_SPLIT_DAYS_MS = (1598587200000, 1598846400000)  # 2020-08-28, 2020-08-31 midnight New York


def test_polygon_factors_from_the_split_adjusted_aggregates(server, sleeps):
    raw = [_agg(AAPL_SPLIT_DAYS_MS[0], 499.23, 46.9e6), _agg(AAPL_SPLIT_DAYS_MS[1], 129.04, 225.7e6)]
    adjusted = [_agg(AAPL_SPLIT_DAYS_MS[0], 124.8075, 187.6e6), _agg(AAPL_SPLIT_DAYS_MS[1], 129.04, 225.7e6)]
    server.respond = lambda seen, n: Reply(200, {"status": "OK", "results": adjusted if seen.query["adjusted"] == ["true"]
                                                 else raw})
    df = polygon(server, sleeps, factors=True).fetch(["AAPL"], date(2020, 8, 28), date(2020, 8, 31), "daily")
    assert sorted(r.query["adjusted"][0] for r in server.requests) == ["false", "true"]
    assert df["close"].to_list() == [499.23, 129.04]  # raw: what a broker traded
    assert df["split_factor"].to_list() == pytest.approx([0.25, 1.0])
    assert df["adj_factor"].to_list() == pytest.approx([0.25, 1.0])  # Polygon: splits only


def test_alpaca_factors_from_split_and_all_adjustments(server, sleeps):
    def bars(closes):
        return {"bars": {"AAPL": [{"t": t, "o": c, "h": c, "l": c, "c": c, "v": 1e6}
                                  for t, c in zip(("2020-08-28T04:00:00Z", "2020-08-31T04:00:00Z"), closes,
                                                  strict=True)]},
                "next_page_token": None}
    series = {"raw": bars([499.23, 129.04]), "split": bars([124.8075, 129.04]), "all": bars([122.9, 128.6])}
    server.respond = lambda seen, n: Reply(200, series[seen.query["adjustment"][0]])
    df = alpaca(server, sleeps, factors=True).fetch(["AAPL"], date(2020, 8, 28), date(2020, 8, 31), "daily")
    assert sorted(r.query["adjustment"][0] for r in server.requests) == ["all", "raw", "split"]
    assert df["close"].to_list() == [499.23, 129.04]
    assert df["split_factor"].to_list() == pytest.approx([0.25, 1.0])
    assert df["adj_factor"].to_list() == pytest.approx([122.9 / 499.23, 128.6 / 129.04])


def test_vendor_rounding_is_not_a_split():
    from awet_dagster.sources.vendor_bars import snap_split_factors

    assert snap_split_factors([0.2499, 0.25003, 0.2500, 1.0001, 1.0]) == [0.25, 0.25, 0.25, 1.0, 1.0]


def test_yfinance_raw_prices_and_factors_from_the_split_history():
    """Yahoo's Close is split-adjusted to today's basis even for a window before the split:
    the raw prices come back through the symbol's whole split history."""
    idx = pd.DatetimeIndex(["2020-08-27", "2020-08-28", "2020-08-31"], name="Date").tz_localize("America/New_York")
    pdf = pd.DataFrame({"Open": [127.14, 124.8, 127.58], "High": [127.49, 125.18, 131.0],
                        "Low": [123.83, 123.05, 126.0], "Close": [125.01, 124.8075, 129.04],
                        "Adj Close": [122.2, 122.0, 126.2], "Volume": [155.5e6, 187.6e6, 225.7e6]}, index=idx)
    asked: list[str] = []
    src = YFinanceSource(history=FakeHistory(pdf), policy=FAST,
                         splits=lambda s: asked.append(s) or {date(2014, 6, 9): 7.0, date(2020, 8, 31): 4.0})
    df = src.fetch(["AAPL"], date(2020, 8, 27), date(2020, 8, 31), "daily")
    assert asked == ["AAPL"]
    assert df["close"].to_list() == pytest.approx([500.04, 499.23, 129.04])
    assert df["volume"].to_list() == pytest.approx([155.5e6 / 4, 187.6e6 / 4, 225.7e6])
    assert df["split_factor"].to_list() == pytest.approx([0.25, 0.25, 1.0])
    assert df["adj_factor"].to_list() == pytest.approx([122.2 / 500.04, 122.0 / 499.23, 126.2 / 129.04])
    # a window entirely before the split still comes back raw (the later split is known)
    early = YFinanceSource(history=FakeHistory(pdf.iloc[:2]), policy=FAST,
                           splits=lambda s: {date(2020, 8, 31): 4.0}).fetch(
        ["AAPL"], date(2020, 8, 27), date(2020, 8, 28), "daily")
    assert early["close"].to_list() == pytest.approx([500.04, 499.23])
