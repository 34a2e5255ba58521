"""The Alpaca path under a real broker's timing: fills reported several bars late, in parts.

A venue model in this test plays the market on the fake Alpaca server: before each bar is
published it fills the orders that have been working for ``DELAY`` bars at that bar's open (a
first part, then the rest a bar later) and fires bracket legs the bar crosses. Alpaca reports
fills when the execution service looks, i.e. bars after the decision; the paper simulator fills
at the next bar. Found before: risk approved a second entry for a symbol while the first one's
fill was still unreported; the time exit then sold one entry's quantity and the rest stayed
open all day with live bracket legs.
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from datetime import date

import pytest

from live.runner import LoopTracker, replay_through_loop, start_loop
from tests.fake_alpaca import FakeAlpaca
from tests.test_live_loop import (  # noqa: F401 - cfg, endpoints: fixtures
    _alpaca_setup,
    _live_orders,
    _overrides,
    _producer,
    _sample_bars,
    _topics,
    _uid,
    cfg,
    endpoints,
)

pytestmark = pytest.mark.slow
DELAY = 3  # bars an order works before the venue fills it


class SlowVenue:
    def __init__(self, fake: FakeAlpaca, delay: int = DELAY) -> None:
        self.fake, self.delay = fake, delay
        self.age: dict[str, int] = defaultdict(int)
        self.parts = 0

    def trade(self, bars_by_symbol: dict[str, dict]) -> None:
        fake = self.fake
        for oid, o in list(fake.orders.items()):
            bar = bars_by_symbol.get(o["symbol"])
            if bar is None:
                continue
            if o["status"] in ("accepted", "new", "partially_filled"):
                self.age[oid] += 1
                if self.age[oid] < self.delay:
                    continue
                total, done = float(o["qty"]), float(o["filled_qty"])
                first = math.floor(total / 2) if done == 0 and total >= 2 else total - done
                fake.fill(oid, round(bar["open"], 2), qty=first)  # the rest on the next bar
                self.parts += 1
                continue
            if o["status"] != "filled" or not o.get("legs"):
                continue
            tp, sl = o["legs"]
            long_ = o["side"] == "buy"
            if tp["status"] in ("new", "held"):
                limit, stop = float(tp["limit_price"]), float(sl["stop_price"])
                if (bar["high"] >= limit) if long_ else (bar["low"] <= limit):
                    fake.fill(tp["id"], limit)
                elif (bar["low"] <= stop) if long_ else (bar["high"] >= stop):
                    fake.fill(sl["id"], stop)


def _check_positions(orders: list[dict], fake: FakeAlpaca) -> None:
    by_symbol: dict[str, list[dict]] = defaultdict(list)
    for o in sorted(orders, key=lambda o: (o["ts"], o["intent"] != "exit")):
        by_symbol[o["symbol"]].append(o)
    for symbol, seq in by_symbol.items():
        kinds = [o["intent"] for o in seq]
        # One entry per position: never two entries without the position closed in between.
        assert all(not (a == b == "entry") for a, b in zip(kinds, kinds[1:], strict=False)), (symbol, kinds)


@pytest.mark.timeout(600)
def test_alpaca_fills_reported_bars_late_make_one_entry_per_position_and_flat_exits(
        cfg, endpoints, make_topic, database_url, tmp_path):
    bars = _sample_bars(start=date(2019, 1, 1), end=date(2019, 6, 30))
    t, ns = _topics(make_topic), f"ns-{_uid()}"
    with FakeAlpaca() as fake:
        live_cfg, broker = _alpaca_setup(cfg, fake, tmp_path)
        ov = _overrides(t, ns, tmp_path)
        ov["execution"]["broker"] = broker
        venue, results = _replay_at_slow_venue(live_cfg, endpoints, ov, fake, bars, t["raw"], timeout_s=560)
        assert all(r.error is None for r in results.values()), {n: r.error for n, r in results.items()}
        orders = _live_orders(database_url, ns)
        assert sum(o["intent"] == "entry" for o in orders) >= 3 and venue.parts > 0
        _check_positions(orders, fake)
        # Every exited position is flat at the venue and its bracket legs are gone (filled or canceled).
        open_entries = {o["symbol"] for o in orders if o["intent"] == "entry"} - {
            o["symbol"] for o in orders if o["intent"] == "exit"}
        for symbol in {o["symbol"] for o in orders} - open_entries:
            assert fake.position_qty(symbol) == 0 or any(
                o["symbol"] == symbol and o["intent"] == "entry" and o["ts"] > max(
                    x["ts"] for x in orders if x["symbol"] == symbol and x["intent"] != "entry")
                for o in orders), symbol
        working_legs = [(leg["symbol"], leg["status"]) for o in fake.orders.values() if o["status"] == "filled"
                        for leg in (o.get("legs") or []) if leg["status"] in ("new", "held", "accepted")
                        and fake.position_qty(leg["symbol"]) == 0]
        assert working_legs == [], working_legs


def _replay_at_slow_venue(live_cfg, endpoints, ov, fake, bars, raw_topic, *, timeout_s):
    """Replay ``bars`` in lockstep through the loop whose execution trades at ``fake``, the venue
    reporting each fill bars late; returns (the venue, the loop's results)."""
    for name in ("risk", "exit_monitor"):
        ov[name]["fill_wait_s"] = 0.0  # the venue reports fills bars late by design
    tracker = LoopTracker()
    loop = start_loop(live_cfg, endpoints, overrides=ov, tracker=tracker, timeout_s=timeout_s, backoff_s=0.2)
    venue = SlowVenue(fake)
    prod = _producer(endpoints.kafka_bootstrap)
    try:
        for day in bars.partition_by("ts", maintain_order=True):
            venue.trade({r["symbol"]: r for r in day.iter_rows(named=True)})
            _, drained = replay_through_loop(prod, day, tracker, topic=raw_topic, lockstep=True, drain_timeout_s=60)
            assert drained, tracker.lagging()
    finally:
        loop.stop()
        results = loop.join(60)
    return venue, results


def _minute_bars():
    import polars as pl

    from awet_dagster.sources.sample import SampleSource

    syms = ("SPY", "IBM", "BAC", "AIG")
    bars = SampleSource().fetch(list(syms), date(2013, 10, 4), date(2013, 10, 10), "minute")
    tag = _uid()
    return bars.with_columns(pl.col("symbol").replace_strict({s: f"{s}{tag}" for s in syms}))


@pytest.mark.timeout(600)
def test_minute_replay_through_alpaca_with_late_fills_places_one_entry_per_position(
        cfg, endpoints, make_topic, database_url, tmp_path):
    import polars as pl

    from awet_dagster.storage.bars import copy_upsert_bars
    from awet_dagster.storage.db import connect

    # One real minute day replayed; the days before it are history in the bars table (what
    # `awet live --replay --preload-days` loads), which every service warms up from. Replaying
    # all five days took ~5 minutes of lockstep round trips for the same case.
    everything = _minute_bars()
    last_day = everything["ts"].dt.date().max()
    bars = everything.filter(pl.col("ts").dt.date() == last_day)
    with connect(database_url) as conn:
        copy_upsert_bars(conn, everything.filter(pl.col("ts").dt.date() < last_day))
    t, ns = _topics(make_topic), f"ns-{_uid()}"
    with FakeAlpaca() as fake:
        live_cfg, broker = _alpaca_setup(cfg, fake, tmp_path)
        ov = _overrides(t, ns, tmp_path)
        ov["execution"]["broker"] = broker
        t0 = time.monotonic()
        venue, results = _replay_at_slow_venue(live_cfg, endpoints, ov, fake, bars, t["raw"], timeout_s=560)
        print(f"minute replay {bars.height} bars in {time.monotonic() - t0:.0f}s")
        assert all(r.error is None for r in results.values()), {n: r.error for n, r in results.items()}
        orders = _live_orders(database_url, ns)
        print(sorted((o["ts"].isoformat()[5:16], o["symbol"][:4], o["intent"], o["side"], o["qty"], o["status"])
                     for o in orders))
        assert sum(o["intent"] == "entry" for o in orders) >= 3
        _check_positions(orders, fake)
