"""Alembic migrations and the retention job against the real (embedded) PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
import sqlalchemy as sa

from awet_dagster.storage import db
from awet_dagster.storage.retention import apply_retention

# The newest migration: a new one must be added here on purpose (the head is asserted, not discovered).
HEAD = "0007_reddit_bucket"

REPO = Path(__file__).resolve().parents[1]
TABLES = {
    "bars", "rejected_bars", "features", "predictions", "signals", "orders", "fills", "positions",
    "risk_state", "audit_log", "walk_forward_results", "dead_letters", "reddit_mentions", "bar_gaps",
    "calibrations",
}


def _with_database(url: str, name: str) -> str:
    """Same server, other database (libpq URL with or without query string)."""
    base, sep, query = db.libpq_url(url).partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}{sep}{query}"


@pytest.fixture
def fresh_db(database_url):
    """A new, empty database on the test server, so up/down never disturb other tests."""
    name = f"mig_{uuid.uuid4().hex[:10]}"
    admin = db.libpq_url(database_url)
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:  # e.g. an external server without CREATEDB rights
        pytest.skip(f"cannot create a scratch database: {exc}")
    yield _with_database(database_url, name)
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables(url: str) -> set[str]:
    engine = db.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


@pytest.mark.timeout(120)
def test_upgrade_downgrade_upgrade(fresh_db):
    assert db.current_revision(fresh_db) is None
    db.upgrade(fresh_db)
    assert db.current_revision(fresh_db) == db.head_revision() == HEAD
    assert _tables(fresh_db) == TABLES
    db.upgrade(fresh_db)  # at head: no-op
    db.downgrade(fresh_db, "base")
    assert db.current_revision(fresh_db) is None
    assert _tables(fresh_db) == set()
    db.upgrade(fresh_db)
    assert _tables(fresh_db) == TABLES


# A ScoredSignal as version 1 published it (what signals.payload holds before 0005).
_V1_SIGNAL = {
    "event_id": "e-1", "correlation_id": "c-1", "schema_version": 1, "produced_at": "2024-01-02T15:00:00Z",
    "symbol": "AAPL", "ts": "2024-01-02T14:30:00Z", "bar_type": "daily", "direction": "long", "score": 0.42,
    "confidence": 0.42, "calibrated_prob": 0.6, "regime": "warmup", "regime_scale": 0.5,
    "components": {"tft": 0.5, "rsi": -1.0, "ema": 1.0, "macd": None}, "ensemble_weights": {"tft": 0.5},
    "active_alphas": ["rsi", "ema_cross"], "horizon": 1, "model_version": "awet-tft:3",
    "quantiles": {"q10": -0.004, "q50": 0.002, "q90": 0.008}, "filters_passed": [], "filters_failed": [],
    "price": 185.4, "reference_price": 185.4, "adj_factor": 1.0, "split_factor": 1.0,
}


@pytest.mark.timeout(120)
def test_contracts_v2_migration_moves_stored_signals_and_bar_sources_and_back(fresh_db):
    import json

    from awet_dagster.contracts import ScoredSignal

    db.upgrade(fresh_db, "0004_bar_factors")
    flat = {**_V1_SIGNAL, "event_id": "e-2", "direction": "flat", "regime": "bear", "active_alphas": [],
            "components": {"tft": None, "rsi": None, "ema": None, "macd": None},
            "model_version": "none", "quantiles": {"q10": 0.0, "q50": 0.0, "q90": 0.0}}
    url = db.libpq_url(fresh_db)
    with psycopg.connect(url, autocommit=True) as conn:
        for sig in (_V1_SIGNAL, flat):
            conn.execute("INSERT INTO signals (event_id, symbol, ts, direction, score, confidence, payload) "
                         "VALUES (%s, 'AAPL', %s, %s, 0.42, 0.42, %s::jsonb)",
                         (sig["event_id"], sig["ts"], sig["direction"], json.dumps(sig)))
        for i, source in enumerate(("sample", "replay", "synthetic", "yfinance", "alpaca")):
            conn.execute("INSERT INTO bars (symbol, bar_type, ts, open, high, low, close, volume, source) "
                         "VALUES ('AAPL', 'daily', %s, 1, 1, 1, 1, 10, %s)",
                         (datetime(2024, 1, 2 + i, 14, 30, tzinfo=UTC), source))
    db.upgrade(fresh_db)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = dict(conn.execute("SELECT event_id, payload FROM signals").fetchall())
        directions = dict(conn.execute("SELECT event_id, direction FROM signals").fetchall())
        sources = [r[0] for r in conn.execute("SELECT source FROM bars ORDER BY ts").fetchall()]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE bars SET source = 'sample'")
    v2, v2_flat = (ScoredSignal.model_validate(rows[k]) for k in ("e-1", "e-2"))  # they are valid v2 events
    assert (v2.ticker, v2.ensemble_direction, v2.signal_score, v2.ensemble_confidence) == ("AAPL", "long", 0.42, 0.42)
    assert v2.active_alphas == {"rsi": "DOWN", "ema_cross": "UP"}
    assert (v2.tft_direction, v2.tft_q50) == ("long", 0.002)
    assert v2.tft_confidence == pytest.approx(0.002 / (0.002 + 0.006))
    assert (v2.regime, v2.regime_ready, v2.calibrator) == ("sideways", False, "unrecorded (v1)")
    assert (v2_flat.ensemble_direction, v2_flat.tft_direction, v2_flat.active_alphas) == ("neutral", None, {})
    assert (v2_flat.regime, v2_flat.regime_ready) == ("bear", True)
    assert directions == {"e-1": "long", "e-2": "neutral"}
    assert sources == ["stub", "stub", "stub", "yfinance", "alpaca"]

    db.downgrade(fresh_db, "0004_bar_factors")
    with psycopg.connect(url, autocommit=True) as conn:
        back = dict(conn.execute("SELECT event_id, payload FROM signals").fetchall())
        assert dict(conn.execute("SELECT event_id, direction FROM signals").fetchall())["e-2"] == "flat"
    assert back["e-1"] == {**_V1_SIGNAL, "regime": "warmup", "active_alphas": ["ema_cross", "rsi"]}
    assert back["e-2"]["direction"] == "flat" and back["e-2"]["schema_version"] == 1


@pytest.mark.timeout(60)
def test_session_database_is_at_head(database_url):
    assert db.current_revision(database_url) == db.head_revision()


@pytest.mark.timeout(60)
def test_plain_tables_without_timescaledb(fresh_db):
    db.upgrade(fresh_db)
    engine = db.make_engine(fresh_db, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if db.has_timescaledb(conn):
                pytest.skip("server offers TimescaleDB: hypertable mode")
            assert not db.timescaledb_enabled(conn)
            idx = {i["name"] for i in sa.inspect(conn).get_indexes("bars")}
            assert "ix_bars_ts" in idx
    finally:
        engine.dispose()


def test_url_forms():
    assert db.sqlalchemy_url("postgresql://u@/d?host=/s") == "postgresql+psycopg://u@/d?host=/s"
    assert db.sqlalchemy_url("postgres://u:p@h/d") == "postgresql+psycopg://u:p@h/d"
    assert db.libpq_url("postgresql+psycopg://u@h/d") == "postgresql://u@h/d"
    with pytest.raises(ValueError):
        db.sqlalchemy_url("postgresql+psycopg2://u@h/d")
    with pytest.raises(ValueError):
        db.sqlalchemy_url("sqlite:///x.db")


@pytest.mark.timeout(120)
def test_retention_deletes_exactly_the_expired_rows(fresh_db):
    db.upgrade(fresh_db)
    now = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
    cfg = SimpleNamespace(minute_bars_days=90, signals_days=180, audit_days=365)
    bars = [  # (bar_type, age in days, expected to survive)
        ("minute", 91, False), ("minute", 90.001, False), ("minute", 90, True), ("minute", 1, True),
        ("daily", 1000, True), ("daily", 1, True),
    ]
    signals = [(181, False), (180, True), (10, True)]
    audits = [(366, False), (365, True), (0, True)]
    engine = db.make_engine(fresh_db, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            for i, (bar_type, age, _) in enumerate(bars):
                conn.execute(
                    sa.text("INSERT INTO bars (symbol, bar_type, ts, open, high, low, close, volume, source) "
                            "VALUES (:s, :bt, :ts, 1, 1, 1, 1, 1, 'stub')"),
                    {"s": f"S{i}", "bt": bar_type, "ts": now - timedelta(days=age)},
                )
            for i, (age, _) in enumerate(signals):
                conn.execute(
                    sa.text("INSERT INTO signals (event_id, symbol, ts, direction) VALUES (:e, 'AAPL', :ts, 'long')"),
                    {"e": f"e{i}", "ts": now - timedelta(days=age)},
                )
            for i, (age, _) in enumerate(audits):
                conn.execute(
                    sa.text("INSERT INTO audit_log (ts, actor, action) VALUES (:ts, 'test', :a)"),
                    {"a": f"a{i}", "ts": now - timedelta(days=age)},
                )

        deleted = apply_retention(engine, cfg, now)
        assert deleted == {"bars": 2, "signals": 1, "audit_log": 1}

        with engine.connect() as conn:
            kept_bars = {r[0] for r in conn.execute(sa.text("SELECT symbol FROM bars"))}
            kept_signals = {r[0] for r in conn.execute(sa.text("SELECT event_id FROM signals"))}
            kept_audit = {r[0] for r in conn.execute(sa.text("SELECT action FROM audit_log"))}
        assert kept_bars == {f"S{i}" for i, b in enumerate(bars) if b[2]}
        assert kept_signals == {f"e{i}" for i, s in enumerate(signals) if s[1]}
        assert kept_audit == {f"a{i}" for i, a in enumerate(audits) if a[1]}
        assert apply_retention(engine, cfg, now) == {"bars": 0, "signals": 0, "audit_log": 0}
    finally:
        engine.dispose()


def test_retention_refuses_naive_now():
    with pytest.raises(ValueError, match="timezone-aware"):
        apply_retention(None, SimpleNamespace(), datetime(2025, 1, 1))  # type: ignore[arg-type]


@pytest.mark.timeout(120)
def test_alembic_cli_with_repo_ini(fresh_db):
    """Developers can drive the same migrations with the alembic CLI and alembic.ini."""
    import os

    env = {**os.environ, "DATABASE_URL": fresh_db}
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), *a],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=90,
    )
    up = run("upgrade", "head")
    assert up.returncode == 0, up.stderr
    cur = run("current")
    assert f"{HEAD} (head)" in cur.stdout, cur.stdout + cur.stderr
    assert db.current_revision(fresh_db) == HEAD
