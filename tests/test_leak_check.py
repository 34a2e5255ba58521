"""The session-end check (tests/leaks.py via tests/conftest.py): a test session that leaves a
Kafka client, a project thread or a child process running fails, naming each."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

LEAKY = '''
import subprocess, sys
from confluent_kafka import Producer
from live.metrics import start_metrics_server

KEPT = []

def test_leaves_things_running(tmp_path):
    KEPT.append(Producer({"bootstrap.servers": "127.0.0.1:9", "client.id": "leaky-probe", "log_level": 0}))
    KEPT.append(start_metrics_server(0))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (tmp_path.parent.parent / "child.pid").write_text(str(child.pid))
    KEPT.append(child)

def test_tidy():
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": "127.0.0.1:9", "log_level": 0})
    p.close()
'''


@pytest.mark.timeout(120)
def test_a_session_that_leaves_a_client_a_thread_and_a_child_running_fails_naming_them(tmp_path):
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    base = tmp_path / "base"
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "--rootdir", str(tmp_path),
                              "-c", os.devnull, "--basetemp", str(base), str(tmp_path / "test_leaky.py")],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
    finally:
        pid_file = tmp_path / "child.pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    out = run.stdout
    assert "awet: tests 2 passed, 0 failed" in out, out + run.stderr
    assert run.returncode == 1, out + run.stderr  # every test passed: only the leftovers fail the run
    left = [line for line in out.splitlines() if "LEFT RUNNING" in line]
    assert any("Kafka producer" in line for line in left), out
    assert any("thread 'metrics-http-" in line and "live.metrics" in line for line in left), out
    assert any("time.sleep(60)" in line and "descendant" in line for line in left), out
    assert len(left) == 3, left  # the closed producer of test_tidy is not reported
    assert "3 left running" in out
