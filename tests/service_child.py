"""Subprocess side of the per-service crash test (run as a script, not collected by pytest).

    python tests/service_child.py SPEC.json [--crash-at N] [--crash-topic TOPIC]

SPEC (JSON): {"home", "database_url", "bootstrap", "service", "overrides": {service: {...}},
"env": {...}} (extra configuration environment, e.g. the MLflow store of the champion).
Runs that one loop service as `awet live --service` does (its own process, its own group)
until SIGTERM. With ``--crash-at N`` the process SIGKILLs itself in the N-th checkpoint that
produced outputs (to ``--crash-topic`` when given, e.g. risk's approvals; persist_bars,
which produces none: that wrote rows): after the flush (every output acknowledged by the broker) and after the
service's own ``before_commit`` writes, before its input offsets are committed
(``BusService._commit``) - the window in which a crash leaves outputs delivered and inputs
not yet marked consumed. Prints ``READY`` once started, ``CRASHING <checkpoint>`` just
before the kill and, for execution, ``SUBMIT <client order id>`` for every order it sends.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from awet_dagster.config import load_config  # noqa: E402
from awet_dagster.infra import Endpoints  # noqa: E402
from awet_kafka.bus import BusService  # noqa: E402
from live.loop_harness import start_loop  # noqa: E402


def main() -> int:
    from awet_dagster.infra.guard import die_with_parent

    die_with_parent()  # SIGTERM (a clean stop, below) if the test process dies
    ap = argparse.ArgumentParser()
    ap.add_argument("spec", type=Path)
    ap.add_argument("--crash-at", type=int, default=0)
    ap.add_argument("--crash-topic", default="")
    args = ap.parse_args()
    spec = json.loads(args.spec.read_text())
    service = spec["service"]
    cfg = load_config(environ={"AWET_ENV": "test", "AWET_HOME": spec["home"], **spec.get("env", {})})
    ep = Endpoints(spec["database_url"], spec["bootstrap"])
    overrides = {service: dict(spec["overrides"][service])}
    if service == "execution":  # every order really sent to the (paper) venue, for the test to count
        overrides[service]["on_submit"] = lambda req, _order: print(f"SUBMIT {req.client_order_id}", flush=True)
    if service == "inference":  # the champion of the configured MLflow store
        from awet_dagster.inference import ChampionSource
        from awet_dagster.model.registry import ModelRegistry

        overrides[service]["source"] = ChampionSource(ModelRegistry(cfg), poll_s=3600)
    if args.crash_at:
        from awet_kafka.producer import EventProducer

        seen = {"n": 0, "produced": 0}
        sent_to: set[str] = set()
        original = BusService._commit
        original_produce = EventProducer._produce

        def recording_produce(self, topic, *a, **kw):  # type: ignore[no-untyped-def]
            sent_to.add(topic)
            return original_produce(self, topic, *a, **kw)

        def crashing_commit(self, offsets, stats):  # type: ignore[no-untyped-def]
            produced, seen["produced"] = stats.produced - seen["produced"], stats.produced
            hit = args.crash_topic in sent_to if args.crash_topic else (produced > 0 or service == "persist_bars")
            sent_to.clear()
            if self.name == service and offsets and hit:
                seen["n"] += 1
                if seen["n"] >= args.crash_at:
                    print(f"CRASHING {seen['n']}", flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
            return original(self, offsets, stats)

        BusService._commit = crashing_commit  # type: ignore[method-assign]
        EventProducer._produce = recording_produce  # type: ignore[method-assign]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    loop = start_loop(cfg, ep, names=[service], overrides=overrides, timeout_s=600)
    print("READY", flush=True)
    while loop.alive and not stop.wait(0.2):
        pass
    loop.stop()
    results = loop.join(60)
    print("RESULTS " + json.dumps({n: {"restarts": r.restarts, "error": str(r.error or "")}
                                    for n, r in results.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
