"""Reddit ticker mentions and VADER sentiment (praw).

Counts, per symbol and time bucket, the submissions and comments in a window that
mention the symbol (`$TSLA` cashtags, or the bare upper-case ticker for tickers of 2+
letters: a bare "A" is mostly the article), with the mean VADER compound score of those
texts.

Retries: `RetryPolicy` is the one retry layer. prawcore would otherwise retry timeouts,
dropped connections and 5xx itself (twice, with its own un-injectable 0-4 s sleeps)
underneath ours; the requestor installed here hands those straight up instead, and
gives every request the policy's timeout (praw 8 ignores its own `timeout` setting).
A listing that fails mid-pagination is re-read from its first page.

Tested two ways: unit tests inject a fake praw `Reddit` (tests/test_sources_clients.py);
tests/test_sources_http_fakes.py runs the real praw/prawcore client (OAuth token, listing
pagination via `after`, 429, timeouts, rejected credentials) against a local fake HTTP
server, reached through `RedditSettings.oauth_url` / `reddit_url`.

Known limits: Reddit listings return at most ~1000 newest items per subreddit, so a
window far in the past yields nothing; comments are read from the subreddit comment
stream (newest first), not from each submission's tree.
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Literal

import polars as pl

from awet_dagster.sources import credentials
from awet_dagster.sources.errors import AuthenticationFailed
from awet_dagster.sources.exchange_time import to_utc_bounds
from awet_dagster.sources.retry import RetryPolicy, Sleep, call_with_retries

MENTIONS_SCHEMA = pl.Schema(
    {"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "mentions": pl.Int64, "sentiment": pl.Float64}
)
_WORD = re.compile(r"(?<![A-Za-z0-9$])\$?([A-Za-z]{1,5})(?![A-Za-z0-9])")


@dataclass(frozen=True)
class RedditSettings:
    subreddits: tuple[str, ...] = ("wallstreetbets", "stocks", "investing")
    listing_limit: int = 1000  # Reddit's own cap per listing
    include_comments: bool = True
    bucket: Literal["1h", "1d"] = "1h"
    user_agent: str = "awet:market-sentiment:0.1 (research)"
    oauth_url: str = "https://oauth.reddit.com"  # API host (tests: a local fake)
    reddit_url: str = "https://www.reddit.com"  # OAuth token host


def reddit_settings(data: Any, bucket: Literal["1h", "1d"] = "1d") -> RedditSettings:
    """RedditSettings from the ``data`` config section (subreddits, API hosts)."""
    return RedditSettings(subreddits=tuple(data.reddit_subreddits), bucket=bucket,
                          oauth_url=data.reddit_api_url, reddit_url=data.reddit_auth_url)


def reddit_client(data: Any, bucket: Literal["1h", "1d"] = "1d", policy: RetryPolicy | None = None) -> RedditMentions:
    """The mentions client of the ``data`` config section: its credentials (``MissingCredentials``
    names what is unset), subreddits, hosts, and timeouts/retries (request_timeout_s, max_retries)."""
    def secret(v: Any) -> Any:
        return v.get_secret_value() if v is not None else None

    policy = policy or RetryPolicy(timeout_s=data.request_timeout_s, max_retries=data.max_retries)
    return RedditMentions(secret(data.reddit_client_id), secret(data.reddit_client_secret),
                          settings=reddit_settings(data, bucket), policy=policy)


def extract_mentions(text: str, symbols: Iterable[str]) -> set[str]:
    """Watch-list symbols mentioned in `text` (each counted once per text)."""
    wanted = {s.upper() for s in symbols}
    found: set[str] = set()
    for match in _WORD.finditer(text or ""):
        token = match.group(1)
        is_cashtag = match.group(0).startswith("$")
        if is_cashtag and token.upper() in wanted:
            found.add(token.upper())
        elif not is_cashtag and len(token) >= 2 and token.isupper() and token in wanted:
            found.add(token)
    return found


def classify(exc: BaseException) -> str | None:
    """prawcore errors: throttling and server/network trouble retry, auth does not."""
    name = type(exc).__name__
    if name == "TooManyRequests":
        return "rate_limited"
    if name in {"ServerError", "RequestException"} or isinstance(exc, (TimeoutError, ConnectionError)):
        return "unavailable"
    return None


def _requestor_class() -> type:
    """A prawcore `Requestor` that leaves retrying network errors and 5xx to our policy.

    prawcore's `Session` retries a request whose error wraps a requests Timeout /
    ConnectionError, and 5xx replies, sleeping 0-4 s with `time.sleep` each time. Here a
    network error is re-wrapped around a builtin `TimeoutError` / `ConnectionError`
    (which prawcore does not retry) and a 5xx raises `ServerError` before prawcore sees
    the status; both still classify as transient for `call_with_retries`.
    """
    import prawcore
    import requests

    class PolicyRetriedRequestor(prawcore.Requestor):
        def request(self, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
            # prawcore's Session passes its own 16 s default on every API call: ours wins.
            try:
                response = super().request(*args, timeout=self.timeout, **kwargs)
            except prawcore.RequestException as exc:
                cause = exc.original_exception
                if isinstance(cause, requests.Timeout):
                    plain: Exception = TimeoutError(f"no reply within {self.timeout} s")
                elif isinstance(cause, requests.ConnectionError):
                    plain = ConnectionError(f"connection failed ({type(cause).__name__})")
                else:
                    raise
                raise prawcore.RequestException(plain, exc.request_args, exc.request_kwargs) from None
            if response.status_code >= 500:
                raise prawcore.ServerError(response)
            return response

    return PolicyRetriedRequestor


@dataclass(frozen=True)
class _Text:
    created: datetime
    body: str


class RedditMentions:
    """Mention counts + sentiment for symbols over a window."""

    name = "reddit"

    def __init__(
        self,
        reddit_client_id: Any = None,
        reddit_client_secret: Any = None,
        reddit: Any = None,
        settings: RedditSettings | None = None,
        policy: RetryPolicy | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.settings = settings or RedditSettings()
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        if reddit is None:
            keys = credentials.require(
                "reddit", reddit_client_id=reddit_client_id, reddit_client_secret=reddit_client_secret
            )
            import praw

            reddit = praw.Reddit(
                client_id=keys["reddit_client_id"], client_secret=keys["reddit_client_secret"],
                user_agent=self.settings.user_agent, check_for_updates=False,
                oauth_url=self.settings.oauth_url, reddit_url=self.settings.reddit_url,
                requestor_class=_requestor_class(), requestor_kwargs={"timeout": self.policy.timeout_s},
            )
            reddit.read_only = True
        self._reddit = reddit
        self._analyzer: Any = None

    def _sentiment(self, text: str) -> float:
        if self._analyzer is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            self._analyzer = SentimentIntensityAnalyzer()
        return float(self._analyzer.polarity_scores(text)["compound"])

    def _listing(self, subreddit: str, kind: str, lo: datetime, hi: datetime) -> list[_Text]:
        """Texts of one listing inside [lo, hi); listings are newest first, so stop at lo."""

        def read() -> list[_Text]:
            sub = self._reddit.subreddit(subreddit)
            items = sub.new(limit=self.settings.listing_limit) if kind == "submissions" else sub.comments(
                limit=self.settings.listing_limit
            )
            texts = []
            for item in items:
                created = datetime.fromtimestamp(float(item.created_utc), tz=timezone.utc)
                if created < lo:
                    break
                if created >= hi:
                    continue
                if kind == "submissions":
                    body = f"{getattr(item, 'title', '')}\n{getattr(item, 'selftext', '')}"
                else:
                    body = getattr(item, "body", "")
                texts.append(_Text(created, body))
            return texts

        try:
            return call_with_retries(
                read, what=f"reddit r/{subreddit} {kind}", policy=self.policy,
                classify=classify, sleep=self._sleep,
            )
        except Exception as exc:
            if type(exc).__name__ in {"OAuthException", "InvalidToken", "Forbidden"} or (
                type(exc).__name__ == "ResponseException"
                and getattr(getattr(exc, "response", None), "status_code", None) == 401
            ):
                raise AuthenticationFailed(
                    f"reddit r/{subreddit}: {type(exc).__name__} (check reddit_client_id/secret)"
                ) from None
            raise

    def fetch(self, symbols: Sequence[str], start: date | datetime, end: date | datetime) -> pl.DataFrame:
        """Frame (symbol, ts bucket start UTC, mentions, sentiment) of buckets with mentions."""
        lo, hi = to_utc_bounds(start, end)
        kinds = ("submissions", "comments") if self.settings.include_comments else ("submissions",)
        rows = []
        for subreddit in self.settings.subreddits:
            for kind in kinds:
                for text in self._listing(subreddit, kind, lo, hi):
                    mentioned = extract_mentions(text.body, symbols)
                    if mentioned:
                        score = self._sentiment(text.body)
                        rows.extend((s, text.created, score) for s in sorted(mentioned))
        return mentions_frame(rows, self.settings.bucket)


def mentions_frame(rows: list[tuple[str, datetime, float]], bucket: str) -> pl.DataFrame:
    """Aggregate (symbol, created, compound) rows into bucketed counts and mean sentiment."""
    if not rows:
        return pl.DataFrame(schema=MENTIONS_SCHEMA)
    frame = pl.DataFrame(
        rows, schema={"symbol": pl.Utf8, "ts": pl.Datetime("us", "UTC"), "score": pl.Float64},
        orient="row",
    )
    return (
        frame.with_columns(pl.col("ts").dt.truncate(bucket))
        .group_by("symbol", "ts")
        .agg(pl.len().cast(pl.Int64).alias("mentions"), pl.col("score").mean().alias("sentiment"))
        .sort("symbol", "ts")
        .select(list(MENTIONS_SCHEMA))
    )
