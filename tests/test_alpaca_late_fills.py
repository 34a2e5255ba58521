"""The Alpaca path under a real broker's timing: fills reported several bars late, in parts.

A venue model in this test plays the market on the fake Alpaca server: before each bar is
published it fills the orders that have been working for ``DELAY`` bars at that bar's open (a
first part, then the rest a bar later) and fires bracket legs the bar crosses. Alpaca reports
fills when the execution service looks, i.e. bars after the decision; the paper simulator fills
at the next bar. Found before: risk approved a second entry for a symbol while the first one's
fill was still unreported; the time exit then sold one entry's quantity and the rest stayed
open all day with live bracket legs.

A second venue model (LateReportingVenue) fills exactly like the paper simulator and only
reports late: a minute replay through it is compared entry by entry with the paper path.
"""
from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

import pytest

from live.loop_harness import LoopTracker, replay_through_loop, start_loop
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
MINUTES = 120  # regular-session minutes replayed (200 and the full 390 pass too, in ~115 s and ~155 s)


class SlowVenue:
    def __init__(self, fake: FakeAlpaca, delay: int = DELAY) -> None:
        self.fake, self.delay = fake, delay
        self.age: dict[str, int] = defaultdict(int)
        self.parts = 0
        self.log: list[tuple] = []  # (bar ts, symbol, client order id or leg type, qty filled): a failure's story

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
                self.log.append((bar["ts"], o["symbol"], o.get("client_order_id"), first))
                continue
            if o["status"] != "filled" or not o.get("legs"):
                continue
            tp, sl = o["legs"]
            long_ = o["side"] == "buy"
            if tp["status"] in ("new", "held"):
                limit, stop = float(tp["limit_price"]), float(sl["stop_price"])
                if (bar["high"] >= limit) if long_ else (bar["low"] <= limit):
                    fake.fill(tp["id"], limit)
                    self.log.append((bar["ts"], o["symbol"], f"{o.get('client_order_id')} tp leg", tp["qty"]))
                elif (bar["low"] <= stop) if long_ else (bar["high"] >= stop):
                    fake.fill(sl["id"], stop)
                    self.log.append((bar["ts"], o["symbol"], f"{o.get('client_order_id')} sl leg", sl["qty"]))


def _by_symbol(orders: list[dict]) -> dict[str, list[dict]]:
    """Each symbol's orders in decision order; on one bar the exit comes before the entry (the
    backtest's order: exits on bar t, then new entries on bar t)."""
    by_symbol: dict[str, list[dict]] = defaultdict(list)
    for o in sorted(orders, key=lambda o: (o["ts"], o["intent"] != "exit")):
        by_symbol[o["symbol"]].append(o)
    return by_symbol


def _check_positions(orders: list[dict], fake: FakeAlpaca) -> None:
    for symbol, seq in _by_symbol(orders).items():
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
        # Where each symbol ends at the venue: flat after its last exit; after a last entry (still
        # open: decided on the replay's last bars, or on the bar its previous exit filled on), that
        # entry's shares, or none when a bracket leg fired as the venue finished its orders.
        # (A re-entry on the bar of the previous exit, ts equal to the exit's, once read as
        # "shares left after the exit": the failure seen in ~3 of 12 CI runs.)
        for symbol, seq in _by_symbol(orders).items():
            last, held = seq[-1], fake.position_qty(symbol)
            expected = [0.0]
            if last["intent"] == "entry":
                expected.append(float(last["qty"]) * (1 if last["side"] == "buy" else -1))
            if not any(math.isclose(held, q, abs_tol=1e-9) for q in expected):
                # The whole story (pytest.fail, not an assertion message, which pytest truncates):
                # the loop's orders of the symbol, the venue's orders with their legs, and every
                # fill the venue model made.
                loop = "\n".join(f"  {o['ts'].date()} {o['intent']} {o['side']} {o['qty']} {o['status']} "
                                 f"{o.get('coid')} {o.get('reason')}" for o in seq)
                at_venue = "\n".join(
                    f"  {v.get('client_order_id')} {v['order_class']} {v['side']} {v['qty']} filled {v['filled_qty']} "
                    f"{v['status']} submitted {v['submitted_at']} filled_at {v['filled_at']} canceled "
                    f"{v['canceled_at']} legs {[(g['order_type'], g['status'], g['filled_qty']) for g in v.get('legs') or []]}"
                    for v in fake.orders.values() if v["symbol"] == symbol)
                fills = "\n".join(f"  {ts.date()} {who} {q}" for ts, sym, who, q in venue.log if sym == symbol)
                pytest.fail(f"{symbol}: {held} share(s) at the venue, expected one of {expected}\n"
                            f"loop orders:\n{loop}\nvenue orders:\n{at_venue}\nvenue fills:\n{fills}")
        working_legs = [(leg["symbol"], leg["status"]) for o in fake.orders.values() if o["status"] == "filled"
                        for leg in (o.get("legs") or []) if leg["status"] in ("new", "held", "accepted")
                        and fake.position_qty(leg["symbol"]) == 0]
        assert working_legs == [], working_legs


def _replay_at_slow_venue(live_cfg, endpoints, ov, fake, bars, raw_topic, *, timeout_s):
    """Replay ``bars`` in lockstep through the loop whose execution trades at ``fake``, the venue
    reporting each fill bars late; returns (the venue, the loop's results)."""
    ov["risk"]["fill_wait_s"] = 0.0  # the venue reports fills bars late by design
    tracker = LoopTracker()
    loop = start_loop(live_cfg, endpoints, overrides=ov, tracker=tracker, timeout_s=timeout_s, backoff_s=0.2)
    venue = SlowVenue(fake)
    prod = _producer(endpoints.kafka_bootstrap)
    try:
        for day in bars.partition_by("ts", maintain_order=True):
            venue.trade({r["symbol"]: r for r in day.iter_rows(named=True)})
            _, drained = replay_through_loop(prod, day, tracker, topic=raw_topic, lockstep=True, drain_timeout_s=60)
            assert drained, tracker.lagging()
        # The market goes on after the replay: orders placed on its last bars (an exit among them)
        # are still working at the venue, or half filled; let the venue finish them so the
        # checks below see where the positions end, not a snapshot of orders in flight.
        for _ in range(venue.delay + 1):
            venue.trade({r["symbol"]: r for r in day.iter_rows(named=True)})
    finally:
        prod.close()
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


class LateReportingVenue(SlowVenue):
    """Fills like the paper simulator (the whole order at the open of the bar after the
    decision, ``slippage_bps`` against us) but REPORTS the fill only ``delay`` bars later, with
    the fill's own time as ``filled_at``: Alpaca's reporting delay, and nothing else, between the
    two paths."""

    def __init__(self, fake: FakeAlpaca, delay: int = DELAY, slippage_bps: float = 5.0) -> None:
        super().__init__(fake, delay)
        self.slip = slippage_bps / 1e4
        self.done: dict[str, tuple[float, object]] = {}  # order id -> (price, fill time), unreported

    def trade(self, bars_by_symbol: dict[str, dict]) -> None:
        fake = self.fake
        for oid, o in list(fake.orders.items()):
            bar = bars_by_symbol.get(o["symbol"])
            if bar is None or o["status"] not in ("accepted", "new"):
                continue
            self.age[oid] += 1
            if self.age[oid] == 1:  # the bar after the decision: filled at its open
                sign = 1 if o["side"] == "buy" else -1
                self.done[oid] = (bar["open"] * (1 + sign * self.slip), bar["ts"])
            if self.age[oid] >= self.delay:
                price, at = self.done.pop(oid)
                fake.fill(oid, price, at=at)
                self.parts += 1
        super().trade({})  # bracket legs as the slow venue works them (none: no bar given)


def _replay_minute_day(cfg, endpoints, make_topic, database_url, tmp_path, *, delay: int | None):
    """The first MINUTES regular-session minutes of the minute sample's last day (everything
    before them preloaded as history, as `awet live --replay --preload-days` does) replayed in
    lockstep through the loop: the paper simulator (``delay`` None), or the fake Alpaca behind a
    LateReportingVenue reporting fills ``delay`` bars after the decision. Returns (entries
    without the symbols' tag, every order, the venue)."""
    import polars as pl

    from awet_dagster.storage.bars import copy_upsert_bars
    from awet_dagster.storage.db import connect

    everything = _minute_bars()
    last_day = everything["ts"].dt.date().max()
    start = datetime.combine(last_day, dtime(13, 30), tzinfo=UTC)
    with connect(database_url) as conn:
        copy_upsert_bars(conn, everything.filter(pl.col("ts") < start))
    bars = everything.filter((pl.col("ts") >= start) & (pl.col("ts") < start + timedelta(minutes=MINUTES)))
    t, ns = _topics(make_topic), f"ns-{_uid()}"
    home = tmp_path / ("paper" if delay is None else f"alpaca-{delay}")
    home.mkdir()
    ov = _overrides(t, ns, home)
    if delay is not None:
        with FakeAlpaca() as fake:
            live_cfg, broker = _alpaca_setup(cfg, fake, home)
            ov["execution"]["broker"] = broker
            venue = LateReportingVenue(fake, delay=delay, slippage_bps=cfg.execution.slippage_bps)
            # Reported with the next bar (as the simulator does): risk waits for them as for the
            # simulator's; reported bars late: deciding without them is the point.
            results = _replay(live_cfg, endpoints, ov, bars, t["raw"], venue, fill_wait_s=None if delay == 1 else 0.0)
    else:
        venue, results = None, _replay(cfg, endpoints, ov, bars, t["raw"], None, fill_wait_s=None)
    assert all(r.error is None for r in results.values()), {n: r.error for n, r in results.items()}
    orders = _live_orders(database_url, ns)
    entries = [(o["ts"], o["symbol"][:-6], o["side"], o["qty"]) for o in orders if o["intent"] == "entry"]
    return sorted(entries), orders, venue


def _replay(live_cfg, endpoints, ov, bars, raw_topic, venue, *, fill_wait_s):
    if fill_wait_s is not None:
        ov["risk"]["fill_wait_s"] = fill_wait_s
    tracker = LoopTracker()
    loop = start_loop(live_cfg, endpoints, overrides=ov, tracker=tracker, timeout_s=560, backoff_s=0.2)
    prod = _producer(endpoints.kafka_bootstrap)
    try:
        for minute in bars.partition_by("ts", maintain_order=True):
            if venue is not None:
                venue.trade({r["symbol"]: r for r in minute.iter_rows(named=True)})
            _, drained = replay_through_loop(prod, minute, tracker, topic=raw_topic, lockstep=True,
                                             drain_timeout_s=60)
            assert drained, tracker.lagging()
    finally:
        prod.close()
        loop.stop()
        results = loop.join(60)
    return results


@pytest.mark.timeout(900)
def test_minute_replay_through_alpaca_places_the_paper_paths_entries(
        cfg, endpoints, make_topic, database_url, tmp_path):
    """#17 acceptance, on the shipped minute sample. Fills reported with the next bar (what
    Alpaca's trade updates do within the second): exactly the paper path's entries (symbol, bar,
    side, quantity). Reported DELAY bars late: one entry per position, every max-hold exit on the
    paper path's bar (the fill is booked at the venue's fill time, not when it was seen) and the
    same entries until the first exit, whose fill a late report makes known only DELAY - 1 bars
    after the paper path knows it: a re-entry waits for it (the one-position rule, by design)."""
    paper, paper_orders, _ = _replay_minute_day(cfg, endpoints, make_topic, database_url, tmp_path, delay=None)

    def show(orders):
        return [(o["ts"].isoformat()[11:16], o["symbol"][:-6], o["intent"], o["side"], o["qty"]) for o in orders]

    prompt, prompt_orders, venue = _replay_minute_day(cfg, endpoints, make_topic, database_url, tmp_path, delay=1)
    assert len(paper) >= 6 and venue.parts >= len(paper), (show(paper_orders), venue.parts)
    assert prompt == paper, (show(paper_orders), show(prompt_orders))

    late, late_orders, venue = _replay_minute_day(cfg, endpoints, make_topic, database_url, tmp_path, delay=DELAY)
    _check_positions(late_orders, venue.fake)
    first_exit = min(o["ts"] for o in paper_orders if o["intent"] == "exit")
    assert [e for e in late if e[0] <= first_exit] == [e for e in paper if e[0] <= first_exit], (
        show(paper_orders), show(late_orders))
    opened = {e[:2] for e in paper if e[0] <= first_exit}

    def exits(orders):
        return sorted((o["ts"], o["symbol"][:-6]) for o in orders if o["intent"] == "exit"
                      and any(o["symbol"][:-6] == sym and ts < o["ts"] for ts, sym in opened))[:len(opened)]

    assert exits(late_orders) == exits(paper_orders), (show(paper_orders), show(late_orders))
