"""Stopping means stopping: SIGTERM/SIGINT end every long-running command within seconds, at any
phase, with exit code 128 + the signal, and leave no process of theirs behind (the managed
servers under the AWET home stay up, as after a normal end).

Found before: `awet live --replay` ran out its whole drain budget (105 s) after a SIGTERM once a
service had given up; a SIGTERM to `awet ui` left `dagster dev`, its webserver, daemon and code
server running, and they then ignored SIGTERM and SIGINT.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.ports import free_metrics_base, free_port

REPO = Path(__file__).resolve().parents[1]
AWET = str(Path(sys.executable).parent / "awet")
pytestmark = pytest.mark.slow


def _env(tmp_path: Path, database_url: str, kafka_bootstrap: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWET", "VAULT_", "DATABASE_URL",
                                                                     "KAFKA_BOOTSTRAP"))}
    env.update(AWET_ENV="test", AWET_HOME=str(tmp_path / "home"), DATABASE_URL=database_url,
               KAFKA_BOOTSTRAP=kafka_bootstrap, AWET__KAFKA__GROUP_PREFIX=f"stop-{tmp_path.name}"[:40],
               AWET__OBSERVABILITY__METRICS_PORT_BASE=str(free_metrics_base()), PYTHONUNBUFFERED="1", **extra)
    return env


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([AWET, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float) -> str:
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} not printed within {timeout_s}s:\n" + "".join(seen)[-3000:])


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _stopped_within(proc: subprocess.Popen, sig: int, timeout_s: float) -> tuple[int, float, str]:
    kids = _descendants(proc.pid)
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout_s + 30)
    took = time.monotonic() - t0
    assert took <= timeout_s, f"took {took:.1f}s (> {timeout_s}s) to stop:\n{out[-3000:]}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids
                                              if _exists(k)):
        time.sleep(0.2)
    left = [k for k in kids if _exists(k) and k.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"left running: {[(k.pid, k.cmdline()[:4]) for k in left]}"
    return proc.returncode, took, out


def _exists(p: psutil.Process) -> bool:
    try:
        return p.is_running()
    except psutil.Error:
        return False


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_live_replay_stops_within_seconds_with_the_signal_in_its_exit_code(sig, tmp_path, isolated_database_url,
                                                                            kafka_bootstrap):
    database_url = isolated_database_url  # interrupted: it leaves entries in flight behind
    env = _env(tmp_path, database_url, kafka_bootstrap)
    proc = _start(["live", "--replay", "sample", "--bar-type", "daily", "--symbols", "SPY,AAPL", "--start",
                   "2020-07-01", "--end", "2021-03-31", "--preload-days", "120", "--max-seconds", "600"], env,
                  tmp_path)
    _wait_for_line(proc, "replaying", 120)
    time.sleep(2.0)  # in the middle of the lockstep replay
    code, took, out = _stopped_within(proc, sig, 20)
    assert code == 128 + sig, out[-2000:]
    assert "interrupted:" in out and "bars replayed" in out


@pytest.mark.timeout(240)
def test_live_service_stops_on_sigterm_with_exit_code_143(tmp_path, database_url, kafka_bootstrap):
    env = _env(tmp_path, database_url, kafka_bootstrap)
    proc = _start(["live", "--service", "features"], env, tmp_path)
    _wait_for_line(proc, "running features", 120)
    time.sleep(3.0)
    code, _, out = _stopped_within(proc, signal.SIGTERM, 15)
    assert code == 143, out[-2000:]
    assert "features: processed" in out


@pytest.mark.timeout(240)
def test_replay_publisher_stops_on_sigterm(tmp_path, database_url, kafka_bootstrap, configured_topics):
    env = _env(tmp_path, database_url, kafka_bootstrap)
    proc = _start(["replay", "--source", "sample", "--bar-type", "daily", "--symbols", "SPY", "--speed", "2",
                   "--max-seconds", "300"], env, tmp_path)
    time.sleep(8.0)
    code, _, out = _stopped_within(proc, signal.SIGTERM, 15)
    assert code == 143, out[-2000:]
    assert "published" in out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_ui_takes_dagster_dev_and_its_processes_down(sig, tmp_path, database_url, kafka_bootstrap):
    env = _env(tmp_path, database_url, kafka_bootstrap, DAGSTER_HOME=str(tmp_path / "dagster"))
    port = free_port()
    proc = _start(["ui", "--port", str(port)], env, tmp_path)
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the webserver answers: every dagster process is up
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise AssertionError("the Dagster UI did not come up:\n" + proc.stdout.read()[-3000:])
    dagster = [p for p in _descendants(proc.pid)]
    assert len(dagster) >= 3, [p.cmdline()[:4] for p in dagster]  # dagster dev, webserver, daemon (+ code server)
    proc.send_signal(sig)
    proc.wait(30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_exists(p) and p.status() != psutil.STATUS_ZOMBIE for p in dagster):
        time.sleep(0.2)
    left = [(p.pid, p.cmdline()[:5]) for p in dagster if _exists(p) and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, left
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
