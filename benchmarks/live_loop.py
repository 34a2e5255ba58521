"""The whole live loop (persist_bars, features, lean_alpha, inference, signal, risk,
execution, exit_monitor in one process) on the real broker and PostgreSQL.

    python benchmarks/live_loop.py [--quick] [--no-doc]

Measured in one run, on the same servers:
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
- replay throughput: ``--replay-bars`` bars published at once, bars/s = bars / time until
  the loop has drained (every service consumed everything, LoopTracker); then the same
  replay with the loop split over two processes (``SplitLoop``: the trading half in a
  spawned child, its counts merged with ``live.runner.lagging_of``; ``--no-split`` skips it).
Servers: ``$DATABASE_URL`` / ``$KAFKA_BOOTSTRAP`` if set, else embedded ones started for
the run (as ``awet infra up``). No model is registered: inference idles (alphas only).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
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

from awet_dagster.config import load_config  # noqa: E402
from awet_dagster.sources.schema import BAR_SCHEMA  # noqa: E402
from awet_dagster.streaming import bars_to_events  # noqa: E402
from benchmarks._common import machine_info, machine_table, md_table, percentile, update_markdown_section  # noqa: E402
from live.bus import EventProducer  # noqa: E402
from live.kafka_settings import FAST_DEV_PRODUCER_SETTINGS, producer_config  # noqa: E402
from live.runner import (  # noqa: E402
    LOOP_SERVICES,
    LoopTracker,
    lagging_of,
    produced_of,
    replay_through_loop,
    start_loop,
)
from live.topics import ensure_topics  # noqa: E402

SECTION = "live_loop"
WINDOWS_PNG = Path(__file__).resolve().parents[1] / "docs" / "img" / "live_loop_windows.png"
#: Benchmark topic key -> the production topic whose partition count (``cfg.kafka.topics``) it gets.
TOPIC_KEYS = {"raw": "market.raw", "eng": "engineered", "alpha": "alpha.signals", "pred": "predictions",
              "scored": "signals.scored", "approved": "risk.approved", "rejected": "risk.rejected",
              "exits": "exec.exits", "orders": "exec.orders", "done": "exec.done"}


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
    return pl.DataFrame(rows, schema=BAR_SCHEMA)


def _overrides(t: dict[str, str], ns: str) -> dict[str, dict]:
    g = lambda: f"bench-{uuid.uuid4().hex[:8]}"  # noqa: E731
    return {
        "persist_bars": {"input_topic": t["raw"], "group": g()},
        "features": {"input_topic": t["raw"], "output_topic": t["eng"], "group": g()},
        "lean_alpha": {"input_topic": t["raw"], "output_topic": t["alpha"], "group": g()},
        "inference": {"input_topic": t["eng"], "output_topic": t["pred"], "group": g(), "poll_s": 3600},
        "signal": {"input_topic": t["raw"], "output_topic": t["scored"], "predictions_topic": t["pred"],
                   "alpha_topic": t["alpha"], "group": g()},
        "risk": {"input_topic": t["scored"], "approved_topic": t["approved"], "rejected_topic": t["rejected"],
                 "done_topic": t["done"], "orders_topic": t["orders"], "group": g(), "namespace": ns,
                 "bar_type": "daily"},
        "execution": {"market_topic": t["raw"], "approved_topic": t["approved"], "exits_topic": t["exits"],
                      "orders_topic": t["orders"], "done_topic": t["done"], "group": g(), "namespace": ns},
        "exit_monitor": {"input_topic": t["raw"], "output_topic": t["exits"], "done_topic": t["done"],
                         "orders_topic": t["orders"], "group": g(), "namespace": ns},
    }


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
        snap = {"python threads": py, "librdkafka threads": rdk, "broker (tansu)": self._proc(self._broker),
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
SPLIT_CHILD = ("risk", "execution", "exit_monitor")


def _child_main(conn: Any, cfg: Any, ep: Any, overrides: dict, names: tuple[str, ...], start_ms: int) -> None:
    """The second process of the split variant: runs ``names`` and answers "snap" (its
    tracker's counts) until "stop"; then sends what went wrong, if anything."""
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
    what replay_through_loop uses), over both processes' counts (``live.runner.lagging_of``)."""

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

    def wait_drained(self, timeout_s: float, poll_s: float = 0.005) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.is_alive():
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


def plot_windows(rows: list[dict], path: Path, title: str) -> None:
    """Latency per window (p50/p99) above the broker's and Python's CPU per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid = [(r["start"] + r["end"]) / 2 for r in rows]
    q = lambda xs, k: percentile(xs, k) if xs else float("nan")  # noqa: E731
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key, colour in (("signal", "tab:blue"), ("order", "tab:red")):
        ax1.plot(mid, [q(r[key], 50) for r in rows], "o-", color=colour, label=f"bar->{key} p50")
        ax1.plot(mid, [q(r[key], 99) for r in rows], "s--", color=colour, label=f"bar->{key} p99")
    ax1.axhline(50, color="grey", lw=0.8, ls=":", label="goal p99 50 ms")
    ax1.set_ylabel("latency ms")
    ax1.legend(fontsize=8, ncol=2)
    ax1.set_title(title, fontsize=9)
    for key, colour in (("broker (tansu)", "tab:purple"), ("python threads", "tab:green"),
                        ("librdkafka threads", "tab:orange"), ("postgres", "tab:brown")):
        ax2.plot(mid, [r["cpu"].get(key, float("nan")) for r in rows], "o-", color=colour, label=key)
    ax2.set_ylabel("% of one core")
    ax2.set_xlabel("seconds into the latency phase (constant bar rate)")
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--seconds", type=float, default=None, help="latency phase length")
    ap.add_argument("--replay-bars", type=int, default=None)
    ap.add_argument("--no-split", action="store_true",
                    help="skip the replay with the loop split over two processes")
    ap.add_argument("--fetch-wait-ms", type=int, default=None,
                    help="the services' fetch.wait.max.ms (default: the test profile's, configs/test.yaml)")
    ap.add_argument("--dump", type=Path, default=None,
                    help="write the latency phase's per-bar (send time s, bar->signal, bar->order, bar->approved ms) as JSON")
    args = ap.parse_args()
    seconds = args.seconds or (12.0 if args.quick else 60.0)
    replay_n = args.replay_bars or (6_000 if args.quick else 50_000)

    from awet_dagster.infra import infra_down, infra_up
    from awet_dagster.storage.bars import copy_upsert_bars
    from awet_dagster.storage.db import connect, upgrade

    home = Path(tempfile.mkdtemp(prefix="awet-bench-")) / "awet"
    base = load_config(environ={"AWET_ENV": "test", "AWET_HOME": str(home)})
    wall0 = time.monotonic()
    ep = infra_up(base)
    try:
        upgrade(ep.database_url)
        # Production risk limits (2% positions, $50k total / $10k per symbol exposure, CVaR
        # computed on every entry) so the number of open positions - what CVaR and the
        # books cost - is what a live account carries. Loosened only where synthetic bars
        # replayed at thousands per second would trip a wall-clock or loss rule at once:
        # order throttles per minute/day and cooldown, loss limits, the CVaR cap itself
        # (still computed), and the signal filters that need real volume/hours/confidence.
        if args.fetch_wait_ms is not None:
            base = base.model_copy(update={"kafka": base.kafka.model_copy(update={
                "consumer": {**base.kafka.consumer, "fetch.wait.max.ms": args.fetch_wait_ms}})})
        cfg = base.model_copy(update={
            "signals": base.signals.model_copy(update={"min_confidence": 0.0, "min_avg_volume_10d": 0.0,
                                                       "enforce_market_hours": False}),
            "risk": base.risk.model_copy(update={"cvar_limit": 1.0, "cooldown_s": 0,
                                                 "max_orders_per_minute": 1_000_000,
                                                 "max_orders_per_symbol_day": 1_000_000, "sector_cap_pct": 1.0,
                                                 "daily_loss_limit": 1.0, "kill_switch_loss": 1.0,
                                                 "max_drawdown": 1.0}),
        })
        rt = raw_round_trip(ep.kafka_bootstrap, 300 if args.quick else 1000, args.rate)
        results = {}
        for phase in ("latency", "throughput") + (() if args.no_split else ("split",)):
            t = {k: f"bench-{k}-{uuid.uuid4().hex[:6]}" for k in TOPIC_KEYS}
            # Latency: partitioned as in production (configs/base.yaml): on tansu a fetch costs
            # CPU in proportion to the record batches of its partition, so partitions matter
            # (benchmarks/broker_fetch_cost.py). Throughput: one partition per topic. With all
            # bars published at once, signals.scored's 3 partitions drift apart in time and the
            # risk service's per-bar wait for earlier fills (risk.fill_wait_s, 2 s) runs out
            # again and again (measured: 165 bars/s, not drained in 300 s).
            ensure_topics(ep.kafka_bootstrap, {name: cfg.kafka.topics[TOPIC_KEYS[k]].partitions
                                               if phase == "latency" else 1 for k, name in t.items()})
            syms = [f"S{phase[0].upper()}{i:03d}" for i in range(args.symbols)]
            t0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
            warm = 40  # history in the bars table: SMAs, alphas, CVaR warm up from it
            n_live = max(2, int(seconds * args.rate / len(syms)) + 1) if phase == "latency" else \
                max(2, replay_n // len(syms))
            bars = synthetic_bars(syms, t0, warm + n_live, seed=11, swing=0.1)
            hist = bars.filter(pl.col("ts") < t0 + timedelta(days=warm))
            live = bars.filter(pl.col("ts") >= t0 + timedelta(days=warm))
            with connect(ep.database_url) as conn, conn.transaction():
                copy_upsert_bars(conn, hist)
            ns = f"bench-{uuid.uuid4().hex[:6]}"
            since = datetime.now(UTC)
            split = SplitLoop(cfg, ep, _overrides(t, ns)) if phase == "split" else None
            if split is not None:
                tracker: Any = split  # the tracker interface over both processes
            else:
                tracker = LoopTracker()
                loop = start_loop(cfg, ep, overrides=_overrides(t, ns), tracker=tracker, timeout_s=600)
            prod = EventProducer(producer_config(ep.kafka_bootstrap, producer=FAST_DEV_PRODUCER_SETTINGS))
            try:
                # The first day of bars warms every service up (and waits for the groups to
                # join) before anything is measured.
                first = live.head(len(syms))
                replay_through_loop(prod, first, tracker, topic=t["raw"], drain_timeout_s=120)
                rest = live.slice(len(syms))
                if phase == "latency":
                    sent: dict[str, float] = {}
                    tracker.add_external(t["raw"], rest.height)
                    meter = CpuMeter(ep.started)
                    laps: list[tuple[float, dict]] = []  # (end s into the phase, CPU % in the window)
                    t_first = time.time()
                    due = time.perf_counter()
                    # Six windows of equal length; the last one ends when the last bar is sent.
                    window_s = rest.height / args.rate / 6
                    next_lap = due + window_s
                    for ev in bars_to_events(rest):
                        due += 1.0 / args.rate
                        wait = due - time.perf_counter()
                        if wait > 0:
                            time.sleep(wait)
                        if time.perf_counter() >= next_lap and len(laps) < 5:
                            laps.append((time.time() - t_first, meter.lap()))
                            next_lap += window_s
                        sent[ev.correlation_id] = time.time()  # the clock of the brokers' CreateTime
                        prod.send(t["raw"], ev)
                        prod.raw.poll(0)
                    prod.flush(30)
                    laps.append((time.time() - t_first, meter.lap()))
                    drained = tracker.wait_drained(120)
                    cpu = meter.stop()
                    # Read after the phase: a live reader of each topic would compete with the
                    # loop for the 2 cores (on tansu every consumer of a topic costs broker CPU).
                    # When = the output's CreateTime, stamped by the emitting service's producer.
                    out = {k: create_times(ep.kafka_bootstrap, t[k]) for k in ("orders", "approved", "scored")}
                    lat = {k: [(got[c] - s0) * 1000 for c, s0 in sent.items() if c in got] for k, got in out.items()}
                    lat_o, lat_a, lat_s = lat["orders"], lat["approved"], lat["scored"]
                    results["latency"] = {"bars": rest.height, "orders": tracker.produced.get(t["orders"], 0),
                                          "order": lat_o, "approved": lat_a,
                                          "signal": lat_s, "drained": drained, "cpu": cpu,
                                          "windows": window_rows(sent, out, laps, t_first)}
                    if args.dump:
                        args.dump.write_text(json.dumps([
                            [round(s0 - t_first, 4),
                             round((out["scored"][c] - s0) * 1000, 2) if c in out["scored"] else None,
                             round((out["orders"][c] - s0) * 1000, 2) if c in out["orders"] else None,
                             round((out["approved"][c] - s0) * 1000, 2) if c in out["approved"] else None]
                            for c, s0 in sent.items()]))
                else:
                    meter = CpuMeter(ep.started, split.process.pid if split is not None else None)
                    start = time.perf_counter()
                    n, drained = replay_through_loop(prod, rest, tracker, topic=t["raw"], drain_timeout_s=300)
                    el = time.perf_counter() - start
                    results[phase] = {"bars": n, "seconds": el, "bars_per_s": n / el, "drained": drained,
                                      "orders": tracker.produced.get(t["orders"], 0), "cpu": meter.stop(),
                                      "threads": meter.threads}
            finally:
                if split is not None:
                    joined = split.stop()
                else:
                    loop.stop()
                    joined = loop.join(60)
            from awet_dagster.live_summary import loop_summary

            with connect(ep.database_url) as conn:
                summ = loop_summary(conn, since=since, initial_equity=cfg.risk.initial_equity, symbols=syms,
                                    namespace=ns)
            results.setdefault("risk", {})[phase] = summ
            print(f"{phase}: signals {summ['signals']} ({summ['signals_directional']} directional), approved "
                  f"{summ['approved']}, rejected {dict(list(summ['rejected_by_reason'].items())[:4])}, "
                  f"orders {summ['orders']}", file=sys.stderr)
            # A service that failed or restarted would make the figures meaningless: say so.
            trouble = {n: f"{r.restarts} restart(s), last error: {r.error}" for n, r in joined.items()
                       if r.restarts or r.error}
            if split is not None:
                trouble.update(split._child_trouble)
            results.setdefault("trouble", {})[phase] = trouble
            for name, what in trouble.items():
                print(f"WARNING {phase}: {name}: {what}", file=sys.stderr)
    finally:
        infra_down(base)
        shutil.rmtree(home.parent, ignore_errors=True)

    lat, thr = results["latency"], results["throughput"]
    p = lambda xs, q: percentile(xs, q) if xs else float("nan")  # noqa: E731
    base50, base99 = p(rt, 50), p(rt, 99)
    rows = []
    for label, xs in (("raw broker round trip (produce -> consume)", rt),
                      ("bar -> ScoredSignal (1 hop + signal)", lat["signal"]),
                      ("bar -> approved RiskDecision (2 hops + signal, risk)", lat["approved"]),
                      ("bar -> OrderEvent (3 hops + signal, risk, execution)", lat["order"])):
        # Ratio to the raw round trip of the same run (the floor one broker hop sets).
        rows.append([label, len(xs), f"{p(xs, 50):.1f}", f"{p(xs, 99):.1f}",
                     f"{p(xs, 50) / base50:.1f}x / {p(xs, 99) / base99:.1f}x"])
    body = "\n".join([
        "## Live loop (`benchmarks/live_loop.py`)",
        "",
        f"All 8 services in one process (`awet live`; the 5 readers of the bars share one fetch of them, "
        f"`kafka.shared_fetch`); {args.symbols} synthetic symbols, daily bars, published at "
        f"{args.rate:.0f} bars/s for {lat['bars']} bars ({lat['orders']} orders); no model (alphas only); filters loosened so bars "
        f"become orders. Latency: the output's CreateTime (stamped by the emitting service) - the bar's "
        f"publish time, topics read after the phase. Embedded tansu (memory) + embedded PostgreSQL. "
        f"{'`--quick`' if args.quick else 'full'} run.",
        "",
        md_table(["path", "n", "p50 ms", "p99 ms", "p50 / p99 vs raw round trip"], rows),
        "",
        "Topics: the latency phase uses the production partitioning (configs/base.yaml: 3 partitions for "
        "market.raw, engineered, signals.scored...); the throughput phase one partition per topic (with all "
        "bars at once, signals.scored's partitions drift apart in time and the risk service's bounded wait "
        "for earlier fills, risk.fill_wait_s, runs out again and again: 165 bars/s measured, an open issue).",
        "",
        f"Replay throughput (all bars at once, until drained): {thr['bars']} bars in {thr['seconds']:.1f} s = "
        f"**{thr['bars_per_s']:,.0f} bars/s** (orders emitted: {thr['orders']}; drained: {thr['drained']}). CPU "
        f"meanwhile (% of one core): " + ", ".join(f"{k} {v:.0f}%" for k, v in thr["cpu"].items()) + "; the "
        f"Python threads by service: " + ", ".join(f"{k} {v:.0f}%" for k, v in thr["threads"].items() if v >= 0.5)
        + ".",
        "",
        *([f"The same replay with the loop split over two processes (each with its own GIL, as `awet live "
           f"--service` deployments are; this process: {', '.join(n for n in LOOP_SERVICES if n not in SPLIT_CHILD)}; "
           f"a second one: {', '.join(SPLIT_CHILD)}): {sp['bars']} bars in {sp['seconds']:.1f} s = "
           f"**{sp['bars_per_s']:,.0f} bars/s**, {sp['bars_per_s'] / thr['bars_per_s']:.2f}x one process (orders "
           f"emitted: {sp['orders']}; drained: {sp['drained']}). CPU meanwhile (% of one core): "
           + ", ".join(f"{k} {v:.0f}%" for k, v in sp["cpu"].items()) + ".", ""]
          if (sp := results.get("split")) else []),
        f"Over the latency phase, window by window (bars sent in the window at the same constant rate; CPU "
        f"while it ran, % of one core). On tansu with memory storage a fetch costs the broker CPU in "
        f"proportion to the record batches already in the partition (`benchmarks/broker_fetch_cost.py`), "
        f"and its logs cannot be trimmed (DeleteRecords is not implemented in tansu 0.6), so at a constant "
        f"load the broker's CPU and the latency grow with the time the topics have been written; plot: "
        f"`docs/img/{WINDOWS_PNG.name}`.",
        "",
        md_table(["window s", "bars", "bar->signal p50 / p99 ms", "bar->order n", "bar->order p50 / p99 ms",
                  "broker CPU", "python CPU"],
                 [[f"{w['start']:.0f}-{w['end']:.0f}", w["bars"], f"{p(w['signal'], 50):.0f} / {p(w['signal'], 99):.0f}",
                   len(w["order"]), f"{p(w['order'], 50):.0f} / {p(w['order'], 99):.0f}" if w["order"] else "-",
                   f"{w['cpu'].get('broker (tansu)', float('nan')):.0f}%",
                   f"{w['cpu'].get('python threads', float('nan')):.0f}%"] for w in lat["windows"]]),
        "",
        "CPU while the latency phase ran (% of one core; the machine has "
        f"{os.cpu_count()}): " + ", ".join(f"{k} {v:.0f}%" for k, v in lat["cpu"].items()) + ".",
        "",
        "Goals: bar-to-order p99 <= 50 ms at 200 bars/s; replay >= 5,000 bars/s.",
        "",
        "Service restarts/errors during the run: " + (
            "; ".join(f"{ph}: {n}: {w}" for ph, t in results["trouble"].items() for n, w in t.items()) or "none") + ".",
        "",
        machine_table(machine_info(["confluent-kafka", "psycopg", "polars"])),
    ])
    if not args.no_doc:
        update_markdown_section(SECTION, body)
        plot_windows(lat["windows"], WINDOWS_PNG,
                     f"live loop, {args.rate:.0f} bars/s over {args.symbols} symbols, embedded tansu + PostgreSQL "
                     f"({'--quick' if args.quick else 'full'} run)")
    print(body)
    print(f"total {time.monotonic() - wall0:.1f}s")
    best = max(thr["bars_per_s"], results.get("split", {}).get("bars_per_s", 0.0))
    print(f"bar->order p99 {p(lat['order'], 99):.1f} ms; replay {thr['bars_per_s']:,.0f} bars/s"
          + (f" (one process), {results['split']['bars_per_s']:,.0f} bars/s (two processes)" if "split" in results
             else "") + f"; best {best:,.0f} bars/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
