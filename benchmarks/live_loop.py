"""The whole live loop (persist_bars, features, lean_alpha, inference, signal, risk,
execution in one process) on the real broker and PostgreSQL.

    python benchmarks/live_loop.py [--quick] [--no-doc] [--broker kafka|tansu]

Size (over 400 lines): one script, each phase a function with its own measurement and its table
row; split into modules it would be a package nobody imports.

Broker: an embedded Apache Kafka (KRaft, one node) started for the run; ``--broker tansu``
also runs every phase on the embedded fallback, tansu, after it, for a side-by-side table.
Every server is owned by the run: stopped at its end, on SIGTERM/SIGINT, and by a guard
process if the run is killed (``awet_dagster.infra.guard``).

Measured in one run per broker, on the same servers:
- raw broker round trip: produce -> consume of one small message at a time (the floor
  every hop of the loop pays), p50/p99;
- bar-to-order latency: synthetic daily bars of ``--symbols`` symbols published at
  ``--rate`` bars/s; latency = the CreateTime of the OrderEvent for a bar's correlation id
  on exec.orders (stamped by the execution service's producer when it emits the order,
  after the submission) - the bar's publish time (same wall clock). Also bar-to-signal
  (signals.scored) and bar-to-approval (risk.approved). The topics are read AFTER the
  phase: live readers would compete with the loop for the 2 cores (on tansu each
  consumer of a topic costs broker CPU per record batch); a reader would add one broker
  hop (the raw round trip below). Risk limits are production ones except the
  wall-clock/loss rules synthetic bars would trip; signal filters are loosened so that
  many bars become orders; the path is the production one (Kafka hops, the risk audit
  before publishing, the order row BEFORE submission, the fill); the CPU each part used
  meanwhile is reported (this process's Python vs librdkafka threads, broker, PostgreSQL);
- sustained load: ``--rate`` bars/s over ``--symbols`` symbols for ``--seconds`` (full run:
  600 s), bar->order p50/p99 per window of ``--window-s`` (full run: one minute);
- minute-boundary bursts: the bars of 500 and of 3,000 symbols published at once (as at a
  minute close), ``--bursts`` times each (the loop drained in between); per burst, the time
  from its first bar sent to its last order's CreateTime;
- replay throughput: ``--replay-bars`` bars published at once, bars/s = bars / time until
  the loop has drained (every service consumed everything, LoopTracker); then the same
  replay with the loop split over two processes (``SplitLoop``: the trading half in a
  spawned child, its counts merged with ``live.loop_harness.lagging_of``; ``--no-split`` skips it).
Beside every figure: the order rate of the workload (orders / bars: the synthetic price
cycles make a large share of bars trade, far more than a real day). No model is
registered: inference idles (alphas only).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402

from awet_dagster.sources.schema import BAR_SCHEMA  # noqa: E402
from awet_dagster.streaming import bars_to_events  # noqa: E402
from benchmarks._common import (  # noqa: E402
    TOPIC_KEYS,
    loop_overrides,
    machine_info,
    machine_table,
    md_table,
    percentile,
    update_markdown_section,
)
from awet_kafka.producer import EventProducer  # noqa: E402
from awet_kafka.settings import FAST_DEV_PRODUCER_SETTINGS, producer_config  # noqa: E402
from live.loop_harness import lagging_of, LoopTracker, produced_of, replay_through_loop, start_loop
from live.registry import LOOP_SERVICES
from awet_kafka.admin import ensure_topics  # noqa: E402

SECTION = "live_loop"
WINDOWS_PNG = Path(__file__).resolve().parents[1] / "docs" / "img" / "live_loop_windows.png"

def synthetic_bars(symbols: list[str], start: datetime, n: int, seed: int = 7, swing: float = 0.0,
                   period: float = 10.0) -> pl.DataFrame:
    """``n`` daily bars per symbol (random walk; consecutive days), replay order (ts, symbol).

    ``swing`` adds a price cycle of that log amplitude and ``period`` bars (random phase per
    symbol): the Lean alphas (EMA cross, MACD, RSI) then fire every few bars, so a short
    run still sends many bars all the way to an order."""
    rng = np.random.default_rng(seed)
    rets = rng.normal(0, 0.02, size=(n, len(symbols)))
    cycle = swing * np.sin(2 * np.pi * np.arange(n)[:, None] / period + rng.uniform(0, 2 * np.pi, len(symbols)))
    close = 100 * np.exp(np.cumsum(rets, axis=0) + cycle)
    open_ = np.vstack([close[:1], close[:-1]])
    rows = {k: [] for k in BAR_SCHEMA.names()}
    for i in range(n):
        ts = start + timedelta(days=i)
        for j, s in enumerate(symbols):
            o, c = float(open_[i, j]), float(close[i, j])
            rows["symbol"].append(s)
            rows["bar_type"].append("daily")
            rows["ts"].append(ts)
            rows["open"].append(o)
            rows["high"].append(max(o, c) * 1.0005)
            rows["low"].append(min(o, c) * 0.9995)
            rows["close"].append(c)
            rows["volume"].append(100_000.0)
            rows["bid"].append(None)
            rows["ask"].append(None)
            rows["source"].append("synthetic")
            rows["adj_factor"].append(1.0)  # unadjusted: no corporate actions in synthetic bars
            rows["split_factor"].append(1.0)
    return pl.DataFrame(rows, schema=BAR_SCHEMA)


class _Recv:
    """Reads a topic from the beginning in a thread; first receive time per correlation id."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.first: dict[str, float] = {}
        self.errors: list[str] = []
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                            "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        self._c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._main, daemon=True)
        self._t.start()

    def _main(self) -> None:
        # poll() returns as soon as one message is there; consume(n, timeout>0) would wait
        # for n messages or the whole timeout and add up to that timeout to every latency.
        while not self._stop.is_set():
            try:
                first = self._c.poll(0.05)
                if first is None:
                    continue
                now = time.perf_counter()
                for m in [first, *self._c.consume(500, 0)]:
                    if m.error() is None:
                        cid = dict(m.headers() or ()).get("correlation_id", b"").decode()
                        self.first.setdefault(cid, now)
                    else:
                        self.errors.append(str(m.error()))
            except Exception as exc:  # noqa: BLE001 - a dead reader would report "no orders"
                self.errors.append(repr(exc))
                time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._t.join(5)
        self._c.close()


class CpuMeter:
    """CPU seconds used by this process (Python threads vs librdkafka's own threads), the
    embedded broker and PostgreSQL (its processes) between ``start`` and ``stop``: where a
    saturated 2-core machine spends its time."""

    def __init__(self, started: dict, second_process: int | None = None) -> None:
        import psutil

        self._ps = psutil
        self._broker = started.get("broker", {}).get("pid")
        self._pg = started.get("postgres", {}).get("pid")
        self._second = second_process  # the split variant's other loop process
        self._t0 = self._snap()
        self._threads0 = dict(self._threads)
        self._w0 = time.monotonic()
        self._lap = (self._t0, self._w0)

    def _proc(self, pid: int | None, children: bool = False) -> float:
        if not pid:
            return float("nan")
        try:
            procs = [self._ps.Process(pid)]
            if children:
                procs += procs[0].children(recursive=True)
            return sum(sum(p.cpu_times()[:2]) for p in procs)
        except self._ps.Error:
            return float("nan")

    def _snap(self) -> dict[str, float]:
        rdk = py = 0.0
        tck = os.sysconf("SC_CLK_TCK")
        self._threads: dict[int, float] = {}  # Python threads' CPU seconds by native id
        for tid in os.listdir("/proc/self/task"):
            try:
                stat = open(f"/proc/self/task/{tid}/stat").read()  # noqa: SIM115 - procfs, tiny
            except OSError:
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            cpu = (int(fields[11]) + int(fields[12])) / tck
            if name.startswith("rdk:"):
                rdk += cpu
            else:
                py += cpu
                self._threads[int(tid)] = cpu
        snap = {"python threads": py, "librdkafka threads": rdk, "broker": self._proc(self._broker),
                "postgres": self._proc(self._pg, children=True)}
        if self._second:
            snap["2nd loop process (all threads)"] = self._proc(self._second)
        return snap

    def lap(self) -> dict[str, float]:
        """{what: % of one core} since the previous ``lap`` (or the start)."""
        (t0, w0), t1, w1 = self._lap, self._snap(), time.monotonic()
        self._lap = (t1, w1)
        return {k: 100 * (t1[k] - v) / max(w1 - w0, 1e-9) for k, v in t0.items()}

    def stop(self) -> dict[str, float]:
        """{what: % of one core} over the metered interval."""
        t1, wall = self._snap(), time.monotonic() - self._w0
        self.threads = self._by_thread(wall)
        return {k: 100 * (t1[k] - v) / wall for k, v in self._t0.items()}

    def _by_thread(self, wall: float) -> dict[str, float]:
        """This process's Python threads (named by the runner: svc-<service>, tail-<service>,
        shared-fetch-...) -> % of one core over the interval; threads gone by then: "other"."""
        names = {t.native_id: t.name for t in threading.enumerate()}
        out: dict[str, float] = {}
        for tid, cpu in self._threads.items():
            name = names.get(tid, "other")
            name = "shared fetch" if name.startswith("shared-fetch") else name
            out[name] = out.get(name, 0.0) + 100 * (cpu - self._threads0.get(tid, 0.0)) / wall
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


#: The split variant's second process runs the trading half of the loop; the first keeps the
#: readers of the bars (persist_bars, features, lean_alpha, signal: one shared fetch) and
#: inference. As with ``awet live --service``, each process has its own GIL.
SPLIT_CHILD = ("risk", "execution")


def _child_main(conn: Any, cfg: Any, ep: Any, overrides: dict, names: tuple[str, ...], start_ms: int) -> None:
    """The second process of the split variant: runs ``names`` and answers "snap" (its
    tracker's counts) until "stop"; then sends what went wrong, if anything."""
    from awet_dagster.infra.guard import die_with_parent

    die_with_parent()  # never outlives the benchmark (a killed benchmark's daemon child would)
    tracker = LoopTracker()
    tracker.start_ms = start_ms  # side readers count what was produced since the parent's start
    loop = start_loop(cfg, ep, names=names, overrides=overrides, tracker=tracker, timeout_s=600)
    try:
        while loop.alive:
            if conn.poll(0.5):
                msg = conn.recv()
                if msg == "stop":
                    break
                conn.send(tracker.snapshot())
    finally:
        loop.stop()
        joined = loop.join(60)
        conn.send({"trouble": {n: f"{r.restarts} restart(s), last error: {r.error}" for n, r in joined.items()
                               if r.restarts or r.error}})


class SplitLoop:
    """The loop over two processes: this one runs every service but ``SPLIT_CHILD``, a spawned
    child runs those. It is the loop's tracker too (add_external / wait_drained / produced,
    what replay_through_loop uses), over both processes' counts (``live.loop_harness.lagging_of``)."""

    def __init__(self, cfg: Any, ep: Any, overrides: dict) -> None:
        import multiprocessing as mp

        self.local = LoopTracker()
        self._conn, child_conn = mp.Pipe()
        self.process = mp.get_context("spawn").Process(
            target=_child_main, args=(child_conn, cfg, ep, overrides, SPLIT_CHILD, self.local.start_ms),
            name="awet-loop-2", daemon=True)
        self.process.start()
        names = tuple(n for n in LOOP_SERVICES if n not in SPLIT_CHILD)
        self.loop = start_loop(cfg, ep, names=names, overrides=overrides, tracker=self.local, timeout_s=600)
        self._last: dict = {"inflight": {}, "consumed": {}, "produced": {}, "tails": {}}
        self._child_trouble: dict[str, str] = {}

    # -- the tracker interface replay_through_loop uses
    def add_external(self, topic: str, n: int) -> None:
        self.local.add_external(topic, n)

    def _receive(self) -> bool:
        """Take the child's next message; True when it was its last one (what went wrong)."""
        got = self._conn.recv()
        if "trouble" in got:
            self._child_trouble = got["trouble"]
            return True
        self._last = got
        return False

    def _snapshots(self) -> list[dict]:
        if self.process.is_alive():
            self._conn.send("snap")
            if self._conn.poll(30):
                self._receive()
        return [self.local.snapshot(), self._last]

    def wait_drained(self, timeout_s: float, poll_s: float = 0.005, stop_event: Any = None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.is_alive() or (stop_event is not None and stop_event.is_set()):
                return False
            if not lagging_of(self._snapshots()):
                return True
            time.sleep(poll_s)
        return False

    @property
    def produced(self) -> dict[str, int]:
        return produced_of(self._snapshots())

    def stop(self) -> dict[str, Any]:
        """Stop both halves; {service: result} of this one plus the child's troubles."""
        self.loop.stop()
        if self.process.is_alive():
            self._conn.send("stop")
            while self._conn.poll(60) and not self._receive():
                pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
        return self.loop.join(60)


def window_rows(sent: dict[str, float], out: dict[str, dict[str, float]], laps: list[tuple[float, dict]],
                t_first: float) -> list[dict]:
    """Per metering window of the latency phase: the bars SENT in it, their bar->signal and
    bar->order latency, and the CPU the broker and this process used meanwhile. On tansu
    (memory storage) a fetch costs CPU in proportion to the record batches already in the
    partition (benchmarks/broker_fetch_cost.py): at a constant rate the windows show whether
    latency follows the broker's growing cost rather than the load."""
    rows, start = [], 0.0
    for end, cpu in laps:
        cids = [c for c, s0 in sent.items() if start <= s0 - t_first < end]
        sig = [(out["scored"][c] - sent[c]) * 1000 for c in cids if c in out["scored"]]
        order = [(out["orders"][c] - sent[c]) * 1000 for c in cids if c in out["orders"]]
        rows.append({"start": start, "end": end, "bars": len(cids), "signal": sig, "order": order, "cpu": cpu})
        start = end
    return rows


def plot_windows(by_broker: dict[str, list[dict]], path: Path, title: str) -> None:
    """Per broker: bar->order p50/p99 per window above the broker's and Python's CPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = lambda xs, k: percentile(xs, k) if xs else float("nan")  # noqa: E731
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    colours = {"kafka": "tab:blue", "tansu": "tab:red"}
    for broker, rows in by_broker.items():
        mid = [(r["start"] + r["end"]) / 2 for r in rows]
        c = colours.get(broker, "tab:grey")
        ax1.plot(mid, [q(r["order"], 50) for r in rows], "o-", color=c, label=f"{broker}: bar->order p50")
        ax1.plot(mid, [q(r["order"], 99) for r in rows], "s--", color=c, label=f"{broker}: bar->order p99")
        ax2.plot(mid, [r["cpu"].get("broker", float("nan")) for r in rows], "o-", color=c, label=f"{broker}: broker")
        ax2.plot(mid, [r["cpu"].get("python threads", float("nan")) for r in rows], "^:", color=c,
                 label=f"{broker}: python threads")
    ax1.axhline(50, color="grey", lw=0.8, ls=":", label="goal p99 50 ms")
    ax1.set_ylabel("latency ms")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8, ncol=2)
    ax1.set_title(title, fontsize=9)
    ax2.set_ylabel("% of one core")
    ax2.set_xlabel("seconds into the sustained phase (constant bar rate)")
    ax2.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def create_times(bootstrap: str, topic: str, idle_s: float = 1.0, timeout_s: float = 60.0) -> dict[str, float]:
    """{correlation id: first CreateTime (s since the epoch)} of a whole topic, read from the
    beginning until ``idle_s`` without a message (tansu's high watermark is not to be trusted)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    first: dict[str, float] = {}
    deadline, last = time.monotonic() + timeout_s, time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - last < idle_s:
            for m in c.consume(1000, 0.1):
                if m.error() is not None:
                    continue
                last = time.monotonic()
                cid = dict(m.headers() or ()).get("correlation_id", b"").decode()
                first.setdefault(cid, m.timestamp()[1] / 1000)
    finally:
        c.close()
    return first


def all_create_times(bootstrap: str, topic: str, idle_s: float = 1.0, timeout_s: float = 60.0) -> list[float]:
    """CreateTime (s since the epoch) of every message of a whole topic."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out: list[float] = []
    deadline, last = time.monotonic() + timeout_s, time.monotonic()
    try:
        while time.monotonic() < deadline and time.monotonic() - last < idle_s:
            for m in c.consume(1000, 0.1):
                if m.error() is None:
                    last = time.monotonic()
                    out.append(m.timestamp()[1] / 1000)
    finally:
        c.close()
    return sorted(out)


def raw_round_trip(bootstrap: str, n: int, rate: float) -> list[float]:
    topic = f"bench-rt-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: 1})
    prod = EventProducer(producer_config(bootstrap, producer=FAST_DEV_PRODUCER_SETTINGS))
    recv = _Recv(bootstrap, topic)
    time.sleep(1.0)
    bars = synthetic_bars(["RT"], datetime(2024, 1, 2, 14, 30, tzinfo=UTC), n)
    sent: dict[str, float] = {}
    for ev in bars_to_events(bars):
        sent[ev.correlation_id] = time.perf_counter()
        prod.send(topic, ev)
        prod.raw.poll(0)
        time.sleep(1.0 / rate)
    prod.flush(10)
    time.sleep(0.5)
    recv.close()
    return [(recv.first[c] - t0) * 1000 for c, t0 in sent.items() if c in recv.first]



# --------------------------------------------------------------------------- phases
def loosened(base: Any, fetch_wait_ms: int | None) -> Any:
    """Production risk limits (2% positions, $50k total / $10k per symbol exposure, CVaR
    computed on every entry) so the number of open positions - what CVaR and the books
    cost - is what a live account carries. Loosened only where synthetic bars replayed at
    thousands per second would trip a wall-clock or loss rule at once: order throttles per
    minute/day and cooldown, loss limits, the CVaR cap itself (still computed), and the
    signal filters that need real volume/hours/confidence."""
    if fetch_wait_ms is not None:
        base = base.model_copy(update={"kafka": base.kafka.model_copy(update={
            "consumer": {**base.kafka.consumer, "fetch.wait.max.ms": fetch_wait_ms}})})
    return base.model_copy(update={
        "signals": base.signals.model_copy(update={"min_confidence": 0.0, "min_avg_volume_10d": 0.0,
                                                   "enforce_market_hours": False}),
        "risk": base.risk.model_copy(update={"cvar_limit": 1.0, "cooldown_s": 0,
                                             "max_orders_per_minute": 1_000_000,
                                             "max_orders_per_symbol_day": 1_000_000, "sector_cap_pct": 1.0,
                                             "daily_loss_limit": 1.0, "kill_switch_loss": 1.0,
                                             "max_drawdown": 1.0}),
    })


class Phase:
    """One measured phase: fresh topics, symbols with 40 days of history in the bars table,
    the loop started on them (in this process, or split over two), a producer; ``finish``
    stops the loop and returns the risk summary and what went wrong."""

    WARM_DAYS = 40

    def __init__(self, cfg: Any, ep: Any, prefix: str, n_symbols: int, n_live: int, *,
                 production_partitions: bool, split: bool = False) -> None:
        from awet_dagster.storage.bars import copy_upsert_bars
        from awet_dagster.storage.db import connect

        self.cfg, self.ep = cfg, ep
        self.t = {k: f"bench-{k}-{uuid.uuid4().hex[:6]}" for k in TOPIC_KEYS}
        # Production partitioning (configs/base.yaml) for the latency phases; the replay phases
        # one partition per topic, as in the earlier runs this doc compares with (then risk's
        # bounded wait for earlier fills ran out again and again with several partitions,
        # measured on tansu: 165 bars/s; risk now computes the paper fills and never waits, and
        # benchmarks/replay_parity.py measures the production partitioning).
        ensure_topics(ep.kafka_bootstrap, {name: cfg.kafka.topics[TOPIC_KEYS[k]].partitions
                                           if production_partitions else 1 for k, name in self.t.items()})
        self.syms = [f"{prefix}{i:04d}" for i in range(n_symbols)]
        t0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
        bars = synthetic_bars(self.syms, t0, self.WARM_DAYS + n_live, seed=11, swing=0.1)
        hist = bars.filter(pl.col("ts") < t0 + timedelta(days=self.WARM_DAYS))
        self.live = bars.filter(pl.col("ts") >= t0 + timedelta(days=self.WARM_DAYS))
        with connect(ep.database_url) as conn, conn.transaction():
            copy_upsert_bars(conn, hist)
        self.ns = f"bench-{uuid.uuid4().hex[:6]}"
        self.since = datetime.now(UTC)
        self.split = SplitLoop(cfg, ep, loop_overrides(self.t, self.ns, "bench")) if split else None
        if self.split is not None:
            self.tracker: Any = self.split  # the tracker interface over both processes
        else:
            self.tracker = LoopTracker()
            self.loop = start_loop(cfg, ep, overrides=loop_overrides(self.t, self.ns, "bench"), tracker=self.tracker,
                                   timeout_s=3600)
        self.prod = EventProducer(producer_config(ep.kafka_bootstrap, producer=FAST_DEV_PRODUCER_SETTINGS))

    def days(self) -> list[pl.DataFrame]:
        return self.live.partition_by("ts", maintain_order=True)

    def warm_up(self) -> pl.DataFrame:
        """The first day of bars through every service (history reads, group joins), unmeasured;
        returns the rest."""
        first = self.live.head(len(self.syms))
        replay_through_loop(self.prod, first, self.tracker, topic=self.t["raw"], drain_timeout_s=300)
        return self.live.slice(len(self.syms))

    def finish(self) -> tuple[dict, dict[str, str]]:
        from awet_dagster.live_summary import loop_summary
        from awet_dagster.storage.db import connect

        if self.split is not None:
            joined = self.split.stop()
        else:
            self.loop.stop()
            joined = self.loop.join(60)
        with connect(self.ep.database_url) as conn:
            summ = loop_summary(conn, since=self.since, initial_equity=self.cfg.risk.initial_equity,
                                symbols=self.syms, namespace=self.ns)
        trouble = {n: f"{r.restarts} restart(s), last error: {r.error}" for n, r in joined.items()
                   if r.restarts or r.error}
        if self.split is not None:
            trouble.update(self.split._child_trouble)
        print(f"  {self.syms[0][:-4]}: signals {summ['signals']} ({summ['signals_directional']} directional), "
              f"approved {summ['approved']}, rejected {dict(list(summ['rejected_by_reason'].items())[:4])}, "
              f"orders {summ['orders']}" + "".join(f"; WARNING {n}: {w}" for n, w in trouble.items()),
              file=sys.stderr, flush=True)
        return summ, trouble


def sustained_phase(cfg: Any, ep: Any, args: Any) -> dict:
    n_live = max(2, int(args.seconds * args.rate / args.symbols) + 1)
    ph = Phase(cfg, ep, "SL", args.symbols, n_live, production_partitions=True)
    try:
        rest = ph.warm_up()
        sent: dict[str, float] = {}
        ph.tracker.add_external(ph.t["raw"], rest.height)
        meter = CpuMeter(ep.started)
        laps: list[tuple[float, dict]] = []  # (end s into the phase, CPU % in the window)
        n_windows = max(1, round(rest.height / args.rate / args.window_s))
        window_s = rest.height / args.rate / n_windows  # equal windows; the last ends at the last bar
        t_first = time.time()
        due = time.perf_counter()
        next_lap = due + window_s
        for ev in bars_to_events(rest):
            due += 1.0 / args.rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if time.perf_counter() >= next_lap and len(laps) < n_windows - 1:
                laps.append((time.time() - t_first, meter.lap()))
                next_lap += window_s
            sent[ev.correlation_id] = time.time()  # the clock of the brokers' CreateTime
            ph.prod.send(ph.t["raw"], ev)
            ph.prod.raw.poll(0)
        ph.prod.flush(30)
        laps.append((time.time() - t_first, meter.lap()))
        drained = ph.tracker.wait_drained(300)
        cpu = meter.stop()
        # Read after the phase: a live reader of each topic would compete with the loop for
        # the 2 cores. When = the output's CreateTime, stamped by the emitting service.
        out = {k: create_times(ep.kafka_bootstrap, ph.t[k]) for k in ("orders", "approved", "scored")}
    finally:
        summ, trouble = ph.finish()
    lat = {k: [(got[c] - s0) * 1000 for c, s0 in sent.items() if c in got] for k, got in out.items()}
    if args.dump:
        args.dump.write_text(json.dumps([
            [round(s0 - t_first, 4), round((out["scored"][c] - s0) * 1000, 2) if c in out["scored"] else None,
             round((out["orders"][c] - s0) * 1000, 2) if c in out["orders"] else None] for c, s0 in sent.items()]))
    return {"bars": rest.height, "orders": len(out["orders"]), "order": lat["orders"], "approved": lat["approved"],
            "signal": lat["scored"], "drained": drained, "cpu": cpu, "window_s": window_s,
            "windows": window_rows(sent, out, laps, t_first), "risk": summ, "trouble": trouble}


def burst_phase(cfg: Any, ep: Any, size: int, n_bursts: int) -> dict:
    """``n_bursts`` minute closes of ``size`` symbols: all their bars published at once, the
    loop drained before the next; per burst, first bar sent -> the last order it caused
    (entries carry the bar's correlation id, exits the position's: so every order created
    between this burst and the next is counted, the loop being drained in between)."""
    ph = Phase(cfg, ep, f"B{size}x", size, n_bursts + 1, production_partitions=True)
    sent: list[tuple[float, float]] = []  # (first bar sent, loop drained) epoch seconds
    try:
        ph.warm_up()
        meter = CpuMeter(ep.started)
        for day in ph.days()[1:n_bursts + 1]:
            events = list(bars_to_events(day))
            ph.tracker.add_external(ph.t["raw"], len(events))
            t0 = time.time()
            for ev in events:
                ph.prod.send(ph.t["raw"], ev)
                ph.prod.raw.poll(0)
            ph.prod.flush(30)
            if not ph.tracker.wait_drained(300):
                raise RuntimeError(f"burst of {size}: not drained in 300 s: {ph.tracker.lagging()[:5]}")
            sent.append((t0, time.time()))
        cpu = meter.stop()
        threads = meter.threads
        orders = all_create_times(ep.kafka_bootstrap, ph.t["orders"])
    finally:
        summ, trouble = ph.finish()
    print(f"  burst {size}: drain ms {[round((d - t) * 1000) for t, d in sent]}; threads "
          + ", ".join(f"{k} {v:.0f}%" for k, v in threads.items() if v >= 1), file=sys.stderr, flush=True)
    per = []
    for t0, t_drained in sent:
        times = [o for o in orders if t0 <= o <= t_drained]
        per.append({"orders": len(times), "last_order_ms": (max(times) - t0) * 1000 if times else None,
                    "drain_ms": (t_drained - t0) * 1000})
    with_orders = [b["last_order_ms"] for b in per if b["last_order_ms"] is not None]
    return {"size": size, "bursts": len(per), "bars": size * len(per), "orders": sum(b["orders"] for b in per),
            "last_order": with_orders, "drain": [b["drain_ms"] for b in per], "cpu": cpu, "threads": threads,
            "risk": summ, "trouble": trouble}


def replay_phase(cfg: Any, ep: Any, n_bars: int, symbols: int, split: bool) -> dict:
    ph = Phase(cfg, ep, "RP" if not split else "RS", symbols, max(2, n_bars // symbols) + 1,
               production_partitions=False, split=split)
    try:
        rest = ph.warm_up()
        meter = CpuMeter(ep.started, ph.split.process.pid if ph.split is not None else None)
        start = time.perf_counter()
        n, drained = replay_through_loop(ph.prod, rest, ph.tracker, topic=ph.t["raw"], drain_timeout_s=600)
        el = time.perf_counter() - start
        cpu = meter.stop()
        orders = ph.tracker.produced.get(ph.t["orders"], 0)
    finally:
        summ, trouble = ph.finish()
    return {"bars": n, "seconds": el, "bars_per_s": n / el, "drained": drained, "orders": orders, "cpu": cpu,
            "threads": meter.threads, "risk": summ, "trouble": trouble}


def run_broker(kind: str, args: Any, say) -> dict:
    from awet_dagster.storage.db import upgrade
    from benchmarks._common import owned_infra

    t0 = time.monotonic()
    with owned_infra(kind) as (base, ep):
        upgrade(ep.database_url)
        cfg = loosened(base, args.fetch_wait_ms)
        res: dict[str, Any] = {"broker": ep.broker_kind}
        say(f"[{kind}] raw round trip")
        res["rt"] = raw_round_trip(ep.kafka_bootstrap, 300 if args.quick else 1000, args.rate)
        say(f"[{kind}] sustained: {args.rate:.0f} bars/s over {args.symbols} symbols for {args.seconds:.0f} s")
        res["sustained"] = sustained_phase(cfg, ep, args)
        res["bursts"] = {}
        for size in args.burst_sizes:
            n = args.bursts
            say(f"[{kind}] bursts: {n} x {size} symbols")
            res["bursts"][size] = burst_phase(cfg, ep, size, n)
        say(f"[{kind}] replay: {args.replay_bars} bars at once")
        res["throughput"] = replay_phase(cfg, ep, args.replay_bars, args.symbols, split=False)
        if not args.no_split:
            say(f"[{kind}] replay over two processes")
            res["split"] = replay_phase(cfg, ep, args.replay_bars, args.symbols, split=True)
    res["wall_s"] = time.monotonic() - t0
    return res


# --------------------------------------------------------------------------- report
def _q(xs: list[float], k: float) -> float:
    return percentile(xs, k) if xs else float("nan")


def _rate(orders: int, bars: int) -> str:
    return f"{orders:,} orders / {bars:,} bars = {100 * orders / max(bars, 1):.0f}%"


def headline(res: dict) -> dict[str, Any]:
    sus = res["sustained"]
    wins = [w for w in sus["windows"] if w["order"]]
    w99 = [_q(w["order"], 99) for w in wins]
    out = {"rt": (_q(res["rt"], 50), _q(res["rt"], 99)), "order": (_q(sus["order"], 50), _q(sus["order"], 99)),
           "worst_window_p99": max(w99) if w99 else float("nan"),
           "trend": (w99[-1] / w99[0]) if len(w99) >= 2 and w99[0] > 0 else float("nan"),
           "replay": res["throughput"]["bars_per_s"], "split": res.get("split", {}).get("bars_per_s")}
    for size, b in res["bursts"].items():
        out[f"burst{size}"] = (_q(b["last_order"], 50), _q(b["last_order"], 99))
    return out


def render(results: dict[str, dict], args: Any, wall: float) -> str:
    from awet_dagster.infra.kafka_broker import pinned_version

    names = {"kafka": f"Kafka {pinned_version()}", "tansu": "tansu 0.6 (memory)"}
    brokers = list(results)
    cols = [names.get(b, b) for b in brokers]
    heads = {b: headline(r) for b, r in results.items()}
    f1 = lambda v: f"{v:,.1f}" if v == v else "-"  # noqa: E731 - nan -> "-"
    rows = [
        ["raw broker round trip p50 / p99 ms", "(the floor of one hop)",
         *[f"{f1(heads[b]['rt'][0])} / {f1(heads[b]['rt'][1])}" for b in brokers]],
        [f"sustained {args.rate:.0f} bars/s, {args.symbols} symbols, {results[brokers[0]]['sustained']['bars']:,} bars: "
         "bar->order p50 / p99 ms", "p99 <= 50",
         *[f"{f1(heads[b]['order'][0])} / {f1(heads[b]['order'][1])}" for b in brokers]],
        ["... worst window's p99 ms; last window / first window p99", "<= 50; <= 1.2x",
         *[f"{f1(heads[b]['worst_window_p99'])}; {heads[b]['trend']:.2f}x" for b in brokers]],
        ["... order rate", "", *[_rate(results[b]['sustained']['orders'], results[b]['sustained']['bars'])
                                 for b in brokers]],
    ]
    for size in args.burst_sizes:
        goal = "<= 250" if size <= 500 else "<= 1,000"
        rows.append([f"burst of {size:,} symbols -> its last order, p50 / p99 ms "
                     f"({results[brokers[0]]['bursts'][size]['bursts']} bursts)", goal,
                     *[f"{f1(heads[b][f'burst{size}'][0])} / {f1(heads[b][f'burst{size}'][1])}" for b in brokers]])
        rows.append(["... loop drained after the burst, p50 ms; order rate", "",
                     *[f"{f1(_q(results[b]['bursts'][size]['drain'], 50))}; "
                       + _rate(results[b]['bursts'][size]['orders'], results[b]['bursts'][size]['bars'])
                       for b in brokers]])
    rows.append([f"replay of {results[brokers[0]]['throughput']['bars']:,} bars at once, one process: bars/s",
                 ">= 5,000", *[f"**{heads[b]['replay']:,.0f}**" for b in brokers]])
    if not args.no_split:
        rows.append(["... the loop split over two processes: bars/s", ">= 5,000",
                     *[f"{heads[b]['split']:,.0f}" for b in brokers]])
    rows.append(["... order rate (one process)", "", *[_rate(results[b]['throughput']['orders'],
                                                             results[b]['throughput']['bars']) for b in brokers]])
    lines = [
        "## Live loop (`benchmarks/live_loop.py`)",
        "",
        f"All 8 services in one process (`awet live`; the readers of the bars share one fetch of them, "
        f"`kafka.shared_fetch`), synthetic daily bars, no model (alphas only), filters loosened so that many bars "
        f"become orders (the order rate is given beside each figure), production risk limits otherwise. Latency: "
        f"the output's CreateTime (stamped by the emitting service) - the bar's publish time, topics read after "
        f"the phase. Each broker embedded and started for the run, one after the other, with an embedded "
        f"PostgreSQL: {', '.join(cols)}. {'`--quick`' if args.quick else 'Full'} run"
        + ("" if args.quick or (args.seconds, args.bursts) == (600.0, 20)
           else f" with a shorter sustained phase ({args.seconds:.0f} s) and {args.bursts} bursts per size")
        + f", {wall / 60:.1f} min.",
        "",
        md_table(["figure", "goal", *cols], rows),
    ]
    for b in brokers:
        sus = results[b]["sustained"]
        lines += [
            "",
            f"**{names.get(b, b)}, sustained phase by window** of {sus['window_s']:.0f} s (bars sent in the window; "
            f"CPU while it ran, % of one core):",
            "",
            md_table(["window s", "bars", "bar->signal p50 / p99 ms", "orders", "bar->order p50 / p99 ms",
                      "broker CPU", "python CPU"],
                     [[f"{w['start']:.0f}-{w['end']:.0f}", w["bars"],
                       f"{_q(w['signal'], 50):.0f} / {_q(w['signal'], 99):.0f}", len(w["order"]),
                       f"{_q(w['order'], 50):.0f} / {_q(w['order'], 99):.0f}" if w["order"] else "-",
                       f"{w['cpu'].get('broker', float('nan')):.0f}%",
                       f"{w['cpu'].get('python threads', float('nan')):.0f}%"] for w in sus["windows"]]),
            "CPU over the replay, by process (% of one core): "
            + ", ".join(f"{k} {v:.0f}%" for k, v in results[b]["throughput"]["cpu"].items())
            + "; this process's Python threads by service: "
            + ", ".join(f"{k} {v:.0f}%" for k, v in results[b]["throughput"]["threads"].items() if v >= 0.5) + ".",
        ]
        if "split" in results[b]:
            sp = results[b]["split"]
            lines.append(f"Two processes (this one: {', '.join(n for n in LOOP_SERVICES if n not in SPLIT_CHILD)}; "
                         f"a second one: {', '.join(SPLIT_CHILD)}), CPU by process: "
                         + ", ".join(f"{k} {v:.0f}%" for k, v in sp["cpu"].items()) + ".")
    trouble = [f"{b}/{ph}: {n}: {w}" for b, r in results.items()
               for ph, t in [("sustained", r["sustained"]["trouble"]),
                             *[(f"burst {s}", x["trouble"]) for s, x in r["bursts"].items()],
                             ("replay", r["throughput"]["trouble"]),
                             *([("split", r["split"]["trouble"])] if "split" in r else [])]
               for n, w in t.items()]
    lines += [
        "",
        f"Plot of the sustained phase by window: `docs/img/{WINDOWS_PNG.name}`. "
        "Service restarts/errors during the run: " + ("; ".join(trouble) or "none") + ".",
        "",
        machine_table(machine_info(["confluent-kafka", "psycopg", "polars"])),
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short phases, Kafka only unless --broker tansu (< 60 s)")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--broker", choices=["kafka", "tansu"], default="kafka",
                    help="kafka (default); tansu: also run every phase on the embedded fallback, same run")
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=None, help="sustained phase length (full 600, quick 12)")
    ap.add_argument("--window-s", type=float, default=None, help="latency window (full 60, quick 3)")
    ap.add_argument("--bursts", type=int, default=None, help="bursts per size (full 20, quick 4)")
    ap.add_argument("--burst-sizes", default=None, help="symbols per burst (full 500,3000; quick 500)")
    ap.add_argument("--replay-bars", type=int, default=None)
    ap.add_argument("--no-split", action="store_true",
                    help="skip the replay with the loop split over two processes (always skipped by --quick)")
    ap.add_argument("--fetch-wait-ms", type=int, default=None,
                    help="the services' fetch.wait.max.ms (default: the test profile's, configs/test.yaml)")
    ap.add_argument("--dump", type=Path, default=None,
                    help="write the sustained phase's per-bar (send s, bar->signal, bar->order ms) as JSON")
    args = ap.parse_args()
    args.seconds = args.seconds or (12.0 if args.quick else 600.0)
    args.window_s = args.window_s or (3.0 if args.quick else 60.0)
    args.bursts = args.bursts or (4 if args.quick else 20)
    args.burst_sizes = [int(x) for x in (args.burst_sizes or ("500" if args.quick else "500,3000")).split(",") if x]
    args.replay_bars = args.replay_bars or (4_000 if args.quick else 50_000)
    args.no_split = args.no_split or args.quick
    brokers = ("kafka", "tansu") if args.broker == "tansu" else ("kafka",)
    wall0 = time.monotonic()
    say = lambda msg: print(f"{time.monotonic() - wall0:6.1f}s {msg}", file=sys.stderr, flush=True)  # noqa: E731
    results = {b: run_broker(b, args, say) for b in brokers}
    wall = time.monotonic() - wall0
    body = render(results, args, wall)
    if not args.no_doc:
        update_markdown_section(SECTION, body)
        plot_windows({b: r["sustained"]["windows"] for b, r in results.items()}, WINDOWS_PNG,
                     f"live loop, {args.rate:.0f} bars/s over {args.symbols} symbols "
                     f"({'--quick' if args.quick else 'full'} run)")
    print(body)
    heads = []
    for b in brokers:
        h = headline(results[b])
        heads.append(f"{b}: bar->order p50 {h['order'][0]:.0f} / p99 {h['order'][1]:.0f} ms (worst window p99 "
                     f"{h['worst_window_p99']:.0f}, last/first {h['trend']:.2f}x); "
                     + "; ".join(f"burst {s} p99 {h[f'burst{s}'][1]:.0f} ms" for s in args.burst_sizes)
                     + f"; replay {h['replay']:,.0f} bars/s" + (f", split {h['split']:,.0f}" if h.get("split") else ""))
    print(f"live_loop ({wall:.0f} s): " + " || ".join(heads))  # the headline figures, last
    return 0


if __name__ == "__main__":
    sys.exit(main())
