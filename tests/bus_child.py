"""Subprocess side of the bus crash/SIGTERM tests (run as a script, not collected by pytest).

    python tests/bus_child.py --bootstrap B --topic T --out OUT --group G --mode crash_after_flush|serve

Handler: echo each MarketRawEvent to OUT. ``crash_after_flush`` hard-kills the process
(``os._exit``: no commit, no close, no atexit) once a batch is flushed but before it is
committed. ``serve`` runs ``BusService.serve()`` until SIGTERM/SIGINT and prints the stats.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from awet_dagster.contracts import MarketRawEvent  # noqa: E402
from awet_kafka.bus import BusService, Output  # noqa: E402
from awet_kafka.settings import (  # noqa: E402
    FAST_DEV_CONSUMER_SETTINGS,
    FAST_DEV_PRODUCER_SETTINGS,
    consumer_config,
    producer_config,
)

CRASH_EXIT_CODE = 17


def main() -> int:
    from awet_dagster.infra.guard import die_with_parent

    die_with_parent(signal.SIGKILL)  # never outlives the test that started it
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--mode", choices=["crash_after_flush", "serve"], required=True)
    args = ap.parse_args()

    def handle(event, ctx):
        yield Output(args.out, event)

    def crash(contexts):
        print("FLUSHED " + json.dumps([[c.topic, c.partition, c.offset] for c in contexts]), flush=True)
        os._exit(CRASH_EXIT_CODE)

    svc = BusService(
        "bus-child",
        [args.topic],
        handle,
        consumer_config=consumer_config(args.bootstrap, args.group, consumer=FAST_DEV_CONSUMER_SETTINGS),
        producer=producer_config(args.bootstrap, producer=FAST_DEV_PRODUCER_SETTINGS),
        topic_models={args.topic: MarketRawEvent},
        poll_timeout_s=0.2,
        before_commit=crash if args.mode == "crash_after_flush" else None,
    )
    print("STARTED", flush=True)
    stats = svc.serve()
    print("STATS " + json.dumps({"processed": stats.processed, "produced": stats.produced,
                                 "dead_lettered": stats.dead_lettered, "stopped_by": stats.stopped_by}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
