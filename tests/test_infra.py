"""`awet infra up|status|down` against real embedded PostgreSQL and tansu processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from awet_dagster.infra import InfraError, infra_down, infra_status, infra_up, resolve_endpoints
from awet_dagster.infra.paths import HomeLayout
from awet_dagster.infra.processes import PidRecord, is_alive, terminate, write_pid_file

REPO = Path(__file__).resolve().parents[1]


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (an unreaped zombie holds no port, socket or file)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _servers_of(home: Path) -> list[psutil.Process]:
    """Running postmasters on ``home``'s pgdata and tansu brokers started from ``home``."""
    pgdata = str(home / "pgdata")
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "pid"]):
        cmd = proc.info["cmdline"] or []
        if not _running(proc):
            continue
        if proc.info["name"] == "postgres" and pgdata in cmd:
            found.append(proc)  # only the postmaster has -D pgdata on its command line
        elif cmd and "tansu" in Path(cmd[0]).name and _broker_port(home) and f"tcp://127.0.0.1:{_broker_port(home)}" in cmd:
            found.append(proc)
    return found


def _broker_port(home: Path) -> int | None:
    try:
        return json.loads((home / "run" / "broker.pid").read_text())["extra"]["port"]
    except (OSError, ValueError, KeyError):
        return None


def _assert_gone(pids: list[int]) -> None:
    for pid in pids:
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        assert not _running(proc), f"pid {pid} ({proc.name()}) still running after down"


def _awet(home: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the real CLI in a separate process (so `up` really exits)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP")}
    env.update(AWET_HOME=str(home), AWET_ENV="test", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", "from awet_cli.main import app; app()", "infra", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=150,
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_cli_up_twice_starts_one_set_of_servers_and_down_leaves_nothing(awet_tmp_home):
    home = awet_tmp_home
    first = _awet(home, "up")
    assert first.returncode == 0, first.stdout + first.stderr
    ep1 = json.loads((home / "endpoints.json").read_text())
    pids = [ep1["started"]["postgres"]["pid"], ep1["started"]["broker"]["pid"]]
    # The servers outlive the `up` process that started them.
    assert all(is_alive(p) for p in pids)
    assert "schema at revision 0002_predictions_per_horizon" in first.stdout
    assert "20 created" in first.stdout  # 10 contract topics + 10 DLQ twins

    second = _awet(home, "up")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "reused" in second.stdout and "started (pid" not in second.stdout
    ep2 = json.loads((home / "endpoints.json").read_text())
    assert [ep2["started"]["postgres"]["pid"], ep2["started"]["broker"]["pid"]] == pids
    assert sorted(p.pid for p in _servers_of(home)) == sorted(pids)  # one set only

    status = _awet(home, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "0002_predictions_per_horizon (head)" in status.stdout

    down = _awet(home, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    _assert_gone(pids)
    assert _servers_of(home) == []
    assert not (home / "endpoints.json").exists()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_stale_pid_files_are_detected_and_replaced(awet_tmp_home, test_config_for):
    cfg = test_config_for(awet_tmp_home)
    lay = HomeLayout(awet_tmp_home)
    ep = infra_up(cfg)
    try:
        old_pg = ep.started["postgres"]["pid"]
        assert infra_down(cfg) == {"broker": "stopped", "postgres": "stopped"}

        # Broker pid file naming a live but unrelated process (a recycled pid): this very
        # test process, with another creation time. It must be seen as stale, not killed.
        write_pid_file(
            lay.broker_pid_file,
            PidRecord(pid=os.getpid(), create_time=1.0, name="tansu", extra={"host": "127.0.0.1", "port": 9}),
        )
        # postmaster.pid left by a crashed server (pid of a process that has exited).
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait(10)
        (lay.pgdata / "postmaster.pid").write_text(
            f"{dead.pid}\n{lay.pgdata}\n{int(time.time())}\n5432\n{lay.pgdata}\n\n  0 0\nready\n"
        )
        (lay.postgres_pid_file).write_text(json.dumps({"pid": dead.pid, "create_time": 1.0, "name": "postgres"}))

        st = infra_status(cfg)
        assert st["broker"]["alive"] is False and st["postgres"]["alive"] is False

        ep2 = infra_up(cfg)
        assert ep2.started["broker"]["pid"] != os.getpid()
        assert ep2.started["broker"]["reused"] is False and ep2.started["postgres"]["reused"] is False
        assert ep2.started["postgres"]["pid"] not in (old_pg, dead.pid)
        assert is_alive(ep2.started["postgres"]["pid"]) and is_alive(ep2.started["broker"]["pid"])
        assert resolve_endpoints(cfg).database_url == ep2.database_url
    finally:
        infra_down(cfg)
    assert is_alive(os.getpid())
    assert _servers_of(awet_tmp_home) == []


@pytest.mark.timeout(60)
def test_external_endpoints_start_nothing(tmp_path, database_url, kafka_bootstrap, test_config_for):
    home = tmp_path / "awet"
    cfg = test_config_for(home, DATABASE_URL=database_url, KAFKA_BOOTSTRAP=kafka_bootstrap)
    ep = infra_up(cfg)
    assert (ep.database_url, ep.kafka_bootstrap, ep.started) == (database_url, kafka_bootstrap, {})
    assert not home.exists()  # nothing started, nothing recorded
    assert resolve_endpoints(cfg) == ep
    st = infra_status(cfg)
    assert st["postgres"]["mode"] == "external" and st["broker"]["mode"] == "external"
    assert infra_down(cfg) == {"postgres": "not started", "broker": "not started"}


@pytest.mark.timeout(90)
def test_only_the_missing_endpoint_is_started(awet_tmp_home, database_url, test_config_for):
    cfg = test_config_for(awet_tmp_home, DATABASE_URL=database_url)
    try:
        ep = infra_up(cfg)
        assert ep.database_url == database_url
        assert set(ep.started) == {"broker"}
        assert not (awet_tmp_home / "pgdata").exists()
        recorded = json.loads((awet_tmp_home / "endpoints.json").read_text())
        assert recorded["database_url"] == ""  # an external URL (maybe with a password) is never written
    finally:
        assert infra_down(cfg)["broker"] == "stopped"


def test_resolve_endpoints_explains_what_to_do(tmp_path, test_config_for):
    cfg = test_config_for(tmp_path / "awet")
    with pytest.raises(InfraError, match="awet infra up"):
        resolve_endpoints(cfg)
    lay = HomeLayout(tmp_path / "awet").ensure()
    lay.endpoints_file.write_text(
        json.dumps({"database_url": "postgresql://x", "kafka_bootstrap": "127.0.0.1:9",
                    "started": {"postgres": {"pid": 999999999, "create_time": 1.0},
                                "broker": {"pid": 999999999, "create_time": 1.0}}})
    )
    with pytest.raises(InfraError, match="not running.*awet infra up"):
        resolve_endpoints(cfg)


@pytest.mark.timeout(30)
def test_terminate_escalates_to_kill_within_its_timeout():
    proc = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 60"])
    time.sleep(0.3)  # let bash install the trap
    started = time.monotonic()
    assert terminate(proc.pid, timeout_s=0.5, kill_timeout_s=5)
    assert time.monotonic() - started < 5
    assert proc.wait(5) == -9


@pytest.mark.timeout(60)
def test_topics_created_with_configured_partitions_and_dlq_twins(tmp_path, kafka_bootstrap, test_config_for):
    from awet_dagster.contracts import ALL_TOPICS
    from live.topics import ensure_topics, topic_partitions

    cfg = test_config_for(tmp_path / "awet")
    wanted = {name: t.partitions for name, t in cfg.kafka.topics.items()}
    assert set(wanted) == {"market.raw", "engineered", "alpha.signals", "predictions", "signals.scored",
                           "risk.approved", "risk.rejected", "exec.done", "exec.orders", "exec.exits"}
    assert set(wanted) == set(ALL_TOPICS)  # config and contracts agree
    ensure_topics(kafka_bootstrap, wanted, dlq_suffix=cfg.kafka.dlq_suffix)
    again = ensure_topics(kafka_bootstrap, wanted, dlq_suffix=cfg.kafka.dlq_suffix)
    assert set(again.values()) == {"exists"} and len(again) == 20
    parts = topic_partitions(kafka_bootstrap)
    for name, n in wanted.items():
        assert parts[name] == n
        assert parts[name + cfg.kafka.dlq_suffix] == n


@pytest.mark.timeout(60)
def test_make_topic_gives_a_fresh_topic_with_dlq(make_topic, kafka_bootstrap):
    from live.topics import topic_partitions

    a, b = make_topic(), make_topic(partitions=3)
    assert a != b
    parts = topic_partitions(kafka_bootstrap)
    assert parts[a] == 1 and parts[a + ".dlq"] == 1 and parts[b] == 3 and parts[b + ".dlq"] == 3
