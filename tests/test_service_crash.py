"""Fault test on Kafka: each loop service is SIGKILLed between its produce and its offset commit,
then restarted: exactly one order per approved signal, nothing missing downstream.

The victim runs in its own process (``tests/service_child.py``, as `awet live --service` does),
the rest of the loop in this one. The victim kills itself with SIGKILL inside a checkpoint:
after its outputs were acknowledged by the broker and its own database writes were made,
before its input offsets are committed. Restarted in the same consumer group, it reads those
inputs again and produces their outputs again: every consumer downstream must take the
duplicates without a second effect. A control run without a crash gives what the
deterministic parts of the loop (features, alphas, predictions, scored signals: functions of
the bars alone) must produce; the trading parts depend on timing, so for them the invariants
are checked: every tradable signal decided once, one order per approval and per exit
request, no order without one, every order filled once.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from awet_dagster.contracts import AlphaSignal, ExitEvent, FeatureEvent, Prediction, RiskDecision, ScoredSignal
from awet_dagster.execution import client_order_id
from awet_dagster.infra import Endpoints
from awet_dagster.signals import signal_passed
from awet_dagster.storage.db import connect
from live.loop_harness import start_loop
from awet_kafka.publish import publish_acknowledged
from live.registry import LOOP_SERVICES
from tests.test_live_loop import _overrides, _producer, _sample_bars, _topics, _uid

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "service_child.py"
pytestmark = pytest.mark.slow


#: The output a victim must have produced in the checkpoint it dies in: the one whose
#: redelivery could have a second effect downstream (an approval, an order, an exit...).
CRASH_ON = {"features": "eng", "lean_alpha": "alpha", "inference": "pred", "signal": "scored",
            "risk": "approved", "execution": "orders"}


class _Child:
    def __init__(self, spec: Path, crash_at: int = 0, crash_topic: str = "") -> None:
        args = [sys.executable, str(CHILD), str(spec)] + (["--crash-at", str(crash_at)] if crash_at else []) + (
            ["--crash-topic", crash_topic] if crash_topic else [])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline()  # bounded by the test's timeout
        assert line.strip() == "READY", line + self.proc.stderr.read()

    def wait_killed(self, timeout_s: float) -> str:
        out, err = self.proc.communicate(timeout=timeout_s)
        assert self.proc.returncode == -signal.SIGKILL, (self.proc.returncode, out, err[-3000:])
        assert "CRASHING" in out
        return out

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0, (self.proc.returncode, out, err[-3000:])
        return out


def _plain(symbol: str) -> str:
    return symbol[:-6]  # _sample_bars tags each run's symbols with 6 characters


def _decoded(bootstrap: str, topic: str, model, timeout_s: float = 30.0):
    """Every message of ``topic`` (up to its high watermark, exact on Kafka), decoded."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{_uid()}", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in parts}
        todo = {p: hi for p, (lo, hi) in ends.items() if hi > lo}
        c.assign([TopicPartition(topic, p, ends[p][0]) for p in todo])
        out, deadline = [], time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            for m in c.consume(500, 0.2):
                if m.error() is not None:
                    continue
                out.append(model.model_validate_json(m.value()))
                if m.offset() + 1 >= todo.get(m.partition(), 0):
                    todo.pop(m.partition(), None)
        assert not todo, f"{topic}: not read to its end within {timeout_s}s"
        return out
    finally:
        c.close()


def _unique(events: list) -> list:
    """One event per event id; a duplicate (a redelivery's re-emission) must say the same as
    the first copy (its ``produced_at`` aside): a second, different answer is a second effect."""
    first: dict[str, dict] = {}
    for e in events:
        body = e.model_dump(exclude={"produced_at"})
        seen = first.setdefault(e.event_id, body)
        assert seen == body, (f"{type(e).__name__} {e.event_id} ({getattr(e, 'symbol', '')} {getattr(e, 'ts', '')}) "
                              "emitted twice with different content")
    by_id = {e.event_id: e for e in events}
    return list(by_id.values())


def _settled(database_url: str, symbols: list[str], n_bars: int, ns: str, corr: list[str], timeout_s: float) -> None:
    """Until every bar is persisted and scored and the risk decisions, orders and fills stop changing."""
    last, stable_since = None, None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with connect(database_url) as conn:
            now = tuple(conn.execute(q, a).fetchone()[0] for q, a in (
                ("SELECT count(*) FROM bars WHERE symbol = ANY(%s)", (symbols,)),
                ("SELECT count(DISTINCT (symbol, ts)) FROM signals WHERE symbol = ANY(%s)", (symbols,)),
                ("SELECT count(*) FROM orders WHERE payload->>'ns' = %s", (ns,)),
                ("SELECT count(*) FROM fills f JOIN orders o USING (client_order_id) WHERE o.payload->>'ns' = %s",
                 (ns,)),
                ("SELECT count(*) FROM audit_log WHERE actor = 'risk' AND correlation_id = ANY(%s)", (corr,)),
            ))
        if now[0] == now[1] == n_bars:
            if now == last and stable_since is not None and time.monotonic() - stable_since >= 3.0:
                return
            if now != last:
                stable_since = time.monotonic()
        last = now
        time.sleep(0.3)
    raise AssertionError(f"the loop did not settle within {timeout_s}s: bars/signals/orders/fills {last}, "
                         f"{n_bars} bars")


_STREAMS = {"eng": FeatureEvent, "alpha": AlphaSignal, "pred": Prediction}


def _streams_complete(bootstrap: str, t: dict, like: dict, timeout_s: float) -> None:
    """Until each deterministic stream holds as many distinct events as in ``like``."""
    deadline = time.monotonic() + timeout_s
    while True:
        have = {k: len({e.event_id for e in _decoded(bootstrap, t[k], model)}) for k, model in _STREAMS.items()}
        want = {k: len(like[k]) for k in _STREAMS}
        if all(have[k] >= want[k] for k in _STREAMS):
            return
        if time.monotonic() >= deadline:
            return  # the comparison that follows names what is missing
        time.sleep(1.0)


def _run(victim: str | None, champion: dict, endpoints: Endpoints, make_topic, database_url: str,
         tmp_path: Path, like: dict | None = None) -> dict:
    """One run of the loop over the bars, ``victim`` (a service) SIGKILLed once mid-way and
    restarted. ``like``: a control run whose deterministic streams this run must also complete
    before it is stopped (the database can settle while a restarted service still catches up
    on its input: the restarted inference's last 11 days of predictions on a loaded CI run)."""
    from awet_dagster.inference import ChampionSource
    from awet_dagster.model.registry import ModelRegistry
    from tests.conftest import config_for

    cfg = config_for(tmp_path / "home", **champion)
    bars = _sample_bars(start=date(2019, 1, 1), end=date(2019, 5, 31))
    symbols = bars["symbol"].unique().to_list()
    times = bars["ts"].unique().sort()
    cut = times[len(times) // 2]
    first, rest = bars.filter(bars["ts"] < cut), bars.filter(bars["ts"] >= cut)
    t, ns = _topics(make_topic), f"ns-{_uid()}"
    ov = _overrides(t, ns, tmp_path, source=ChampionSource(ModelRegistry(cfg), poll_s=3600))
    loop = start_loop(cfg, endpoints, names=[s for s in LOOP_SERVICES if s != victim], overrides=ov,
                      timeout_s=280, backoff_s=0.2)
    child = None
    outputs: list[str] = []
    from awet_dagster.streaming import bars_to_events

    try:
        prod = _producer(endpoints.kafka_bootstrap)
        if victim is not None:
            spec = tmp_path / f"{victim}.json"
            child_ov = {victim: {k: (str(v) if isinstance(v, Path) else v) for k, v in ov[victim].items()
                                 if k != "source"}}
            spec.write_text(json.dumps({"home": str(tmp_path / "child-home"), "database_url": database_url,
                                        "bootstrap": endpoints.kafka_bootstrap, "service": victim,
                                        "overrides": child_ov, "env": champion}))
            child = _Child(spec, crash_at=1, crash_topic=t[CRASH_ON[victim]] if CRASH_ON.get(victim) else "")
        def paced(part) -> None:
            # A day at a time, as a trading day would come: the loop keeps up, so orders are
            # decided, sent and filled while the bars go on (all at once, execution would see
            # every bar before the first approval and nothing could fill).
            for day in part.partition_by("ts", maintain_order=True):
                publish_acknowledged(prod, t["raw"], list(bars_to_events(day)), timeout_s=30)
                time.sleep(0.08)

        # The first half of the bars: the victim dies in its first checkpoint that produced.
        paced(first)
        if child is not None:
            outputs.append(child.wait_killed(timeout_s=120))
            child = _Child(spec)  # restarted: same group, same topics
        paced(rest)
        corr = [e.correlation_id for e in bars_to_events(bars)]
        _settled(database_url, symbols, bars.height, ns, corr, timeout_s=150)
        if like is not None:
            _streams_complete(endpoints.kafka_bootstrap, t, like, timeout_s=120)
    finally:
        results = {}
        if child is not None:
            out = child.stop()
            outputs.append(out)
            results.update(json.loads(out.split("RESULTS ", 1)[1]) if "RESULTS " in out else {})
        loop.stop()
        results.update({n: {"restarts": r.restarts, "error": str(r.error or ""), "processed": r.processed,
                            "produced": r.produced, "dead": r.dead_lettered,
                            "runs": [(x.processed, x.batches, x.consumer_errors, x.stopped_by) for x in r.stats]}
                        for n, r in loop.join(60).items()})
    bs = endpoints.kafka_bootstrap
    scored = _unique(_decoded(bs, t["scored"], ScoredSignal))
    out = {"bars": bars.height, "results": results, "last_ts": times[-1],
           "submits": Counter(line.split()[1] for o in outputs for line in o.splitlines() if line.startswith("SUBMIT ")),
           "eng": Counter((_plain(e.symbol), e.ts) for e in _unique(_decoded(bs, t["eng"], FeatureEvent))),
           "alpha": Counter((_plain(e.symbol), e.ts, e.alpha) for e in _unique(_decoded(bs, t["alpha"], AlphaSignal))),
           "pred": Counter((_plain(e.symbol), e.ts) for e in _unique(_decoded(bs, t["pred"], Prediction))),
           "scored": Counter((_plain(e.symbol), e.ts) for e in scored)}
    out["tradable"] = {e.event_id for e in scored if signal_passed(e)}
    decisions = _unique([*_decoded(bs, t["approved"], RiskDecision), *_decoded(bs, t["rejected"], RiskDecision)])
    out["decided"] = Counter(d.signal_event_id for d in decisions)
    out["approvals"] = {d.correlation_id for d in decisions if d.approved}
    out["exits"] = {e.event_id: e for e in _unique(_decoded(bs, t["exits"], ExitEvent))}
    with connect(database_url) as conn:
        out["orders"] = conn.execute(
            "SELECT client_order_id, correlation_id, qty, payload->>'intent', payload->>'ts' FROM orders "
            "WHERE payload->>'ns' = %s", (ns,)).fetchall()
        out["filled"] = dict(conn.execute(
            "SELECT f.client_order_id, sum(f.qty) FROM fills f JOIN orders o USING (client_order_id) "
            "WHERE o.payload->>'ns' = %s GROUP BY f.client_order_id", (ns,)).fetchall())
        out["db_bars"] = conn.execute("SELECT count(*), count(DISTINCT (symbol, ts)) FROM bars WHERE symbol = ANY(%s)",
                                      (symbols,)).fetchone()
        out["db_signals"] = conn.execute("SELECT count(*), count(DISTINCT (symbol, ts)) FROM signals "
                                         "WHERE symbol = ANY(%s)", (symbols,)).fetchone()
    return out


@pytest.fixture(scope="module")
def champion(database_url, tmp_path_factory) -> dict:
    """A small real champion (TFT, ONNX, MLflow) that every run of this module serves, so the
    inference service produces predictions and the signal waits for them."""
    from tests._model_data import register_sample_champion

    from tests.conftest import config_for

    tmp = tmp_path_factory.mktemp("champion")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
           "AWET__MLFLOW__MODEL_NAME": f"awet-crash-{_uid().lower()}"}
    cfg = config_for(tmp / "home", **env)
    with connect(database_url) as conn:
        register_sample_champion(cfg, conn, _sample_bars(start=date(2018, 1, 1), end=date(2018, 12, 31)), tmp,
                                 lookback=8, horizons=(1, 3))
    return env


@pytest.fixture(scope="module")
def control(champion, database_url, kafka_bootstrap, tmp_path_factory):
    """The same bars through the whole loop in this process, nothing killed."""
    import uuid

    from awet_kafka.admin import ensure_topics

    def make_topic(partitions: int = 1) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        ensure_topics(kafka_bootstrap, {name: partitions}, timeout_s=30)
        return name

    tmp = tmp_path_factory.mktemp("control")
    return _run(None, champion, Endpoints(database_url, kafka_bootstrap), make_topic, database_url, tmp)


def _check_trading(run: dict) -> None:
    # Every tradable signal decided exactly once (one decision event per signal; a redelivered
    # signal's decision re-emitted identically, see _unique).
    assert run["tradable"], "the period should have tradable signals"
    assert set(run["decided"]) == run["tradable"] and set(run["decided"].values()) == {1}
    # One entry order per approval and one exit order per exit request; nothing else.
    orders = run["orders"]
    assert len({o[0] for o in orders}) == len(orders)
    entries = {o[0] for o in orders if o[3] == "entry"}
    assert orders, "no orders"
    assert entries == {client_order_id(c, "entry") for c in run["approvals"]}
    exits = [o for o in orders if o[3] != "entry"]
    assert len(exits) == len(run["exits"]), (len(exits), len(run["exits"]))
    # Every order filled exactly once, its whole quantity (those of the last bar fill on a next bar that never comes).
    last = run["last_ts"].isoformat()
    for coid, _corr, qty, _intent, ts in orders:
        if not ts.startswith(last[:10]):
            assert run["filled"].get(coid) == qty, (coid, qty, run["filled"].get(coid))


@pytest.mark.timeout(300)
def test_control_run_trades_and_is_consistent(control):
    assert control["db_bars"] == (control["bars"], control["bars"])
    assert control["db_signals"] == (control["bars"], control["bars"])
    assert sum(control["scored"].values()) == control["bars"]
    assert sum(control["pred"].values()) > 0, "the champion must have served predictions"
    _check_trading(control)
    assert len(control["orders"]) >= 4


@pytest.mark.timeout(360)
@pytest.mark.parametrize("victim", LOOP_SERVICES)
def test_service_sigkilled_between_produce_and_commit_restarts_without_loss_or_duplicate_orders(
        victim, champion, control, database_url, kafka_bootstrap, make_topic, tmp_path):
    run = _run(victim, champion, Endpoints(database_url, kafka_bootstrap), make_topic, database_url, tmp_path,
               like=control)
    assert not any(r["error"] for r in run["results"].values()), run["results"]
    # Nothing missing, nothing twice: every bar persisted and scored once.
    assert run["db_bars"] == (run["bars"], run["bars"])
    assert run["db_signals"] == (run["bars"], run["bars"])
    # The deterministic streams are what the control run produced, one event per key.
    for topic in ("eng", "alpha", "pred", "scored"):
        assert run[topic] == control[topic], topic
    _check_trading(run)
    if victim == "execution":  # each order sent to the venue once, across the crash
        assert run["submits"] and set(run["submits"].values()) == {1}, run["submits"]
        assert set(run["submits"]) == {o[0] for o in run["orders"]}
