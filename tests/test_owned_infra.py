"""Servers started by a benchmark or a test in a temporary home die with their owner: at the
end, on SIGTERM, on SIGINT, and (through the guard process) on SIGKILL.

Measured before this existed: `timeout 55 python benchmarks/live_loop.py --quick` left its broker
and its embedded PostgreSQL running, orphaned, with their temporary home, after the benchmark
was killed. The owner here is a small script that starts servers exactly as the benchmarks do
(``benchmarks._common.owned_infra``) and then waits.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
OWNER = """
import json, sys, time
sys.path.insert(0, {repo!r})
from benchmarks._common import owned_infra
with owned_infra(sys.argv[1], postgres=sys.argv[2] == "pg") as (cfg, ep):
    print(json.dumps({{"home": str(cfg.paths.home), "pids": [e["pid"] for e in ep.started.values()]}}), flush=True)
    time.sleep(600)
"""
pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _owner(broker: str, pg: bool) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-c", OWNER.format(repo=str(REPO)), broker, "pg" if pg else "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    line = proc.stdout.readline()
    assert line.startswith("{"), line + proc.stderr.read()[-3000:]
    info = json.loads(line)
    assert info["pids"] and all(_alive(p) for p in info["pids"])
    return proc, info


def _gone_within(info: dict, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in info["pids"]) and not Path(info["home"]).parent.exists():
            return
        time.sleep(0.2)
    left = [p for p in info["pids"] if _alive(p)]
    raise AssertionError(f"still running after {timeout_s}s: {left}; home left: {Path(info['home']).parent.exists()}")


@pytest.mark.timeout(180)
# SIGINT: an uncaught KeyboardInterrupt ends Python by SIGINT itself (returncode -2).
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)])
def test_owned_servers_stop_when_the_owner_is_told_to_stop(sig, code):
    proc, info = _owner("kafka", pg=sig == signal.SIGTERM)
    proc.send_signal(sig)
    assert proc.wait(60) == code, proc.stderr.read()[-3000:]
    _gone_within(info, 5)  # stopped by the owner itself, before it exited


@pytest.mark.timeout(180)
def test_owned_servers_are_stopped_by_the_guard_when_the_owner_is_killed():
    proc, info = _owner("kafka", pg=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert any(_alive(p) for p in info["pids"]), "the owner died first: only its guard can stop them"
    _gone_within(info, 60)
