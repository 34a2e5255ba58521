"""The REAL yfinance and praw clients against local fake vendor servers (loopback only).

yfinance hard-codes https://fc.yahoo.com and https://query{1,2}.finance.yahoo.com, so
the fake Yahoo is a TLS server that also acts as the https proxy of the curl_cffi
session handed to `YFinanceSource(session=...)`: yfinance's own cookie, crumb,
timezone lookup, chart request and JSON parsing all run, only the far end is fake.
praw takes its hosts from `RedditSettings.oauth_url` / `reddit_url`, so the fake
Reddit is plain HTTP. Sleeps between retries are recorded, not slept.

Per client: success (timestamps / mention buckets checked), pagination (minute windows
for Yahoo, `after` for Reddit), 429 then success, persistent failure -> one clear error,
a reply slower than the timeout (retried, then a clear error), and the no-data /
bad-credentials paths.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from awet_dagster.sources.errors import AuthenticationFailed, RateLimited, SourceUnavailable
from awet_dagster.sources.reddit import RedditMentions, RedditSettings
from awet_dagster.sources.retry import RetryPolicy
from awet_dagster.sources.schema import BAR_SCHEMA
from awet_dagster.sources.yfinance_source import YFinanceSource
from tests.fake_http import FakeServer, Reply, Seen

pytestmark = pytest.mark.timeout(30)  # each test is bounded well below the suite's 600 s

UTC = timezone.utc
NY = ZoneInfo("America/New_York")
# 1 s: a reply of the local fake on a loaded 2-core machine took > 0.2 s (an extra retry in CI).
FAST = RetryPolicy(timeout_s=1.0, max_retries=2, backoff_base_s=0.01)
SECRET = "reddit-SECRET-value"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ny(*args: int) -> int:
    """Epoch seconds of a New York wall-clock time: how Yahoo stamps bars."""
    return int(datetime(*args, tzinfo=NY).timestamp())


@pytest.fixture
def sleeps() -> list[float]:
    return []


# ---------------------------------------------------------------- fake Yahoo

A3_COOKIE = ("A3=d=AQABBfake&S=AQAAAfake; Expires=Wed, 01 Jan 2031 00:00:00 GMT; Max-Age=31557600; "
             "Domain=.yahoo.com; Path=/; SameSite=None; Secure; HttpOnly")
CRUMB = "fakeCrumb123"
NO_DATA = {"chart": {"result": None, "error": {
    "code": "Not Found", "description": "No data found, symbol may be delisted"}}}


def chart_meta(symbol: str, interval: str) -> dict[str, Any]:
    return {
        "currency": "USD", "symbol": symbol, "exchangeName": "PCX", "fullExchangeName": "NYSEArca",
        "instrumentType": "ETF", "firstTradeDate": 728317800, "regularMarketTime": 1710532800,
        "hasPrePostMarketData": True, "gmtoffset": -14400, "timezone": "EDT",
        "exchangeTimezoneName": "America/New_York", "regularMarketPrice": 509.83, "priceHint": 2,
        "dataGranularity": interval, "range": "",
        "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
    }


def trading_periods(stamps: list[int]) -> list[list[dict[str, Any]]]:
    """Yahoo's intraday `tradingPeriods`: the regular session of each day in the reply."""
    days = sorted({datetime.fromtimestamp(t, NY).date() for t in stamps})
    periods = []
    for d in days:
        start = ny(d.year, d.month, d.day, 9, 30)
        offset = int(datetime.fromtimestamp(start, NY).utcoffset().total_seconds())
        periods.append([{"timezone": "EDT" if offset == -14400 else "EST", "start": start,
                         "end": ny(d.year, d.month, d.day, 16, 0), "gmtoffset": offset}])
    return periods


def chart_json(symbol: str, interval: str, bars: list[tuple[int, float]],
               splits: dict[int, tuple[int, int]] | None = None) -> dict[str, Any]:
    """A /v8/finance/chart reply: bars are (epoch seconds, close); ``splits`` {epoch seconds:
    (numerator, denominator)} become Yahoo's split events."""
    meta = chart_meta(symbol, interval)
    if not bars:  # what Yahoo sends for a range without sessions
        return {"chart": {"result": [{"meta": meta, "indicators": {"quote": [{}]}}], "error": None}}
    events = {"splits": {str(t): {"date": t, "numerator": a, "denominator": b, "splitRatio": f"{a}:{b}"}
                         for t, (a, b) in (splits or {}).items()}} if splits else None
    stamps, closes = [t for t, _ in bars], [c for _, c in bars]
    quote = {"open": [c - 0.5 for c in closes], "high": [c + 1 for c in closes],
             "low": [c - 1 for c in closes], "close": closes, "volume": [1000 + i for i in range(len(bars))]}
    indicators: dict[str, Any] = {"quote": [quote]}
    if interval.endswith("m"):
        meta["tradingPeriods"] = trading_periods(stamps)
    else:
        indicators["adjclose"] = [{"adjclose": closes}]
    result = {"meta": meta, "timestamp": stamps, "indicators": indicators}
    if events:
        result["events"] = events
    return {"chart": {"result": [result], "error": None}}


@dataclass
class FakeYahoo:
    """Answers yfinance the way Yahoo does.

    `bars[symbol]` are served filtered to the request's [period1, period2); `script(n)`
    may replace the reply to the n-th history request (one carrying period1).
    """

    bars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    script: Callable[[int], Reply | None] = lambda n: None
    history: list[Seen] = field(default_factory=list)
    splits: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)
    split_requests: list[Seen] = field(default_factory=list)  # the split history (period=max) asks

    def __call__(self, seen: Seen, n: int) -> Reply:
        if seen.host == "fc.yahoo.com":  # the cookie endpoint: a 404 page that sets A3
            return Reply(404, "<html>404</html>", {"Content-Type": "text/html", "Set-Cookie": A3_COOKIE})
        if seen.path == "/v1/test/getcrumb":
            return Reply(200, CRUMB, {"Content-Type": "text/plain"})
        if seen.path.startswith("/v10/finance/quoteSummary/"):  # yfinance's timezone fallback
            symbol = seen.path.rsplit("/", 1)[1]
            return Reply(404, {"quoteSummary": {"result": None, "error": {
                "code": "Not Found", "description": f"Quote not found for symbol: {symbol}"}}})
        if not seen.path.startswith("/v8/finance/chart/"):
            return Reply(404, "<html>no such page</html>", {"Content-Type": "text/html"})
        symbol = seen.path.rsplit("/", 1)[1]
        if symbol not in self.bars:
            return Reply(404, NO_DATA)
        interval = seen.query["interval"][0]
        if "period1" not in seen.query:  # yfinance's timezone lookup (range=1d)
            return Reply(200, chart_json(symbol, interval, self.bars[symbol][-1:]))
        if int(seen.query["period1"][0]) < 0:  # period="max": Ticker.splits, the split history
            self.split_requests.append(seen)
            return Reply(200, chart_json(symbol, interval, self.bars[symbol], self.splits.get(symbol)))
        self.history.append(seen)
        scripted = self.script(len(self.history))
        if scripted is not None:
            return scripted
        lo, hi = int(seen.query["period1"][0]), int(seen.query["period2"][0])
        return Reply(200, chart_json(symbol, interval, [b for b in self.bars[symbol] if lo <= b[0] < hi]))


@pytest.fixture
def yf_isolated(tmp_path, monkeypatch) -> Iterator[None]:
    """A fresh yfinance: its process-wide YfData (session, cookie, crumb), response cache,
    and sqlite cookie / timezone caches live in tmp_path for this test only.

    `yfinance.set_tz_cache_location` alone is not enough: it only moves where a cache not
    yet opened will go, while the cache objects opened by an earlier test keep their
    database. So the managers are reset too, and everything is restored afterwards.
    """
    import yfinance.base
    import yfinance.cache as yf_cache
    from yfinance.data import SingletonMeta, YfData

    proxies = [yf_cache.tz_db_proxy, yf_cache.Cookie_db_proxy, yf_cache.isin_db_proxy]
    bound = [p.obj for p in proxies]
    for db in (yf_cache._TzDBManager, yf_cache._CookieDBManager, yf_cache._ISINDBManager):
        monkeypatch.setattr(db, "_db", None)
        monkeypatch.setattr(db, "_cache_dir", str(tmp_path / "yfinance-cache"))
    monkeypatch.setattr(yf_cache._TzCacheManager, "_tz_cache", None)
    monkeypatch.setattr(yf_cache._CookieCacheManager, "_Cookie_cache", None)
    monkeypatch.setattr(yf_cache._ISINCacheManager, "_isin_cache", None)
    monkeypatch.setattr(yfinance.base, "_tz_info_fetch_ctr", 0)
    monkeypatch.delitem(SingletonMeta._instances, YfData, raising=False)
    YfData.cache_get.cache_clear()
    yield
    for db in (yf_cache._TzDBManager, yf_cache._CookieDBManager, yf_cache._ISINDBManager):
        db.close_db()
    for proxy, obj in zip(proxies, bound):
        if obj is not None:
            proxy.initialize(obj)
    SingletonMeta._instances.pop(YfData, None)
    YfData.cache_get.cache_clear()


@pytest.fixture
def yahoo(yf_isolated) -> Iterator[tuple[FakeYahoo, FakeServer, Any]]:
    """(fake Yahoo, its server, a curl_cffi session whose every https request goes there)."""
    from curl_cffi import requests as curl_requests

    fake = FakeYahoo()
    with FakeServer(tls_tunnel=True) as server:
        server.respond = fake
        session = curl_requests.Session(
            impersonate="chrome", proxies={"https": server.url},
            verify=False,  # the fake's certificate is self-signed
            trust_env=False,  # a no_proxy in the environment must not send us to the real Yahoo
            timeout=5,
        )
        try:
            yield fake, server, session
        finally:
            session.close()


def yf_source(yahoo, sleeps: list[float], policy: RetryPolicy = FAST) -> YFinanceSource:
    _, _, session = yahoo
    return YFinanceSource(session=session, policy=policy, sleep=sleeps.append)


SPY_MAR_8 = r"yfinance SPY daily 2024-03-08\.\.2024-03-08: "  # how errors name symbol and range


def daily_bars() -> list[tuple[int, float]]:
    # Yahoo stamps a daily bar at the session open, local time; DST starts on 2024-03-10.
    return [(ny(2024, 3, 7, 9, 30), 510.0), (ny(2024, 3, 8, 9, 30), 511.0), (ny(2024, 3, 11, 9, 30), 512.0)]


def test_yahoo_daily_success_through_real_yfinance(yahoo, sleeps, tmp_path):
    fake, server, _ = yahoo
    fake.bars["SPY"] = daily_bars()
    df = yf_source(yahoo, sleeps).fetch(["spy"], date(2024, 3, 8), date(2024, 3, 11), "daily")
    assert df.schema == BAR_SCHEMA
    assert df.select("symbol", "ts", "close").rows() == [  # 09:30 New York, before and after DST
        ("SPY", utc(2024, 3, 8, 14, 30), 511.0), ("SPY", utc(2024, 3, 11, 13, 30), 512.0)]
    assert df["volume"].to_list() == [1000.0, 1001.0] and (df["source"] == "yfinance").all()
    # yfinance's real handshake ran against the fake: cookie, crumb, then the chart.
    hosts = [(s.host, s.path) for s in server.requests]
    assert ("fc.yahoo.com", "/") in hosts and any(p == "/v1/test/getcrumb" for _, p in hosts)
    (history,) = fake.history
    assert history.host.endswith("finance.yahoo.com") and history.path == "/v8/finance/chart/SPY"
    assert history.query["period1"] == [str(int(utc(2024, 3, 8, 5).timestamp()))]  # midnight New York
    assert history.query["period2"] == [str(int(utc(2024, 3, 12, 4).timestamp()))]  # end exclusive
    assert history.query["interval"] == ["1d"] and history.query["crumb"] == [CRUMB]
    assert sleeps == []
    import yfinance

    assert yfinance.config.debug.hide_exceptions is True  # raised for our call only, then restored
    assert {"cookies.db", "tkr-tz.db"} <= {p.name for p in (tmp_path / "yfinance-cache").iterdir()}


def test_yahoo_split_history_through_real_yfinance_gives_raw_prices_and_factors(yahoo, sleeps):
    """Yahoo's closes are split-adjusted to today's basis; a 2:1 split on 2024-03-11 (after the
    window asked for) comes from the symbol's split history and un-adjusts the window."""
    fake, _, _ = yahoo
    fake.bars["SPY"] = daily_bars()
    fake.splits["SPY"] = {ny(2024, 3, 11, 9, 30): (2, 1)}
    df = yf_source(yahoo, sleeps).fetch(["spy"], date(2024, 3, 7), date(2024, 3, 8), "daily")
    assert len(fake.split_requests) == 1 and len(fake.history) == 1
    assert df["close"].to_list() == [1020.0, 1022.0]  # raw: twice Yahoo's adjusted closes
    assert df["volume"].to_list() == [500.0, 500.5]
    assert df["split_factor"].to_list() == [0.5, 0.5] and df["adj_factor"].to_list() == [0.5, 0.5]


def test_yahoo_minute_success_across_dst_drops_bars_outside_the_session(yahoo, sleeps):
    fake, _, _ = yahoo
    fake.bars["SPY"] = [
        (ny(2024, 3, 8, 9, 30), 510.0), (ny(2024, 3, 8, 9, 31), 510.5), (ny(2024, 3, 8, 15, 59), 511.0),
        (ny(2024, 3, 8, 16, 0), 511.1),  # post-market, sent unasked: yfinance drops it
        (ny(2024, 3, 11, 9, 30), 512.0), (ny(2024, 3, 11, 9, 31), 512.5),
    ]
    df = yf_source(yahoo, sleeps).fetch(["SPY"], date(2024, 3, 8), date(2024, 3, 11), "minute")
    assert df["ts"].to_list() == [
        utc(2024, 3, 8, 14, 30), utc(2024, 3, 8, 14, 31), utc(2024, 3, 8, 20, 59),  # EST: UTC-5
        utc(2024, 3, 11, 13, 30), utc(2024, 3, 11, 13, 31),  # EDT: UTC-4
    ]
    assert df["close"].to_list() == [510.0, 510.5, 511.0, 512.0, 512.5]
    (history,) = fake.history
    assert history.query["interval"] == ["1m"] and history.query["includePrePost"] == ["false"]


def test_yahoo_minute_range_is_fetched_in_7_day_windows(yahoo, sleeps):
    fake, _, _ = yahoo
    days = [4, 5, 6, 7, 8, 11, 12, 13, 14, 15]  # two trading weeks around the DST change
    fake.bars["SPY"] = [(ny(2024, 3, d, 9, 30), 500.0 + d) for d in days]
    df = yf_source(yahoo, sleeps).fetch(["SPY"], date(2024, 3, 4), date(2024, 3, 15), "minute")
    assert df["ts"].to_list() == [utc(2024, 3, d, 14 if d < 10 else 13, 30) for d in days]
    windows = [(int(s.query["period1"][0]), int(s.query["period2"][0])) for s in fake.history]
    midnight_ny = [int(utc(*args).timestamp()) for args in ((2024, 3, 4, 5), (2024, 3, 11, 4), (2024, 3, 16, 4))]
    assert windows == [(midnight_ny[0], midnight_ny[1]), (midnight_ny[1], midnight_ny[2])]


def test_yahoo_429_is_retried_then_succeeds(yahoo, sleeps):
    fake, _, _ = yahoo
    fake.bars["SPY"] = daily_bars()
    # yfinance retries a 4xx once itself (other cookie strategy), so two 429s fail one try.
    fake.script = lambda n: Reply(429, "Too Many Requests", {"Content-Type": "text/plain"}) if n <= 2 else None
    df = yf_source(yahoo, sleeps).fetch(["SPY"], date(2024, 3, 8), date(2024, 3, 8), "daily")
    assert df["close"].to_list() == [511.0]
    assert len(fake.history) == 3 and sleeps == [FAST.backoff(1)]


def test_yahoo_persistent_429_is_one_clear_rate_limit_error(yahoo, sleeps):
    fake, _, _ = yahoo
    fake.bars["SPY"] = daily_bars()
    fake.script = lambda n: Reply(429, "Too Many Requests", {"Content-Type": "text/plain"})
    with pytest.raises(RateLimited, match=SPY_MAR_8 + "YFRateLimitError after 3 attempt"):
        yf_source(yahoo, sleeps).fetch(["SPY"], date(2024, 3, 8), date(2024, 3, 8), "daily")
    assert len(fake.history) == 2 * FAST.max_attempts and sleeps == [0.01, 0.02]


def test_yahoo_slow_chart_reply_times_out_is_retried_then_clear_error(yahoo, sleeps):
    fake, _, _ = yahoo
    fake.bars["SPY"] = daily_bars()
    fake.script = lambda n: Reply(200, chart_json("SPY", "1d", daily_bars()), delay_s=3.0)
    t0 = time.perf_counter()
    with pytest.raises(SourceUnavailable, match=SPY_MAR_8 + "Timeout after 3 attempt.*timed out"):
        yf_source(yahoo, sleeps).fetch(["SPY"], date(2024, 3, 8), date(2024, 3, 8), "daily")
    assert time.perf_counter() - t0 < 8  # 3 x 1 s timeouts, not 3 x 3 s replies
    assert len(fake.history) == FAST.max_attempts and len(sleeps) == 2


def test_yahoo_slow_first_reply_then_fast_succeeds(yahoo, sleeps):
    fake, _, _ = yahoo
    fake.bars["SPY"] = daily_bars()
    fake.script = lambda n: Reply(200, chart_json("SPY", "1d", daily_bars()), delay_s=3.0) if n == 1 else None
    df = yf_source(yahoo, sleeps).fetch(["SPY"], date(2024, 3, 8), date(2024, 3, 8), "daily")
    assert df["close"].to_list() == [511.0] and len(fake.history) == 2 and len(sleeps) == 1


def test_yahoo_no_data_found_names_symbol_range_and_reason(yahoo, sleeps):
    fake, _, _ = yahoo
    fake.bars["SPY"] = daily_bars()
    fake.script = lambda n: Reply(404, NO_DATA)  # Yahoo's chart error for a range it has nothing in
    with pytest.raises(SourceUnavailable, match=r"yfinance SPY daily 2024-03-09\.\.2024-03-10: .*No data found"):
        yf_source(yahoo, sleeps).fetch(["SPY"], date(2024, 3, 9), date(2024, 3, 10), "daily")
    assert sleeps == []  # "no data" is an answer, not a hiccup: not retried


@pytest.mark.parametrize("fallbacks_used, reason", [
    (0, "HTTP Error 404"),  # yfinance asks the quote endpoint for the timezone: 404
    (2, "no timezone found"),  # ... only for the first two such symbols in a process
])
def test_yahoo_unknown_symbol_is_a_clear_error_not_retried(yahoo, sleeps, monkeypatch, fallbacks_used, reason):
    import yfinance.base

    monkeypatch.setattr(yfinance.base, "_tz_info_fetch_ctr", fallbacks_used)
    fake, server, _ = yahoo
    with pytest.raises(SourceUnavailable, match=SPY_MAR_8.replace("SPY", "NOPE") + f"Yahoo has no data .*{reason}"):
        yf_source(yahoo, sleeps).fetch(["NOPE"], date(2024, 3, 8), date(2024, 3, 8), "daily")
    assert sleeps == [] and fake.history == []  # never got past the timezone lookup
    assert any(s.path == "/v8/finance/chart/NOPE" for s in server.requests)


def test_yahoo_empty_minute_window_is_skipped_but_all_empty_fails(yahoo, sleeps):
    fake, _, _ = yahoo
    fake.bars["SPY"] = [(ny(2024, 3, 8, 9, 30), 510.0)]
    # Sat 2024-03-02 .. Sun 2024-03-10: the second window (Sat, Sun) has no sessions.
    df = yf_source(yahoo, sleeps).fetch(["SPY"], date(2024, 3, 2), date(2024, 3, 10), "minute")
    assert df["ts"].to_list() == [utc(2024, 3, 8, 14, 30)] and len(fake.history) == 2
    with pytest.raises(SourceUnavailable, match=r"yfinance SPY minute 2024-03-09\.\.2024-03-10: Yahoo returned no"):
        yf_source(yahoo, sleeps).fetch(["SPY"], date(2024, 3, 9), date(2024, 3, 10), "minute")


# ---------------------------------------------------------------- fake Reddit

TOKEN = {"access_token": "fake-access-token", "token_type": "bearer", "expires_in": 86400, "scope": "*"}


def ts(*args: int) -> float:
    return utc(*args).timestamp()


def submission(ident: str, created: float, title: str, selftext: str = "") -> dict[str, Any]:
    return {"kind": "t3", "data": {
        "id": ident, "name": f"t3_{ident}", "title": title, "selftext": selftext, "created_utc": created,
        "subreddit": "stocks", "author": "someone", "permalink": f"/r/stocks/comments/{ident}/x/"}}


def comment(ident: str, created: float, body: str) -> dict[str, Any]:
    return {"kind": "t1", "data": {
        "id": ident, "name": f"t1_{ident}", "body": body, "created_utc": created, "link_id": "t3_s1",
        "parent_id": "t3_s1", "subreddit": "stocks", "author": "someone"}}


def listing(children: list[dict[str, Any]], after: str | None = None) -> dict[str, Any]:
    return {"kind": "Listing", "data": {"after": after, "before": None, "dist": len(children), "children": children}}


@dataclass
class FakeReddit:
    """Token endpoint + `/r/<sub>/new` and `/r/<sub>/comments/` listings, paged by `after`.

    `pages[path]` maps the `after` cursor (None for the first page) to a listing;
    `token` and `script(seen, n)` may replace replies.
    """

    pages: dict[str, dict[str | None, dict[str, Any]]] = field(default_factory=dict)
    token: Reply = field(default_factory=lambda: Reply(200, TOKEN))
    script: Callable[[Seen, int], Reply | None] = lambda seen, n: None

    def __call__(self, seen: Seen, n: int) -> Reply:
        if seen.method == "POST" and seen.path == "/api/v1/access_token":
            return self.token
        scripted = self.script(seen, n)
        if scripted is not None:
            return scripted
        if seen.headers.get("authorization") != f"bearer {TOKEN['access_token']}":
            return Reply(401, {"message": "Unauthorized", "error": 401})
        after = seen.query.get("after", [None])[0]
        try:
            return Reply(200, self.pages[seen.path][after])
        except KeyError:
            return Reply(404, {"message": "Not Found", "error": 404})


@pytest.fixture
def reddit_server() -> Iterator[tuple[FakeReddit, FakeServer]]:
    fake = FakeReddit()
    with FakeServer() as server:
        server.respond = fake
        yield fake, server


def reddit_source(server: FakeServer, sleeps: list[float], **settings: Any) -> RedditMentions:
    settings = {"subreddits": ("stocks",), "include_comments": False, **settings}
    return RedditMentions(
        "client-id", SECRET, policy=FAST, sleep=sleeps.append,
        settings=RedditSettings(oauth_url=server.url, reddit_url=server.url, **settings),
    )


def listing_requests(server: FakeServer, path: str) -> list[Seen]:
    return [s for s in server.requests if s.path == path]


def test_reddit_success_counts_mentions_per_hour_with_vader_sentiment(reddit_server, sleeps):
    fake, server = reddit_server
    fake.pages["/r/stocks/new"] = {None: listing([  # newest first, like Reddit
        submission("s4", ts(2024, 1, 3, 16, 0), "Outside the window $TSLA"),
        submission("s3", ts(2024, 1, 3, 10, 40), "$TSLA is great, love this rally!"),
        submission("s2", ts(2024, 1, 3, 10, 5), "TSLA and AAPL earnings", "terrible, awful quarter"),
        submission("s1", ts(2024, 1, 3, 8, 0), "Too old $AAPL"),
    ])}
    fake.pages["/r/stocks/comments/"] = {None: listing([  # praw asks with a trailing slash
        comment("c1", ts(2024, 1, 3, 11, 15), "bought more $AAPL, happy"),
    ])}
    df = reddit_source(server, sleeps, include_comments=True).fetch(
        ["TSLA", "AAPL"], utc(2024, 1, 3, 9), utc(2024, 1, 3, 12))
    rows = {(r["symbol"], r["ts"]): r for r in df.iter_rows(named=True)}
    assert set(rows) == {("AAPL", utc(2024, 1, 3, 10)), ("AAPL", utc(2024, 1, 3, 11)), ("TSLA", utc(2024, 1, 3, 10))}
    assert rows[("TSLA", utc(2024, 1, 3, 10))]["mentions"] == 2
    assert rows[("AAPL", utc(2024, 1, 3, 10))]["sentiment"] < 0 < rows[("AAPL", utc(2024, 1, 3, 11))]["sentiment"]
    (token,) = [s for s in server.requests if s.path == "/api/v1/access_token"]
    assert token.method == "POST" and token.headers["authorization"].startswith("Basic ")
    assert b"grant_type=client_credentials" in token.body  # app-only OAuth
    assert SECRET not in token.body.decode() and sleeps == []


def test_reddit_follows_after_pagination_and_stops_at_the_window_start(reddit_server, sleeps):
    fake, server = reddit_server
    fake.pages["/r/stocks/new"] = {
        None: listing([submission("p1", ts(2024, 1, 3, 11), "$SPY one"),
                       submission("p2", ts(2024, 1, 3, 10), "$SPY two")], after="t3_p2"),
        "t3_p2": listing([submission("p3", ts(2024, 1, 3, 9), "$SPY three"),
                          submission("p4", ts(2024, 1, 2, 9), "$SPY too old")], after="t3_p4"),
        # no page after t3_p4: reading stops at the first item older than the window
    }
    df = reddit_source(server, sleeps, bucket="1d").fetch(["SPY"], date(2024, 1, 3), date(2024, 1, 3))
    assert df.select("symbol", "ts", "mentions").rows() == [("SPY", utc(2024, 1, 3), 3)]
    pages = listing_requests(server, "/r/stocks/new")
    assert [p.query.get("after") for p in pages] == [None, ["t3_p2"]]
    assert all(p.query["limit"] == ["1000"] for p in pages)


def test_reddit_429_honours_retry_after_then_succeeds(reddit_server, sleeps):
    fake, server = reddit_server
    fake.pages["/r/stocks/new"] = {None: listing([submission("s1", ts(2024, 1, 3, 10), "$SPY")])}
    fake.script = lambda seen, n: (
        Reply(429, {"message": "Too Many Requests", "error": 429}, {"Retry-After": "2"})
        if len(listing_requests(server, "/r/stocks/new")) == 1 else None)
    df = reddit_source(server, sleeps).fetch(["SPY"], date(2024, 1, 3), date(2024, 1, 3))
    assert df["mentions"].to_list() == [1]
    assert sleeps == [2.0] and len(listing_requests(server, "/r/stocks/new")) == 2


def test_reddit_slow_listing_times_out_is_retried_then_clear_error(reddit_server, sleeps):
    fake, server = reddit_server
    fake.pages["/r/stocks/new"] = {None: listing([submission("s1", ts(2024, 1, 3, 10), "$SPY")])}
    fake.script = lambda seen, n: Reply(200, fake.pages["/r/stocks/new"][None], delay_s=3.0)
    t0 = time.perf_counter()
    with pytest.raises(SourceUnavailable, match="reddit r/stocks submissions: RequestException after 3 attempt") as info:
        reddit_source(server, sleeps).fetch(["SPY"], date(2024, 1, 3), date(2024, 1, 3))
    assert time.perf_counter() - t0 < 8  # our 1 s timeout, no prawcore retries underneath
    assert "no reply within 1.0 s" in str(info.value)
    assert len(listing_requests(server, "/r/stocks/new")) == FAST.max_attempts and sleeps == [0.01, 0.02]


def test_reddit_5xx_is_retried_by_our_policy_only(reddit_server, sleeps):
    fake, server = reddit_server
    fake.pages["/r/stocks/new"] = {None: listing([submission("s1", ts(2024, 1, 3, 10), "$SPY")])}
    fake.script = lambda seen, n: Reply(503, "<html>upstream down</html>", {"Content-Type": "text/html"})
    with pytest.raises(SourceUnavailable, match=r"reddit r/stocks submissions: ServerError after 3 attempt"):
        reddit_source(server, sleeps).fetch(["SPY"], date(2024, 1, 3), date(2024, 1, 3))
    assert len(listing_requests(server, "/r/stocks/new")) == FAST.max_attempts and sleeps == [0.01, 0.02]


def test_reddit_rejected_credentials_are_a_clear_error_not_retried(reddit_server, sleeps):
    fake, server = reddit_server
    fake.token = Reply(401, {"message": "Unauthorized", "error": 401})
    with pytest.raises(AuthenticationFailed, match=r"reddit r/stocks: .*check reddit_client_id/secret") as info:
        reddit_source(server, sleeps).fetch(["SPY"], date(2024, 1, 3), date(2024, 1, 3))
    assert SECRET not in str(info.value)
    assert [s.path for s in server.requests] == ["/api/v1/access_token"] and sleeps == []


def test_yahoo_polled_on_the_bar_clock_publishes_each_closed_daily_bar_once(yahoo, sleeps):
    """The ingestion service's poller over real yfinance and the fake Yahoo: a new bar once it
    closed (16:00 New York), nothing when Yahoo has no new bar, a weekend's empty reply is no
    error, a 429 is retried by the client and the bar still comes, a bad symbol stops nothing."""
    from datetime import timedelta

    from awet_dagster.streaming.polling import BarPoller

    fake, _, _ = yahoo
    fake.bars["SPY"] = daily_bars()[:1]  # 2024-03-07 only
    clock = type("Clock", (), {"now": utc(2024, 3, 7, 22, 0), "__call__": lambda self: self.now})()
    p = BarPoller(yf_source(yahoo, sleeps), ["SPY"], "daily", clock=clock, source_name="yfinance")
    got = p.poll()
    p.commit(got)
    assert [(e.ts, e.close, e.source) for e in got] == [(utc(2024, 3, 7, 14, 30), 510.0, "yfinance")]
    clock.now = utc(2024, 3, 8, 15, 0)  # Friday's bar is forming: Yahoo has it, it is not closed
    fake.bars["SPY"] = daily_bars()[:2]
    assert p.poll() == [] and p.stats.forming == 1
    clock.now = utc(2024, 3, 8, 21, 5)
    # yfinance keeps the reply for a range that ended before the REAL now (2024 here) in a
    # process cache; a live poll's range ends in the future and is never cached. Forget it.
    from yfinance.data import YfData

    YfData.cache_get.cache_clear()
    # This poll's first two chart requests get a 429 (yfinance retries one itself): our retry.
    first = len(fake.history) + 1
    fake.script = lambda n: Reply(429, "Too Many Requests", {"Content-Type": "text/plain"}) if n in (
        first, first + 1) else None
    got = p.poll()
    p.commit(got)
    assert [e.ts for e in got] == [utc(2024, 3, 8, 14, 30)] and sleeps  # retried after the 429
    YfData.cache_get.cache_clear()
    assert p.poll() == [] and p.stats.published == 2  # no new bar
    clock.now = utc(2024, 3, 8, 21, 5) + timedelta(days=7)  # past the overlap: the window is empty
    fake.bars["SPY"] = []
    YfData.cache_get.cache_clear()
    assert p.poll() == [] and p.stats.errors == 0  # Yahoo's "no rows" is NoData, not a failure
