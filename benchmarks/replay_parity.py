"""Replay parity: does a replay through the live loop place the backtest's orders, and how fast?

    python benchmarks/replay_parity.py [--quick] [--no-doc] [--runs N]

The measurement behind docs/live-vs-backtest.md (and the acceptance check of issue #19's item 5:
a free-running replay with the production partitioning places the lockstep replay's orders).
Baseline: ``run_backtest`` on the same bars, the orders every replay should place. Every run
starts the 7 loop services in this process (``live.loop_harness.start_loop``) on fresh topics,
a fresh namespace and freshly named symbols (the shared tables never mix two runs), on an
embedded Apache Kafka + PostgreSQL started for the benchmark, and replays the offline sample's
daily bars with ``replay_through_loop``:
- lockstep, one partition per topic (the parity tests' setting): the baseline of the bars/s ratio;
- lockstep, the production partitioning (``configs/base.yaml``: what ``awet live --replay`` uses);
- free-running, one partition; free-running, the production partitioning;
each with risk reading its input in arrival order and in event-time order (``risk.event_order``
"clock": the replay publishes a ``BarClock`` per bar time, what ``awet live --replay`` does).
Per run: orders placed, how many differ from the backtest's (missing + extra, compared as
(ts, symbol, side, qty, intent)), bars/s (bars / time until the loop drained), times risk's
own paper fills disagreed with execution's reports (``execution.shadow`` logs each; risk no
longer waits for those reports), drained or not. No model: alphas only.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import uuid
from datetime import date, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from awet_dagster.backtest.runner import run_backtest  # noqa: E402
from awet_dagster.sources.sample import SampleSource  # noqa: E402
from awet_dagster.storage.db import connect, upgrade  # noqa: E402
from benchmarks._common import (  # noqa: E402
    TOPIC_KEYS,
    loop_overrides,
    machine_info,
    machine_table,
    md_table,
    owned_infra,
    update_markdown_section,
)
from awet_kafka.settings import FAST_DEV_PRODUCER_SETTINGS, producer_config  # noqa: E402
from live.loop_harness import LoopTracker, replay_through_loop, start_loop  # noqa: E402
from awet_kafka.producer import EventProducer  # noqa: E402
from awet_kafka.admin import ensure_topics  # noqa: E402

SECTION = "replay_parity"
SYMBOLS = ("SPY", "AAPL", "IBM", "BAC", "QQQ", "AIG")
MODES = tuple((mode, production, order) for order in ("arrival", "clock")
              for mode, production in (("lockstep", False), ("lockstep", True), ("free-running", False),
                                       ("free-running", True)))


class _Disagreements(logging.Handler):
    """Counts the errors risk logs when its shadow of the paper venue and execution's reports
    disagree (a fill the venue did not make, a report from another venue)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR and ("the shadow filled" in msg or "reports fills from venue" in msg):
            self.n += 1


def _orders(database_url: str, ns: str) -> list[tuple]:
    with connect(database_url) as conn:
        rows = conn.execute("SELECT symbol, side, qty, payload FROM orders WHERE payload->>'ns' = %s",
                            (ns,)).fetchall()
    return sorted((datetime.fromisoformat(p["ts"]), s, side, float(q), p["intent"]) for s, side, q, p in rows)


def backtest_orders(bars: pl.DataFrame, cfg: Any) -> list[tuple]:
    orders = run_backtest(bars, None, None, None, cfg).orders
    return sorted((r["ts"], r["symbol"], r["side"], float(r["qty"]), r["intent"]) for r in orders.iter_rows(named=True))


def one_run(cfg: Any, ep: Any, bars: pl.DataFrame, *, lockstep: bool, production: bool, order: str,
            drain_timeout_s: float) -> dict[str, Any]:
    # Fresh symbol names: the tables shared by the runs (bars, risk state) never mix two runs.
    # The backtest runs on the same names (a name is also what the sector map looks up).
    renamed = bars.with_columns(pl.col("symbol") + f"X{uuid.uuid4().hex[:5].upper()}")
    want = backtest_orders(renamed, cfg)
    t = {k: f"parity-{k}-{uuid.uuid4().hex[:6]}" for k in TOPIC_KEYS}
    ensure_topics(ep.kafka_bootstrap, {name: cfg.kafka.topics[TOPIC_KEYS[k]].partitions if production else 1
                                       for k, name in t.items()})
    ns = f"parity-{uuid.uuid4().hex[:6]}"
    disagreements = _Disagreements()
    logging.getLogger().addHandler(disagreements)
    tracker = LoopTracker()
    overrides = loop_overrides(t, ns, "parity")
    overrides["risk"]["event_order"] = order
    loop = start_loop(cfg, ep, overrides=overrides, tracker=tracker, timeout_s=drain_timeout_s + 120, backoff_s=0.2)
    producer = EventProducer(producer_config(ep.kafka_bootstrap, producer=FAST_DEV_PRODUCER_SETTINGS))
    t0 = time.monotonic()
    try:
        published, drained = replay_through_loop(producer, renamed, tracker, topic=t["raw"], lockstep=lockstep,
                                                 clock_topic=t["clock"] if order == "clock" else None,
                                                 drain_timeout_s=drain_timeout_s)
        elapsed = time.monotonic() - t0
    finally:
        loop.stop()
        results = loop.join(60)
        logging.getLogger().removeHandler(disagreements)
    got = _orders(ep.database_url, ns)
    trouble = {n: r.error for n, r in results.items() if r.error or r.restarts}
    return {"orders": len(got), "backtest": len(want), "missing": len(set(want) - set(got)), "extra": len(set(got) - set(want)),
            "equal": got == want, "bars_s": published / elapsed if elapsed > 0 else 0.0, "drained": drained,
            "disagreements": disagreements.n, "trouble": trouble}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 symbols, half a year, one run per mode")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--runs", type=int, default=None, help="runs per mode (full 2, quick 1)")
    args = ap.parse_args(argv)
    runs = args.runs or (1 if args.quick else 2)
    symbols = SYMBOLS[:3] if args.quick else SYMBOLS
    end = date(2019, 6, 30) if args.quick else date(2019, 12, 31)
    drain_timeout_s = 120.0 if args.quick else 300.0
    logging.basicConfig(level=logging.ERROR)
    started = time.monotonic()
    info = machine_info(["confluent-kafka"])
    with owned_infra("kafka") as (cfg, ep):
        upgrade(ep.database_url)
        bars = SampleSource().fetch(list(symbols), date(2019, 1, 1), end, "daily")
        results: list[tuple[str, bool, str, int, dict[str, Any]]] = []
        for mode, production, order in MODES:
            for i in range(runs):
                r = one_run(cfg, ep, bars, lockstep=mode == "lockstep", production=production, order=order,
                            drain_timeout_s=drain_timeout_s)
                results.append((mode, production, order, i + 1, r))
                print(f"{mode:12s} partitions {'production (3)' if production else '1':15s} {order:8s} run {i + 1}: orders "
                      f"{r['orders']} (backtest {r['backtest']}), equal {r['equal']} (missing {r['missing']}, extra "
                      f"{r['extra']}), {r['bars_s']:.0f} bars/s, shadow/venue disagreements {r['disagreements']}, drained "
                      f"{r['drained']}" + (f", trouble {r['trouble']}" if r["trouble"] else ""), flush=True)
    # Baseline of the ratio: the median rate of lockstep with one partition (the first run also pays start-up).
    base = statistics.median(r["bars_s"] for mode, production, order, _, r in results
                             if mode == "lockstep" and not production and order == "arrival")
    rows = [[mode, "production (3)" if production else "1", order, i, f"{r['orders']} / {r['backtest']}",
             "**yes**" if r["equal"] else f"no ({r['missing']} missing, {r['extra']} extra)",
             f"{r['bars_s']:,.0f}", f"{r['bars_s'] / base:.2f}x" if base else "", r["disagreements"],
             "yes" if r["drained"] else "**no**"] for mode, production, order, i, r in results]
    wall = time.monotonic() - started
    body = "\n".join([
        "## Replay parity: a replay through the live loop vs the backtest (`benchmarks/replay_parity.py`)",
        "",
        f"Mode: {'quick' if args.quick else 'full'}; {len(symbols)} symbols of the offline sample "
        f"({', '.join(symbols)}), daily bars 2019-01-01..{end}, {bars.height} bars, no model (alphas only); "
        f"{runs} run(s) per mode; wall time {wall:.0f} s. Baseline: the orders of `run_backtest` on the same bars "
        f"(each run renames the symbols, the backtest too); bars/s ratio against the median of lockstep with one partition, arrival order. All 7 loop services in one process, "
        "embedded Apache Kafka + PostgreSQL started for the run. Goal (#19 item 5): free-running with the "
        "production partitioning places the backtest's orders. Why the rows differ: docs/live-vs-backtest.md.",
        "",
        md_table(["replay", "partitions", "risk input order", "run", "orders / backtest", "equal to the backtest", "bars/s",
                  "vs lockstep, 1 partition, arrival (median)", "shadow/venue disagreements", "drained"],
                 rows),
        "",
        "Machine:",
        "",
        machine_table(info),
    ])
    if not args.no_doc:
        print(f"wrote {update_markdown_section(SECTION, body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
