"""`awet infra up|status|down` as plain functions (no CLI, no Dagster, no Kafka client).

* ``infra_up``: for each of PostgreSQL / broker, use the external endpoint from config
  (``DATABASE_URL`` / ``KAFKA_BOOTSTRAP``) when set and start nothing; otherwise start the
  embedded server, or reuse the one a previous ``up`` started if it is still alive.
  Records what it started in ``<home>/endpoints.json`` and ``<home>/run/*.pid``.
* ``infra_down``: stops only the servers recorded as started by ``up`` (pid files and
  the embedded data directory), never an external one.
* ``infra_status``: what is configured/recorded and whether it is alive.

Schema migrations and topic creation are done by the caller (CLI, test fixtures): they
need SQLAlchemy/Alembic and the Kafka admin client respectively.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotation only: the config schema imports infra (the Kafka JVM defaults)
    from awet_dagster.config import AwetConfig

from awet_dagster.infra.broker import (
    ReadyProbe,
    choose_broker,
    options_from,
    running_broker,
    start_broker,
    stop_broker,
)
from awet_dagster.infra.endpoints import (
    Endpoints,
    external_database_url,
    external_kafka_bootstrap,
    read_endpoints,
    redact_url,
    write_endpoints,
)
from awet_dagster.infra.paths import HomeLayout, layout
from awet_dagster.infra.postgres import running_postgres, start_postgres, stop_postgres
from awet_dagster.infra.processes import (
    InfraError,
    file_lock,
    is_alive,
    live_record,
    read_pid_file,
    write_pid_file,
)

_LOCK_TIMEOUT_S = 120.0


def infra_up(cfg: AwetConfig, *, broker_ready: ReadyProbe | None = None, progress=None) -> Endpoints:
    """Ensure PostgreSQL and the broker are reachable; returns the effective endpoints.

    ``started`` in the result has one entry per embedded server, with ``reused`` telling
    whether it was already running; ``notices`` says why the broker is not the one asked
    for (``infra.broker: auto`` falling back to tansu). ``broker_ready``: a readiness probe
    ``(bootstrap, timeout_s) -> bool`` for Kafka (default: a MetadataRequest in plain sockets);
    ``progress``: called with a line before long steps (the first fetch of the Kafka jars).
    """
    ext_db = external_database_url(cfg)
    ext_kafka = external_kafka_bootstrap(cfg)
    if ext_db and ext_kafka:
        return Endpoints(ext_db, ext_kafka, {})  # nothing to start, nothing to record

    home = layout(cfg).ensure()
    pg_timeout = float(cfg.infra.postgres_start_timeout_s)
    broker_timeout = float(cfg.infra.broker_start_timeout_s)
    choice = cfg.infra.broker
    opts = options_from(cfg)
    notices: list[str] = []
    with file_lock(home.lock_file, timeout_s=_LOCK_TIMEOUT_S):
        recorded = read_endpoints(home.endpoints_file) or Endpoints("", "", {})
        file_started: dict[str, Any] = {}
        reused: dict[str, bool] = {}
        db_url, bootstrap = recorded.database_url, recorded.kafka_bootstrap
        try:
            if not ext_db:
                pg, new = start_postgres(home.pgdata, logs_dir=home.logs_dir, timeout_s=pg_timeout)
                write_pid_file(home.postgres_pid_file, pg.record())
                file_started["postgres"] = pg.record().to_json()
                reused["postgres"] = not new
                db_url = pg.url
            if not ext_kafka:
                kind, notice = choose_broker(choice, home, opts, progress=progress)
                if notice:
                    notices.append(notice)
                br, new = start_broker(
                    home, kind=kind, timeout_s=broker_timeout, opts=opts, ready=broker_ready
                )
                file_started["broker"] = br.record().to_json()
                reused["broker"] = not new
                bootstrap = br.bootstrap
        finally:
            # Record whatever runs now, even after a partial failure, so `down` can stop it.
            # Keep entries of servers that are still ours but not needed this time.
            for name, entry in recorded.started.items():
                if name not in file_started and is_alive(entry.get("pid"), entry.get("create_time")):
                    file_started[name] = entry
            if file_started:
                write_endpoints(
                    home.endpoints_file,
                    Endpoints(
                        database_url=db_url if "postgres" in file_started else "",
                        kafka_bootstrap=bootstrap if "broker" in file_started else "",
                        started=file_started,
                    ),
                )
    result_started = {
        name: {**file_started[name], "reused": reused[name]} for name in reused
    }
    return Endpoints(
        database_url=ext_db or db_url,
        kafka_bootstrap=ext_kafka or bootstrap,
        started=result_started,
        notices=tuple(notices),
    )


def infra_down(cfg: AwetConfig) -> dict[str, str]:
    """Stop the embedded servers that `infra_up` started; returns {name: what happened}."""
    home = layout(cfg)
    if not home.home.exists():
        return {"postgres": "not started", "broker": "not started"}
    timeout = float(cfg.infra.stop_timeout_s)
    outcome: dict[str, str] = {}
    with file_lock(home.lock_file, timeout_s=_LOCK_TIMEOUT_S):
        had_broker = live_record(home.broker_pid_file) is not None
        # With `home`: also any Kafka JVM of this home whose pid file was lost (its start
        # was killed before the record was written, or the file was removed).
        if not stop_broker(home.broker_pid_file, timeout_s=timeout, home=home):
            raise InfraError(f"Could not stop the broker recorded in {home.broker_pid_file}.")
        outcome["broker"] = "stopped" if had_broker else "not running"

        pg_record = read_pid_file(home.postgres_pid_file)
        had_pg = running_postgres(home.pgdata) is not None or (
            pg_record is not None and is_alive(pg_record.pid, pg_record.create_time)
        )
        if not stop_postgres(home.pgdata, timeout_s=timeout, record=pg_record):
            raise InfraError(f"Could not stop the embedded PostgreSQL on {home.pgdata}.")
        home.postgres_pid_file.unlink(missing_ok=True)
        outcome["postgres"] = "stopped" if had_pg else "not running"
        home.endpoints_file.unlink(missing_ok=True)
    return outcome


def _embedded_status(home: HomeLayout) -> dict[str, dict[str, Any]]:
    recorded = read_endpoints(home.endpoints_file)
    pg = running_postgres(home.pgdata)
    br = running_broker(home.broker_pid_file)
    pg_entry = (recorded.started.get("postgres") if recorded else None) or {}
    br_entry = (recorded.started.get("broker") if recorded else None) or {}
    return {
        "postgres": {
            "mode": "embedded",
            "url": pg.url if pg else (recorded.database_url if recorded else ""),
            "pid": pg.pid if pg else pg_entry.get("pid"),
            "alive": pg is not None,
            "pgdata": str(home.pgdata),
            "log": str(home.pgdata / "log"),
        },
        "broker": {
            "mode": "embedded",
            "kind": br.kind if br else br_entry.get("name", ""),
            "bootstrap": br.bootstrap if br else (recorded.kafka_bootstrap if recorded else ""),
            "pid": br.pid if br else br_entry.get("pid"),
            "alive": br is not None,
            "log": str(home.logs_dir / "broker.log"),
            **({"data_dir": br.extra.get("data_dir")} if br and br.kind == "kafka" else {}),
        },
    }


def infra_status(cfg: AwetConfig) -> dict[str, Any]:
    """{"home", "postgres": {...}, "broker": {...}}; URLs have their password redacted."""
    home = layout(cfg)
    status: dict[str, Any] = {"home": str(home.home)}
    embedded = _embedded_status(home)
    ext_db = external_database_url(cfg)
    ext_kafka = external_kafka_bootstrap(cfg)
    status["postgres"] = (
        {"mode": "external", "url": redact_url(ext_db), "pid": None, "alive": None}
        if ext_db
        else embedded["postgres"]
    )
    status["broker"] = (
        {"mode": "external", "kind": "external kafka", "bootstrap": ext_kafka, "pid": None, "alive": None}
        if ext_kafka
        else embedded["broker"]
    )
    return status
