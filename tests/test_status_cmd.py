"""`awet status` against the session's real PostgreSQL and broker."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import typer
from typer.testing import CliRunner

from awet_cli.status_cmd import status_command
from awet_dagster.risk.state import KillSwitchState
from awet_dagster.storage.db import connect
from awet_dagster.storage.trading import PostgresRiskStateStore

SYM = "ZZSTATUS"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("status")(status_command)
    app.command("noop")(lambda: None)  # two commands: `status` stays a sub-command
    return app


@pytest.fixture
def status_env(monkeypatch, tmp_path, isolated_database_url, kafka_bootstrap):
    # A database of its own: `awet status` lists the top dead letters, positions and the kill
    # switch of the whole database; on the shared one, other tests' rows pushed this test's
    # dead letter out of the top 20 (seen in a random-order run).
    database_url = isolated_database_url
    monkeypatch.setenv("AWET_ENV", "test")
    monkeypatch.setenv("AWET_HOME", str(tmp_path / "awet"))
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with connect(database_url) as conn:
        ts = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=7)
        conn.execute(
            "INSERT INTO bars (symbol, bar_type, ts, open, high, low, close, volume, source) "
            "VALUES (%s, 'minute', %s, 1, 1, 1, 1, 10, 'stub')", (SYM, ts))
        conn.execute("INSERT INTO positions (symbol, qty, avg_price, opened_at) VALUES (%s, 12, 101.5, %s)", (SYM, ts))
        conn.execute(
            'INSERT INTO dead_letters (topic, "partition", "offset", reason, service, error) '
            "VALUES ('zz-status-topic', 0, 7, 'invalid_time', 'features', 'bar ahead of the clock')")
    return database_url


def test_status_shows_infra_bars_positions_and_kill_switch(status_env):
    res = CliRunner().invoke(_app(), ["status"], env={"COLUMNS": "200"})
    out = res.output
    assert res.exit_code == 0, out
    assert "postgres" in out and "broker" in out and "external" in out and "up" in out
    assert "schema revision:" in out and "(head)" in out
    assert "champion: no registry" in out  # fresh AWET home: no MLflow store, none created
    assert SYM in out and "7m" in out  # last bar and its age
    assert "Open positions" in out and "101.50" in out
    assert "kill switch: armed" in out
    assert "Dead letters" in out and "zz-status-topic" in out and "invalid_time" in out

    with connect(status_env) as conn:
        PostgresRiskStateStore(conn).set_kill_switch(
            KillSwitchState(tripped=True, reason="test: daily loss", tripped_at=datetime.now(timezone.utc)))
    res = CliRunner().invoke(_app(), ["status"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "TRIPPED" in res.output and "test: daily loss" in res.output


def test_status_shows_the_champion(status_env, monkeypatch, tmp_path):
    from awet_dagster.model.registry import ModelRef, ModelRegistry

    db = tmp_path / "awet" / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True)
    db.touch()
    monkeypatch.setattr(ModelRegistry, "get_champion",
                        lambda self: ModelRef("awet-tft", "5", "abc123", "models:/awet-tft@champion"))
    res = CliRunner().invoke(_app(), ["status"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "champion: awet-tft v5 (run abc123)" in res.output

    def broken(self):
        raise RuntimeError("registry down")

    monkeypatch.setattr(ModelRegistry, "get_champion", broken)
    res = CliRunner().invoke(_app(), ["status"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "unavailable (RuntimeError: registry down)" in res.output


def test_status_without_database_reports_and_fails(monkeypatch, tmp_path):
    monkeypatch.setenv("AWET_ENV", "test")
    monkeypatch.setenv("AWET_HOME", str(tmp_path / "awet"))
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("AWET__DATABASE__CONNECT_TIMEOUT_S", "2")
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    res = CliRunner().invoke(_app(), ["status"], env={"COLUMNS": "200"})
    assert res.exit_code == 1, res.output
    assert "database: unavailable" in res.output and "down" in res.output
