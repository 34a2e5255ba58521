"""Reddit sentiment the design's way: ``awet ingest --source reddit`` -> ``social.sentiment`` ->
``persist_sentiment`` -> ``reddit_mentions`` (#20 item 2).

``SentimentPoller`` over the real praw client talking to the local fake Reddit: a new bucket,
no new bucket (Reddit is not even asked), a duplicate (the overlap re-read), late posts in a
published bucket, 429 then success, a timeout, bad credentials. Then the command itself
against the fake, with the persist service writing the table, a restart that publishes nothing
twice, and poison on the topic dead-lettered with its reason.
"""
from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from awet_dagster.contracts import SentimentEvent
from awet_dagster.contracts.topics import dlq_topic
from awet_dagster.infra import Endpoints
from awet_dagster.sources.errors import AuthenticationFailed
from awet_dagster.sources.reddit import RedditMentions, RedditSettings
from awet_dagster.streaming.sentiment import SentimentPoller, bucket_floor
from live.ingest_poll import PollingIngestor
from tests.fake_http import FakeServer, Reply
from tests.test_sources_http_fakes import (  # noqa: F401 - fixtures
    FAST,
    SECRET,
    listing,
    listing_requests,
    reddit_server,
    sleeps,
    submission,
)

pytestmark = pytest.mark.timeout(120)

NEW = "/r/stocks/new"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _posts(fake, *items: tuple[str, datetime, str]) -> None:
    """What r/stocks lists: newest first, like Reddit."""
    subs = [submission(ident, at.timestamp(), title) for ident, at, title in items]
    fake.pages[NEW] = {None: listing(sorted(subs, key=lambda s: -s["data"]["created_utc"]))}


def _poller(server: FakeServer, sleeps: list[float], clock: Clock, symbols=("SPY", "AAPL")) -> SentimentPoller:
    client = RedditMentions("client-id", SECRET, policy=FAST, sleep=sleeps.append, settings=RedditSettings(
        subreddits=("stocks",), include_comments=False, bucket="1h", oauth_url=server.url, reddit_url=server.url))
    return SentimentPoller(client, symbols, "1h", clock=clock, subreddits=("stocks",))


def at(h: int, m: int = 0) -> datetime:
    return datetime(2024, 1, 3, h, m, tzinfo=UTC)


def test_each_closed_bucket_is_published_once_and_reddit_is_asked_only_when_one_closed(reddit_server, sleeps):
    fake, server = reddit_server
    _posts(fake, ("s1", at(10, 5), "$SPY rally, love it"), ("s2", at(10, 40), "SPY looks terrible"),
           ("s3", at(11, 20), "$AAPL great quarter"))
    clock = Clock(at(11, 30))  # 11:00-12:00 still open: only the 10:00 bucket has closed
    poller = _poller(server, sleeps, clock)
    first = poller.poll()
    assert [(e.symbol, e.ts, e.mentions, e.bucket) for e in first] == [("SPY", at(10), 2, "1h")]
    assert -1 <= first[0].sentiment <= 1 and first[0].subreddits == ("stocks",)
    poller.commit(first)
    asked = len(listing_requests(server, NEW))
    clock.now = at(11, 59)  # no new bucket closed (and settled): Reddit is not asked
    assert poller.poll() == [] and len(listing_requests(server, NEW)) == asked
    clock.now = at(12, 5)  # the 11:00 bucket closed; 10:00 is re-read (overlap) and not sent again
    second = poller.poll()
    assert [(e.symbol, e.ts, e.mentions) for e in second] == [("AAPL", at(11), 1)]
    assert poller.stats.duplicates == 1 and poller.stats.late == 0
    poller.commit(second)
    # A post Reddit lists only now, made in the published 11:00 bucket: dropped, counted late once.
    _posts(fake, ("s1", at(10, 5), "$SPY rally"), ("s2", at(10, 40), "SPY"), ("s3", at(11, 20), "$AAPL great"),
           ("s4", at(11, 50), "$AAPL again"), ("s5", at(12, 10), "$SPY new"))
    clock.now = at(13, 5)
    third = poller.poll()
    assert [(e.symbol, e.ts, e.mentions) for e in third] == [("SPY", at(12), 1)]
    assert poller.stats.late == 1
    assert len({e.event_id for e in first + second + third}) == 3
    assert sleeps == []


def test_a_poll_with_nothing_new_moves_on_and_the_windows_do_not_grow(reddit_server, sleeps):
    fake, server = reddit_server
    _posts(fake, ("s1", at(9, 5), "nothing about the watch list"))
    clock = Clock(at(10, 5))
    poller = _poller(server, sleeps, clock)
    assert poller.poll() == []
    clock.now = at(11, 5)
    assert poller.poll() == []
    assert poller.stats.polls == 2 and poller.stats.errors == 0
    # The second poll read from the last bucket read (less the overlap), not from the catch-up start.
    assert poller.closed_until(clock.now) == at(11) and poller._through == at(11)


def test_429_is_retried_a_timeout_is_an_error_the_next_poll_recovers_and_bad_credentials_stop(
        reddit_server, sleeps):
    fake, server = reddit_server
    _posts(fake, ("s1", at(10, 5), "$SPY up"))
    clock = Clock(at(11, 5))
    poller = _poller(server, sleeps, clock)
    fake.script = lambda seen, n: (Reply(429, {"message": "Too Many Requests"}, {"Retry-After": "1"})
                                   if len(listing_requests(server, NEW)) == 1 else None)
    got = poller.poll()
    assert [(e.symbol, e.ts) for e in got] == [("SPY", at(10))] and sleeps == [1.0]
    poller.commit(got)
    _posts(fake, ("s1", at(10, 5), "$SPY up"), ("s2", at(11, 5), "$AAPL up"))
    fake.script = lambda seen, n: Reply(200, fake.pages[NEW][None], delay_s=3.0)  # slower than the 1 s timeout
    clock.now = at(12, 5)
    assert poller.poll() == [] and poller.stats.errors == 1
    fake.script = lambda seen, n: None
    again = poller.poll()  # the same window asked again: nothing lost
    assert [(e.symbol, e.ts) for e in again] == [("AAPL", at(11))]
    poller.commit(again)
    fake.token = Reply(401, {"message": "Unauthorized", "error": 401})
    fake.pages.clear()
    fresh = _poller(server, sleeps, Clock(at(13, 5)))
    ingestor = PollingIngestor(fresh, lambda events: None, interval_s=0.01)
    with pytest.raises(AuthenticationFailed, match="check reddit_client_id/secret") as info:
        ingestor.run(timeout_s=30)  # polling on cannot help: the run stops and says why
    assert SECRET not in str(info.value)


def test_bucket_floor_is_utc_aligned_as_the_mentions_frame_truncates():
    assert bucket_floor(datetime(2024, 1, 3, 10, 59, 59, tzinfo=UTC), "1h") == at(10)
    assert bucket_floor(at(23, 30), "1d") == datetime(2024, 1, 3, tzinfo=UTC)
    with pytest.raises(ValueError, match="bucket must be one of"):
        SentimentPoller(object(), ["SPY"], "5m", clock=Clock(at(1)), subreddits=("stocks",))


# ---------------------------------------------------------------- the command, the topic, the table

@pytest.fixture
def endpoints(database_url, kafka_bootstrap) -> Endpoints:
    return Endpoints(database_url, kafka_bootstrap)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_awet_ingest_reddit_streams_into_social_sentiment_and_persist_sentiment_stores_it(
        reddit_server, tmp_path, endpoints, make_topic, test_config_for):
    from awet_dagster.storage.db import connect
    from live.services import persist_sentiment
    from tests.test_live_loop import _group, _read_all
    from tests.test_stopping import AWET, _env

    fake, server = reddit_server
    now = datetime.now(UTC)
    hour = bucket_floor(now, "1h")
    sym = "Q" + "".join(chr(65 + b % 26) for b in uuid.uuid4().bytes[:4])  # a ticker of this test only
    _posts(fake, ("s1", hour - timedelta(hours=3) + timedelta(minutes=5), f"${sym} to the moon, love it"),
           ("s2", hour - timedelta(hours=3) + timedelta(minutes=40), f"{sym} is awful"),
           ("s3", hour - timedelta(hours=2) + timedelta(minutes=10), f"bought ${sym}"))
    fake.pages["/r/stocks/comments/"] = {None: listing([])}  # the command reads comments too
    topic = make_topic()
    env = _env(tmp_path, endpoints.database_url, endpoints.kafka_bootstrap,
               AWET__DATA__REDDIT_CLIENT_ID="client-id", AWET__DATA__REDDIT_CLIENT_SECRET=SECRET,
               AWET__DATA__REDDIT_API_URL=server.url, AWET__DATA__REDDIT_AUTH_URL=server.url,
               AWET__DATA__REDDIT_SUBREDDITS='["stocks"]', AWET__DATA__REDDIT_DAYS="1",
               AWET__DATA__REQUEST_TIMEOUT_S="2", AWET__DATA__MAX_RETRIES="1")
    cmd = [AWET, "ingest", "--source", "reddit", "--bucket", "1h", "--symbols", sym, "--topic", topic,
           "--interval", "0.2"]

    res_err = ""

    def ingest() -> str:
        nonlocal res_err
        res = subprocess.run([*cmd, "--max-seconds", "3"], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=180)
        assert res.returncode == 0, res.stdout + res.stderr
        res_err = res.stderr
        return " ".join(res.stdout.split())

    said = ingest()
    assert "published 2," in said and "fetch errors 0" in said, said
    assert SECRET not in said
    events = [SentimentEvent.model_validate_json(m.value()) for m in _read_all(endpoints.kafka_bootstrap, topic, 2)]
    assert [(e.ts, e.mentions) for e in events] == [(hour - timedelta(hours=3), 2), (hour - timedelta(hours=2), 1)]
    # A restart reads its marks back from the topic: nothing twice.
    said = ingest()
    assert "published 0," in said and "resuming after 1 symbol(s)" in said, said
    assert len(_read_all(endpoints.kafka_bootstrap, topic, 2, timeout_s=3)) == 2

    cfg = test_config_for(tmp_path / "home")
    group = _group()
    for _ in range(2):  # a redelivery (a new group reads it all again) upserts the same rows
        with persist_sentiment.build(cfg, endpoints, input_topic=topic, group=group) as svc:
            stats = svc.run(max_messages=2, timeout_s=60)
        assert stats.processed == 2 and stats.dead_lettered == 0
        group = _group()
    with connect(endpoints.database_url) as conn:
        rows = conn.execute("SELECT bucket, ts, mentions, sentiment, source FROM reddit_mentions WHERE symbol = %s "
                            "ORDER BY ts", (sym,)).fetchall()
    assert [(b, t, m, s) for b, t, m, _, s in rows] == [
        ("1h", hour - timedelta(hours=3), 2, "reddit"), ("1h", hour - timedelta(hours=2), 1, "reddit")]
    assert rows[0][3] == pytest.approx(events[0].sentiment)


@pytest.mark.timeout(120)
def test_poison_on_social_sentiment_is_dead_lettered_with_its_reason_and_the_rest_is_stored(
        tmp_path, endpoints, make_topic, test_config_for):
    from awet_dagster.storage.db import connect
    from awet_kafka.dead_letters import DLQ_REASON_HEADER
    from live.services import persist_sentiment
    from tests.test_live_loop import _group, _producer, _read_all

    topic = make_topic()
    good = SentimentEvent(correlation_id="c-1", symbol="PSNT", ts=datetime(2024, 1, 3, tzinfo=UTC), bucket="1d",
                          mentions=3, sentiment=-0.25, subreddits=("stocks",))
    future = json.loads(good.model_dump_json())
    future["schema_version"] = 2
    prod = _producer(endpoints.kafka_bootstrap)
    prod.send_raw(topic, b"{not json", key=b"PSNT")
    prod.send_raw(topic, json.dumps({**json.loads(good.model_dump_json()), "mentions": 0}).encode(), key=b"PSNT")
    prod.send_raw(topic, json.dumps(future).encode(), key=b"PSNT")
    prod.send(topic, good)
    prod.flush(10)
    with persist_sentiment.build(test_config_for(tmp_path / "home"), endpoints, input_topic=topic,
                                 group=_group()) as svc:
        stats = svc.run(max_messages=4, timeout_s=60)
    assert stats.dead_lettered == 3 and stats.processed == 1, stats
    letters = _read_all(endpoints.kafka_bootstrap, dlq_topic(topic), 3)
    assert sorted(dict(m.headers())[DLQ_REASON_HEADER].decode() for m in letters) == [
        "invalid_json", "schema_mismatch", "unsupported_version"]
    with connect(endpoints.database_url) as conn:
        row = conn.execute("SELECT bucket, mentions, sentiment FROM reddit_mentions WHERE symbol = 'PSNT'").fetchone()
    assert row == ("1d", 3, -0.25)
