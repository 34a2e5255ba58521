"""Process helpers: pid files, liveness, detached start, bounded termination.

Pid files are small JSON documents ``{"pid", "create_time", "name", ...}``. The process
creation time is stored next to the pid so that a recycled pid (same number, other
process) is recognised as *stale* rather than mistaken for our server.

A zombie counts as dead: on container images whose pid 1 does not reap orphans, a
stopped server stays in the process table as a zombie forever, and it holds no port,
socket or file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import psutil

# Tolerance when comparing a stored create_time with psutil's (float rounding).
_CREATE_TIME_TOLERANCE_S = 1.0

# Servers started by this Python process (see start_detached).
_CHILDREN: dict[int, subprocess.Popen] = {}


class InfraError(RuntimeError):
    """A local-infrastructure operation failed; the message says what to do."""


@dataclass
class PidRecord:
    pid: int
    create_time: float
    name: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def process_create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def is_alive(pid: int | None, create_time: float | None = None) -> bool:
    """True when ``pid`` runs, is not a zombie and (if given) was created at ``create_time``."""
    if not pid or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time is not None and abs(proc.create_time() - create_time) > _CREATE_TIME_TOLERANCE_S:
            return False  # pid was recycled by an unrelated process
        return True
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        # Exists but belongs to someone else: cannot be a process we started.
        return create_time is None


def write_pid_file(path: Path, record: PidRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=2))
    tmp.replace(path)  # atomic: a reader never sees half a file


def read_pid_file(path: Path) -> PidRecord | None:
    """Parse a pid file; a missing or corrupt file gives None."""
    try:
        data = json.loads(path.read_text())
        return PidRecord(
            pid=int(data["pid"]),
            create_time=float(data["create_time"]),
            name=str(data.get("name", "")),
            extra=dict(data.get("extra") or {}),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


def live_record(path: Path) -> PidRecord | None:
    """Return the pid file's record if its process is alive; remove a stale file."""
    rec = read_pid_file(path)
    if rec is not None and is_alive(rec.pid, rec.create_time):
        return rec
    if path.exists():
        path.unlink(missing_ok=True)  # stale (dead/recycled pid) or corrupt
    return None


def wait_dead(pid: int, timeout_s: float, create_time: float | None = None) -> bool:
    """Wait (bounded) until the process is gone; reap it if it is our child."""
    deadline = time.monotonic() + timeout_s
    while True:
        # Reap our own children so they don't linger as zombies.
        child = _CHILDREN.get(pid)
        if child is not None and child.poll() is not None:
            _CHILDREN.pop(pid, None)
        if not is_alive(pid, create_time):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def terminate(
    pid: int,
    *,
    timeout_s: float = 10.0,
    create_time: float | None = None,
    first_signal: int = signal.SIGTERM,
    kill_timeout_s: float = 5.0,
) -> bool:
    """Send ``first_signal``, wait up to ``timeout_s``, then SIGKILL and wait again.

    Returns True when the process is gone. Never touches a recycled pid.
    """
    if not is_alive(pid, create_time):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first_signal)
    if wait_dead(pid, timeout_s, create_time):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return wait_dead(pid, kill_timeout_s, create_time)


def start_detached(
    cmd: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> PidRecord:
    """Start ``cmd`` in its own session so it outlives the caller and ignores its Ctrl-C.

    stdin is /dev/null and stdout/stderr append to ``log_path``: no pipe to the caller
    that could fill up or break when the caller exits.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(cwd) if cwd else None,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )
    # Keep the Popen object: dropping it makes Python warn "subprocess is still running".
    # While this process lives the server is our child, and wait_dead() reaps it.
    _CHILDREN[proc.pid] = proc
    ct = process_create_time(proc.pid) or time.time()
    return PidRecord(pid=proc.pid, create_time=ct, name=Path(cmd[0]).name)


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tcp_ready(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_tcp(
    host: str,
    port: int,
    *,
    timeout_s: float,
    pid: int | None = None,
    what: str = "server",
    log_path: Path | None = None,
) -> None:
    """Wait until ``host:port`` accepts TCP connections; fail fast if ``pid`` dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if tcp_ready(host, port, timeout_s=0.5) and (pid is None or listens_on(pid, port)):
            return
        if pid is not None and wait_dead(pid, 0):
            raise InfraError(f"{what} (pid {pid}) exited during start-up.{log_tail(log_path)}")
        time.sleep(0.1)
    raise InfraError(
        f"{what} did not accept connections on {host}:{port} within {timeout_s}s.{log_tail(log_path)}"
    )


def listens_on(pid: int, port: int) -> bool:
    """True when ``pid`` has a listening socket on ``port``.

    Guards against a race: another program may take the free port we probed, and a TCP
    connect would then succeed against *it* while our server dies on "address in use".
    """
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.AccessDenied:
        return is_alive(pid)  # cannot inspect: fall back to liveness
    except psutil.NoSuchProcess:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


def log_tail(log_path: Path | None, lines: int = 20) -> str:
    """Last lines of a log file, formatted for an error message ('' if unavailable)."""
    if log_path is None or not log_path.exists():
        return ""
    try:
        text = log_path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\nLast lines of {log_path}:\n" + "\n".join(text)


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (bounded wait), e.g. two `awet infra up` at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise InfraError(
                        f"Another `awet infra` command holds {path} for more than {timeout_s}s; "
                        "wait for it to finish or remove the file if no such command runs."
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
