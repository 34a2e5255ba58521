"""Closed Reddit sentiment buckets, each once: the polling half of ``awet ingest --source reddit``.

``SentimentPoller.poll()`` asks a mentions source (``RedditMentions``: anything with
``fetch(symbols, start, end) -> frame(symbol, ts, mentions, sentiment)``) for the buckets
that have CLOSED since the last poll and returns one ``SentimentEvent`` per (symbol, bucket)
with mentions, oldest first:

- closed: a bucket ``[ts, ts + bucket)`` once the clock passed ``ts + bucket + settle``
  (``settle``: Reddit lists a post a little after it was made). A poll while no new bucket
  has closed asks Reddit nothing (the API's rate limit is shared by every caller of the app).
- once: per symbol, nothing at or before its last published bucket again. ``resume`` sets
  those marks from what an earlier run published (the live layer reads them back from the
  topic), so a restart publishes nothing twice.
- late: each fetch re-reads the bucket before the window (the overlap). A published bucket
  that now counts more mentions (posts Reddit listed after it was read) is not published
  again: the features joined the first count at the time, and a correction would rewrite that
  history (look-ahead in every later backtest). Counted once in ``stats.late`` and logged.
- first poll without marks: the buckets closed within ``catch_up`` (default one day).

Pure: no network, no Kafka; the source's own timeouts and retries apply inside ``fetch``.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl

from awet_dagster.contracts import SentimentEvent, new_event_id
from awet_dagster.sources.errors import AuthenticationFailed, MissingCredentials
from awet_dagster.streaming.events import derived_event_id

log = logging.getLogger("awet.streaming.sentiment")

DEFAULT_SETTLE = timedelta(minutes=2)
#: Bucket sizes of mention counts (``reddit_mentions.bucket``).
BUCKET = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}


def bucket_floor(at: datetime, bucket: str) -> datetime:
    """Start of the ``bucket``-long bucket (UTC-aligned, as ``mentions_frame`` truncates) holding ``at``."""
    size = BUCKET[bucket]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return epoch + ((at.astimezone(UTC) - epoch) // size) * size


def sentiment_event_id(symbol: str, bucket: str, ts: datetime) -> str:
    """Deterministic: the same bucket published again (a restart) carries the same id."""
    return derived_event_id("sentiment", symbol, bucket, ts)


@dataclass
class SentimentStats:
    polls: int = 0  # polls that asked the source (a poll with no newly closed bucket asks nothing)
    published: int = 0
    duplicates: int = 0  # a published bucket seen again unchanged (the overlap re-read)
    late: int = 0  # a published bucket seen again with other counts: posts listed late, dropped
    errors: int = 0  # fetches that failed (the source had retried already)
    last: dict[str, datetime] = field(default_factory=dict)


class SentimentPoller:
    source_name = "reddit"

    def __init__(self, source: object, symbols: Sequence[str], bucket: str, *, clock: Callable[[], datetime],
                 subreddits: Sequence[str], catch_up: timedelta = timedelta(days=1),
                 settle: timedelta = DEFAULT_SETTLE) -> None:
        if bucket not in BUCKET:
            raise ValueError(f"bucket must be one of {sorted(BUCKET)}, got {bucket!r}")
        if not symbols:
            raise ValueError("symbols must not be empty")
        if not subreddits:
            raise ValueError("subreddits must not be empty")
        self.source, self.bucket, self.clock = source, bucket, clock
        self.symbols = list(dict.fromkeys(s.upper() for s in symbols))
        self.subreddits = tuple(subreddits)
        self.size = BUCKET[bucket]  # also the overlap: each fetch re-reads one bucket
        self.catch_up, self.settle = catch_up, settle
        self.stats = SentimentStats()
        self._last: dict[str, datetime] = {}
        self._counts: dict[str, int] = {}  # mentions of each symbol's last published bucket
        self._late: set[tuple[str, datetime]] = set()
        self._through: datetime | None = None  # every bucket before it has been read
        self._pending_through: datetime | None = None

    def resume(self, published: Mapping[str, datetime]) -> None:
        """The last bucket an earlier run published per symbol: nothing at or before it again;
        reading goes on after the newest of them (all symbols are read together)."""
        for symbol, ts in published.items():
            if symbol in self.symbols and (symbol not in self._last or ts > self._last[symbol]):
                self._last[symbol] = ts.astimezone(UTC)
        if self._last:
            self._through = max(self._last.values()) + self.size
        self.stats.last = dict(self._last)

    def closed_until(self, now: datetime) -> datetime:
        """End of the newest bucket that has closed (and settled) by ``now``."""
        return bucket_floor(now - self.settle, self.bucket)

    def poll(self) -> list[SentimentEvent]:
        """The buckets closed since the last poll, oldest first. Call ``commit`` with them once
        they are published (a poll that finds none moves on by itself)."""
        until = self.closed_until(self.clock())
        since = self._through if self._through is not None else until - self.catch_up
        if until <= since:
            return []  # no bucket closed since the last poll: nothing to ask
        self.stats.polls += 1
        start = since - self.size if self._through is not None else since
        try:
            frame = self.source.fetch(self.symbols, start, until)  # type: ignore[attr-defined]
        except (AuthenticationFailed, MissingCredentials):
            raise  # asking again cannot help: the run stops and says why
        except Exception as exc:  # the source retried already; the next poll asks again
            self.stats.errors += 1
            log.warning("ingest reddit: fetch of %s..%s failed: %s", start.isoformat(), until.isoformat(), exc)
            return []
        events = self._select(frame)
        if events:
            self._pending_through = until
        else:
            self._through = until
        return events

    def _select(self, frame: pl.DataFrame) -> list[SentimentEvent]:
        out: list[SentimentEvent] = []
        for row in frame.sort("ts", "symbol").iter_rows(named=True):
            symbol, ts = row["symbol"], row["ts"]
            if symbol not in self.symbols or int(row["mentions"]) < 1:
                continue
            mark = self._last.get(symbol)
            if mark is not None and ts <= mark:
                # Before the overlap only at a resume (counts unknown): nothing to tell.
                if ts < mark or self._counts.get(symbol, int(row["mentions"])) == int(row["mentions"]):
                    self.stats.duplicates += 1
                elif (symbol, ts) not in self._late:
                    self._late.add((symbol, ts))
                    self.stats.late += 1
                    log.warning("ingest reddit: %s bucket %s counts %d mentions now, %d when published: "
                                "the late posts are dropped", symbol, ts.isoformat(), int(row["mentions"]),
                                self._counts[symbol])
                continue
            out.append(SentimentEvent(
                event_id=sentiment_event_id(symbol, self.bucket, ts), correlation_id=new_event_id(),
                symbol=symbol, ts=ts, bucket=self.bucket, mentions=int(row["mentions"]),
                sentiment=max(-1.0, min(1.0, float(row["sentiment"]))), subreddits=self.subreddits))
        return out

    def commit(self, published: Sequence[SentimentEvent]) -> None:
        """``published`` reached the topic: move the marks past them."""
        for ev in published:
            if ev.symbol not in self._last or ev.ts > self._last[ev.symbol]:
                self._last[ev.symbol], self._counts[ev.symbol] = ev.ts, ev.mentions
        self.stats.published += len(published)
        self.stats.last = dict(self._last)
        if self._pending_through is not None:
            self._through, self._pending_through = self._pending_through, None
