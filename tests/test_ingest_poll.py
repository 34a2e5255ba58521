"""The polling DataIngestionService: which bars are published, once, in order.

``BarPoller`` against an in-memory vendor (what the vendor "has" changes between polls) and
against the real Polygon client talking to a local fake Polygon server: a new bar, no new
bar, a bar still forming, a late bar, a duplicate bar, 429 then success, a timeout, bad
credentials. ``PollingIngestor`` with a simulated clock (the stub) streams a slice of the
offline sample: every bar once, in order, closed market skipped.
"""
from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from awet_dagster.sources.errors import AuthenticationFailed, NoData, SourceUnavailable
from awet_dagster.sources.polygon import PolygonSettings, PolygonSource
from awet_dagster.sources.retry import RetryPolicy
from awet_dagster.sources.schema import BAR_SCHEMA, ensure_schema
from awet_dagster.streaming.polling import BarPoller, SimulatedClock, bar_close
from live.ingest_poll import PollingIngestor
from tests.fake_http import FakeServer, Reply
from tests.test_broker_restart import own_broker  # noqa: F401 - fixture

T0 = datetime(2024, 1, 3, 14, 30, tzinfo=UTC)  # a regular-session minute
FAST = RetryPolicy(timeout_s=1.0, max_retries=2, backoff_base_s=0.01)


def _bar(symbol: str, ts: datetime, close: float = 100.0) -> dict:
    return {"symbol": symbol, "bar_type": "minute", "ts": ts, "open": close, "high": close + 1,
            "low": close - 1, "close": close, "volume": 1000.0, "bid": None, "ask": None, "source": "vendor"}


class Vendor:
    """What a vendor has at any moment: bars are added by the test; ``fetch`` filters."""

    name = "vendor"

    def __init__(self, slack: timedelta = timedelta(0)) -> None:
        self.bars: list[dict] = []
        self.fail: list[Exception] = []
        self.calls: list[tuple[datetime, datetime]] = []
        self.slack = slack  # a vendor that answers a little more than asked (the last minute again)

    def fetch(self, symbols, start, end, timeframe):
        self.calls.append((start, end))
        if self.fail:
            raise self.fail.pop(0)
        rows = [b for b in self.bars if b["symbol"] in symbols and start - self.slack <= b["ts"] < end]
        if not rows:
            return pl.DataFrame(schema=BAR_SCHEMA)
        return ensure_schema(pl.DataFrame(rows, schema_overrides={"bid": pl.Float64, "ask": pl.Float64}))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _poller(vendor, clock, symbols=("AAA", "BBB"), **kw) -> BarPoller:
    return BarPoller(vendor, list(symbols), "minute", clock=clock, source_name="polygon", **kw)


def _published(poller: BarPoller) -> list[tuple[str, datetime]]:
    events = poller.poll()
    poller.commit(events)
    return [(e.symbol, e.ts) for e in events]


def test_bar_close_of_minute_and_daily_bars():
    assert bar_close(T0, "minute") == T0 + timedelta(minutes=1)
    # Daily bars start at the 09:30 New York open and close at 16:00 New York (EST: 21:00 UTC).
    assert bar_close(T0, "daily") == datetime(2024, 1, 3, 21, 0, tzinfo=UTC)
    assert bar_close(datetime(2024, 7, 3, 13, 30, tzinfo=UTC), "daily") == datetime(2024, 7, 3, 20, 0, tzinfo=UTC)


def test_a_new_bar_is_published_once_it_closed_and_never_again():
    v, clock = Vendor(slack=timedelta(minutes=1)), Clock(T0 + timedelta(seconds=30))
    p = _poller(v, clock)
    v.bars += [_bar("AAA", T0), _bar("BBB", T0)]  # the vendor returns the forming minute
    assert _published(p) == [] and p.stats.forming == 2
    clock.now = T0 + timedelta(minutes=1, seconds=2)
    assert _published(p) == [("AAA", T0), ("BBB", T0)]
    # No new bar: the same window again publishes nothing (the vendor sends the minute again).
    assert _published(p) == [] and p.stats.published == 2 and p.stats.late == 0
    v.bars += [_bar("AAA", T0 + timedelta(minutes=1))]
    clock.now = T0 + timedelta(minutes=2, seconds=1)
    assert _published(p) == [("AAA", T0 + timedelta(minutes=1))]
    assert p.stats.published == 3 and p.stats.last == {"AAA": T0 + timedelta(minutes=1), "BBB": T0}
    # The next fetch starts a short overlap before the OLDEST symbol's last bar (BBB's), not at
    # the 15-minute catch-up of a fresh start.
    assert p.window_start(clock.now) == T0 - timedelta(minutes=5)


def test_a_late_bar_is_counted_and_dropped_a_missing_one_filled_in_order():
    v, clock = Vendor(), Clock(T0 + timedelta(minutes=3))
    p = _poller(v, clock, symbols=("AAA",))
    v.bars += [_bar("AAA", T0), _bar("AAA", T0 + timedelta(minutes=2))]  # 14:31 missing at the vendor
    assert _published(p) == [("AAA", T0), ("AAA", T0 + timedelta(minutes=2))]
    v.bars.append(_bar("AAA", T0 + timedelta(minutes=1)))  # it shows up after 14:32 was published
    assert _published(p) == [] and p.stats.late == 1


def test_a_failed_publish_is_handed_out_again_and_fetch_errors_do_not_stop_the_poller():
    v, clock = Vendor(), Clock(T0 + timedelta(minutes=2))
    p = _poller(v, clock, symbols=("AAA",))
    v.bars += [_bar("AAA", T0), _bar("AAA", T0 + timedelta(minutes=1))]
    first = p.poll()  # not committed: the broker did not acknowledge
    assert [e.ts for e in first] == [T0, T0 + timedelta(minutes=1)]
    v.fail.append(SourceUnavailable("polygon: no reply within 1 s"))
    assert p.poll() == [] and p.stats.errors == 1
    v.fail.append(NoData("no rows"))  # a closed market: not an error
    assert p.poll() == [] and p.stats.errors == 1
    again = p.poll()
    assert [e.event_id for e in again] == [e.event_id for e in first]
    p.commit(again)
    assert p.poll() == []
    v.fail.append(AuthenticationFailed("polygon: HTTP 401"))
    with pytest.raises(AuthenticationFailed):
        p.poll()


def test_resume_publishes_nothing_already_published_and_fills_the_gap_after_it():
    v, clock = Vendor(), Clock(T0 + timedelta(minutes=40))
    v.bars += [_bar("AAA", T0 + timedelta(minutes=i)) for i in range(40)]
    p = _poller(v, clock, symbols=("AAA",))
    p.resume({"AAA": T0 + timedelta(minutes=9), "ZZZ": T0})  # an earlier run's last bar; ZZZ not ours
    got = _published(p)
    # The 30 minutes missed while down (beyond the 15-minute catch-up of a fresh start), in order.
    assert [ts for _, ts in got] == [T0 + timedelta(minutes=i) for i in range(10, 40)]
    fresh = _poller(v, clock, symbols=("AAA",))
    assert [ts for _, ts in _published(fresh)] == [T0 + timedelta(minutes=i) for i in range(25, 40)]


# ---------------------------------------------------------------- Polygon through its fake server

class FakePolygon:
    """Minute aggregates the fake Polygon has now; answers the real client's range requests."""

    def __init__(self) -> None:
        self.bars: list[tuple[str, datetime, float]] = []
        self.script: list[Reply] = []

    def respond(self, seen, n):
        if self.script:
            return self.script.pop(0)
        parts = seen.path.split("/")  # /v2/aggs/ticker/{sym}/range/1/minute/{first_ms}/{last_ms}
        symbol, first, last = parts[4], int(parts[8]), int(parts[9])
        results = [{"t": int(ts.timestamp() * 1000), "o": c, "h": c + 1, "l": c - 1, "c": c, "v": 1000.0, "n": 10}
                   for s, ts, c in self.bars if s == symbol and first <= ts.timestamp() * 1000 <= last]
        return Reply(200, {"ticker": symbol, "status": "OK", "resultsCount": len(results), "results": results})


@pytest.fixture
def polygon():
    fake = FakePolygon()
    with FakeServer() as server:
        server.respond = fake.respond
        source = PolygonSource("sk-test", PolygonSettings(base_url=server.url), FAST, sleep=lambda s: None)
        yield fake, source, server


def test_polygon_poller_new_bar_no_new_bar_duplicate_late_429_timeout_and_bad_key(polygon):
    fake, source, server = polygon
    clock = Clock(T0 + timedelta(minutes=1, seconds=30))
    p = BarPoller(source, ["AAPL"], "minute", clock=clock, source_name="polygon")
    fake.bars += [("AAPL", T0, 185.0), ("AAPL", T0 + timedelta(minutes=1), 185.5)]  # the second still forming
    got = p.poll()
    p.commit(got)
    assert [(e.ts, e.close, e.source) for e in got] == [(T0, 185.0, "polygon")] and p.stats.forming == 1
    # No new bar: the forming minute is still forming.
    assert p.poll() == [] and p.stats.forming == 2
    # A reply with the same minute twice (the one already published): nothing published again.
    fake.script.append(Reply(200, {"status": "OK", "results": [
        {"t": int((T0 + timedelta(minutes=k)).timestamp() * 1000), "o": 185.0, "h": 186.0, "l": 184.0, "c": 185.0,
         "v": 1000.0} for k in (0, 0)]}))
    assert p.poll() == [] and p.stats.published == 1
    # 429 (Retry-After honoured by the client) then the new minute.
    clock.now = T0 + timedelta(minutes=2, seconds=1)
    fake.script.append(Reply(429, {"status": "ERROR"}, headers={"Retry-After": "0"}))
    got = p.poll()
    p.commit(got)
    assert [e.ts for e in got] == [T0 + timedelta(minutes=1)]
    # A late bar: 14:33 published, then 14:32 appears at the vendor.
    clock.now = T0 + timedelta(minutes=4, seconds=1)
    fake.bars.append(("AAPL", T0 + timedelta(minutes=3), 186.0))
    p.commit(p.poll())
    fake.bars.append(("AAPL", T0 + timedelta(minutes=2), 185.7))
    assert p.poll() == [] and p.stats.late == 1
    # A reply slower than the client's timeout on every try: one failed poll, the next one works.
    fake.script += [Reply(200, {}, delay_s=1.5)] * 3
    assert p.poll() == [] and p.stats.errors == 1
    clock.now = T0 + timedelta(minutes=5, seconds=1)
    fake.bars.append(("AAPL", T0 + timedelta(minutes=4), 186.2))
    got = p.poll()
    assert [e.ts for e in got] == [T0 + timedelta(minutes=4)]
    # Bad credentials: the poller raises (the service stops and says why) instead of polling on.
    fake.script.append(Reply(401, {"status": "ERROR", "error": "Unknown API Key"}))
    with pytest.raises(AuthenticationFailed):
        p.poll()


# ---------------------------------------------------------------- the stub: the sample streamed live

def test_stub_streams_the_sample_once_in_order_skipping_the_closed_market():
    from awet_dagster.sources.sample import SampleSource

    sample = SampleSource()
    want = sample.fetch(["SPY", "AAPL"], date(2019, 3, 1), date(2019, 3, 14), "daily")
    clock = SimulatedClock(datetime(2019, 3, 1, tzinfo=UTC), speed=86_400 * 20)  # 20 market days a second
    poller = BarPoller(sample, ["SPY", "AAPL"], "daily", clock=clock, source_name="stub",
                       catch_up=timedelta(0))
    published: list = []
    stop = threading.Event()

    def publish(events):
        published.extend(events)
        if events[-1].ts >= want["ts"].max():
            stop.set()

    result = PollingIngestor(poller, publish, interval_s=0.01, stop_event=stop, simulated=clock).run(timeout_s=60)
    assert result.stopped_by == "stop"
    got = [(e.symbol, e.ts) for e in published]
    assert got == sorted(got, key=lambda k: (k[1], k[0])), "in time order"
    until = [k for k in got if k[1] <= want["ts"].max()]  # the last poll may run a day or two further
    assert set(until) == set(zip(want["symbol"], want["ts"], strict=True)) and len(until) == want.height
    assert len(set(got)) == len(got) and all(e.source == "stub" for e in published)


# ---------------------------------------------------------------- `awet ingest --source stub` into `awet live`

@pytest.mark.slow
@pytest.mark.timeout(420)
def test_stub_ingest_into_a_running_live_loop_places_orders_without_a_replay(
        tmp_path, isolated_database_url, own_broker):
    """The design's path: an ingestion service publishes bars to market.raw as they "close" (the
    stub: the shipped minute sample on a simulated clock) and the running loop trades them; no
    replay command anywhere. History before the streamed morning is in the database (a backfill).
    The ingest follows each minute's bars with their clock on market.clock, by which risk orders
    its input (risk.event_order "clock").
    A broker of its own: the configured topic names are shared by every test of a session broker,
    and `awet live` in a new group reads market.raw from its start."""
    import subprocess

    from awet_dagster.config import load_config
    from awet_dagster.sources.sample import SampleSource
    from awet_dagster.storage.bars import copy_upsert_bars
    from awet_dagster.storage.db import connect
    from live.single_instance import InstanceLock
    from awet_kafka.admin import ensure_configured_topics
    from tests.test_stopping import AWET, _env, _start, _wait_for_line

    kafka_bootstrap = own_broker.bootstrap
    ensure_configured_topics(kafka_bootstrap, load_config(environ={"AWET_ENV": "test"}).kafka)

    symbols = ["SPY", "IBM", "BAC", "AIG"]
    day = date(2013, 10, 10)
    opening = datetime(2013, 10, 10, 13, 30, tzinfo=UTC)
    history = SampleSource().fetch(symbols, date(2013, 10, 4), day, "minute")
    with connect(isolated_database_url) as conn:
        copy_upsert_bars(conn, history.filter(pl.col("ts") < opening))
    # At 1200x a bar lasts 50 ms: no fill report can come within it, risk decides on the orders
    # in flight (pending exposure) instead of waiting 2 s a bar for it. Risk reads its input in
    # event-time order by the clocks the polled ingest publishes after each minute's bars (were
    # they missing, every minute would wait 10 s and the morning would not trade in time).
    env = _env(tmp_path, isolated_database_url, kafka_bootstrap, AWET__RISK__FILL_WAIT_S="0",
               AWET__RISK__EVENT_ORDER="clock")
    live = _start(["live", "--max-seconds", "400"], env, tmp_path)
    lines: list[str] = []
    try:
        _wait_for_line(live, "running persist_bars", 120)
        # The loop logs as it goes: read its output all along (a full pipe would block it).
        reader = threading.Thread(target=lambda: lines.extend(iter(live.stdout.readline, "")), daemon=True)
        reader.start()
        cmd = [AWET, "ingest", "--source", "stub", "--bar-type", "minute", "--symbols", ",".join(symbols),
               "--start", opening.isoformat(), "--speed", "1200"]
        # One ingest per topic and bar type: a second one refuses to start (it would publish twice).
        with InstanceLock(isolated_database_url, "ingest", "ingest:market.raw:minute", "held by the test"):
            second = subprocess.run([*cmd, "--max-seconds", "5"], env=env, cwd=tmp_path, capture_output=True,
                                    text=True, timeout=120)
        assert second.returncode == 3 and "already running" in " ".join(second.stdout.split()), second.stdout
        # 150 market minutes at 1200x: ~8 s of stream, four symbols a bar each.
        ingest = subprocess.run([*cmd, "--max-seconds", "7.5"], env=env, cwd=tmp_path, capture_output=True,
                                text=True, timeout=180)
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr
        said = " ".join(ingest.stdout.split())
        published = int(said.split("published ")[1].split(",")[0])
        assert published >= 4 * 60 and "late 0" in said, said
        # The loop trades what was streamed: orders of the streamed morning appear in the database.
        deadline, orders, stored = time.monotonic() + 120, [], 0
        while time.monotonic() < deadline:
            with connect(isolated_database_url) as conn:
                stored = conn.execute("SELECT count(*) FROM bars WHERE bar_type = 'minute' AND ts >= %s",
                                      (opening,)).fetchone()[0]
                orders = conn.execute(
                    "SELECT symbol, payload->>'intent' FROM orders WHERE symbol = ANY(%s) "
                    "AND (payload->>'ts')::timestamptz >= %s", (symbols, opening)).fetchall()
            if stored >= published and orders:
                break
            time.sleep(0.5)
        assert stored == published, (stored, published, "".join(lines)[-3000:])  # every streamed bar once
        assert any(intent == "entry" for _, intent in orders), (orders, "".join(lines)[-3000:])
    finally:
        live.send_signal(signal.SIGTERM)
        try:
            code = live.wait(timeout=30)
        except subprocess.TimeoutExpired:
            live.kill()
            code = live.wait(10)
    assert code == 143, "".join(lines)[-3000:]
