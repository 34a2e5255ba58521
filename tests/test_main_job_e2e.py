"""`awet run` end to end, as the README's first command runs it: its own embedded PostgreSQL and
Kafka in a fresh AWET home, the main Dagster job (ingest -> features -> train -> walk-forward
gate -> ONNX -> MLflow -> promotion) and the live paper-trading replay with its summary.

Smaller than the demo so that it fits the suite (two symbols, a short history, a small TFT, a
short replay window), but every stage runs for real. A stage that breaks the command (the
summary once ended every uninterrupted run in UnboundLocalError) fails here.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from awet_dagster.infra.guard import scratch_home, start_guard, stop_guard
from tests.conftest import KAFKA_LIBS, REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SMALL = {
    "AWET_ENV": "test",
    "AWET__DATA__SYMBOLS": "[SPY, QQQ]",
    "AWET__DATA__START": "2014-01-02",
    "AWET__DATA__CUTOFF": "2020-01-01",
    "AWET__DATA__REPLAY_START": "2021-01-04",
    "AWET__DATA__END": "2021-03-31",
    "AWET__MODEL__MAX_EPOCHS": "1",
    "AWET__MODEL__MAX_TRAIN_WINDOWS": "300",
    "AWET__MODEL__MAX_VAL_WINDOWS": "100",
    "AWET__MODEL__LOOKBACK": "20",
}


def _awet(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("awet")
    cmd = [str(exe), *args] if exe.exists() else [sys.executable, "-m", "awet_cli.main", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


def test_awet_run_goes_from_ingest_to_a_replay_summary_on_its_own_servers() -> None:
    home = scratch_home("awet-test-run-")
    guard = start_guard(home)  # the servers go down even if this session is killed
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AWET", "DATABASE_URL", "KAFKA_BOOTSTRAP",
                                                                       "MLFLOW_", "DAGSTER_", "VAULT_"))}
    env = {**keep, **SMALL, "AWET_HOME": str(home), "AWET__INFRA__KAFKA_LIBS_DIR": str(KAFKA_LIBS),
           "AWET__INFRA__BROKER": os.environ.get("AWET_TEST_BROKER", "auto") or "auto", "COLUMNS": "200"}
    try:
        run = _awet(["run"], env, timeout_s=840)
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-6000:]
        # Every stage of the main job reported (materialized, or stopped by its blocking check).
        for stage in ("daily/raw_bars", "daily/features", "daily/walk_forward"):
            assert stage in out, (stage, out[-6000:])
        assert re.search(r"Pipeline: \d+ materializations, \d+/\d+ checks passed", out), out[-6000:]
        assert "champion:" in out
        # The replay ran through the loop and printed its summary.
        summary = re.search(r"live loop summary \(([\d.]+)s, ([\d,]+) bars/s\)", out)
        assert summary, out[-6000:]
        tail = out[summary.end():]
        bars = re.search(r"^\s*bars\s+(\d+)\s*$", tail, re.MULTILINE)
        signals = re.search(r"^\s*signals\s+(\d+) ", tail, re.MULTILINE)
        # About 60 sessions x 2 symbols in the replay window; each bar is scored.
        assert bars and int(bars.group(1)) > 100, tail[:2000]
        assert signals and int(signals.group(1)) > 0, tail[:2000]
    finally:
        down = _awet(["infra", "down"], env, timeout_s=120)
        stop_guard(guard)
        shutil.rmtree(home.parent, ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
