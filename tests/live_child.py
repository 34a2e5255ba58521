"""Subprocess side of the execution crash test (run as a script, not collected by pytest).

    python tests/live_child.py --home H --database-url D --bootstrap B --approved T --exits T
        --market T --orders T --done T --group G --ns NS --mode crash_after_submit|serve [--seconds S]

Runs the ``execution`` service (paper simulator). Prints ``SUBMIT <client_order_id>`` for
every order it really sends to the simulator. ``crash_after_submit`` hard-kills the
process (``os._exit``: no commit, no close) once a batch that submitted an order has been
flushed, i.e. between the order's submission (and its DB row) and the offset commit.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from awet_dagster.config import load_config  # noqa: E402
from awet_dagster.infra import Endpoints  # noqa: E402
from live.services import execution  # noqa: E402

CRASH_EXIT_CODE = 17


def main() -> int:
    from awet_dagster.infra.guard import die_with_parent

    die_with_parent(signal.SIGKILL)  # never outlives the test that started it
    ap = argparse.ArgumentParser()
    for name in ("home", "database-url", "bootstrap", "approved", "exits", "market", "orders", "done", "group", "ns"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--mode", choices=["crash_after_submit", "serve"], required=True)
    ap.add_argument("--seconds", type=float, default=15.0)
    args = ap.parse_args()
    cfg = load_config(environ={"AWET_ENV": "test", "AWET_HOME": args.home})
    ep = Endpoints(args.database_url, args.bootstrap)

    def on_submit(req, order):
        print(f"SUBMIT {req.client_order_id}", flush=True)

    svc_box = {}

    def crash(contexts):
        if svc_box["svc"].component.submitted:
            print("CRASH " + json.dumps([[c.topic, c.offset] for c in contexts]), flush=True)
            os._exit(CRASH_EXIT_CODE)

    svc = execution.build(cfg, ep, approved_topic=args.approved, exits_topic=args.exits, market_topic=args.market,
                          orders_topic=args.orders, done_topic=args.done, group=args.group, namespace=args.ns,
                          on_submit=on_submit, poll_timeout_s=0.2,
                          before_commit=crash if args.mode == "crash_after_submit" else None)
    svc_box["svc"] = svc
    print("STARTED", flush=True)
    with svc:
        stats = svc.run(timeout_s=args.seconds)
    ex = svc.component
    print("STATS " + json.dumps({"processed": stats.processed, "submitted": ex.submitted, "adopted": ex.adopted,
                                 "fills": ex.fills}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
