"""Servers owned by one process (a test session, a benchmark) die with it.

``awet infra up`` leaves its servers running on purpose (``awet ui`` and ``awet status`` use
them afterwards). A test session or a benchmark starts its own in a temporary home instead,
and those must not outlive it, however it ends:

* a normal end or an exception: the ``finally`` of ``owned_home`` stops them;
* SIGTERM / SIGINT: ``terminate_on_signals`` turns them into ``SystemExit`` /
  ``KeyboardInterrupt`` in the main thread, so the same ``finally`` runs;
* SIGKILL (or a hang killed by ``timeout -s KILL``): a guard process, started in its own
  session, polls the owner's pid and runs ``infra_down`` on the home once it is gone, then
  removes the temporary directory. ``infra_down`` also finds a Kafka JVM of that home whose
  pid file was never written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

_GUARD = """
import os, shutil, sys, time
from pathlib import Path
import psutil
owner, home, remove = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
while alive(owner):
    time.sleep(0.5)
from awet_dagster.config import load_config
from awet_dagster.infra import infra_down
try:
    infra_down(load_config(environ={"AWET_ENV": "test", "AWET_HOME": str(home)}))
finally:
    if remove:
        shutil.rmtree(home.parent, ignore_errors=True)
"""


def start_guard(home: Path, *, owner_pid: int | None = None, remove_parent: bool = True) -> subprocess.Popen:
    """Start the guard of ``home`` (see module doc); kill it once the owner cleaned up itself."""
    home.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[2]  # the checkout, for a non-installed tree
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)}
    log = open(home / "guard.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _GUARD, str(owner_pid or os.getpid()), str(home), "1" if remove_parent else "0"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, env=env,
        )
    finally:
        log.close()


def stop_guard(guard: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        guard.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        guard.wait(10)


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143) and SIGINT KeyboardInterrupt in the main
    thread, so ``finally`` blocks stop what was started. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _term(signum, _frame):
        raise SystemExit(128 + signum)

    old_term = signal.signal(signal.SIGTERM, _term)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


def scratch_home(prefix: str = "awet-") -> Path:
    """A fresh AWET home path (not created) in a new directory directly under the temp dir.

    Not under pytest's tmp_path: when tests run as root the embedded PostgreSQL runs as an
    unprivileged user, and each pytest session re-tightens /tmp/pytest-of-<user> to 0700,
    cutting a concurrent session's server off its data directory.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix))
    SCRATCH_ROOTS.append(root)
    return root / "awet"


#: Every directory ``scratch_home`` made in this process (a test session checks at its end that
#: no process still runs in one: tests/leaks.py).
SCRATCH_ROOTS: list[Path] = []


@contextlib.contextmanager
def owned_home(prefix: str = "awet-") -> Iterator[Path]:
    """A temporary AWET home whose servers are stopped when the block ends, on SIGTERM/SIGINT,
    or (by the guard) when this process is killed; the directory is removed afterwards."""
    from awet_dagster.config import load_config
    from awet_dagster.infra.manager import infra_down

    home = scratch_home(prefix)
    guard = start_guard(home)
    try:
        with terminate_on_signals():
            yield home
    finally:
        try:
            infra_down(load_config(environ={"AWET_ENV": "test", "AWET_HOME": str(home)}))
        finally:
            stop_guard(guard)
            shutil.rmtree(home.parent, ignore_errors=True)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux
    ``PR_SET_PDEATHSIG``), so a child started by a test or a benchmark never outlives it;
    elsewhere a thread polls the parent pid. Call it first thing in the child."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(1, int(sig), 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before the call
                os.kill(os.getpid(), sig)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        import time

        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def stop_session_children(grace_s: float = 5.0) -> int:
    """SIGTERM every descendant of this process that runs in this process's session (Dagster
    step processes, a ``dagster dev``), SIGKILL those still alive after ``grace_s``; returns how
    many there were. Servers started detached (their own session: the managed PostgreSQL and
    Kafka under ``.awet/``) are left running, as after a normal end."""
    import psutil

    me = psutil.Process()
    sid = os.getsid(0)
    kids = []
    for child in me.children(recursive=True):
        try:
            if os.getsid(child.pid) == sid:
                kids.append(child)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    for child in kids:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(kids, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(alive, timeout=5)
    return len(kids)


_GROUP_GUARD = """
import os, signal, sys, time
owner, pgid = int(sys.argv[1]), int(sys.argv[2])
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return True
while alive(owner):
    time.sleep(0.5)
for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        break
    time.sleep(3)
"""


def kill_group_when_owner_dies(pgid: int, *, owner_pid: int | None = None) -> subprocess.Popen:
    """A watcher (own session) that SIGTERMs, then SIGKILLs, process group ``pgid`` once the
    owner is gone: for a tool such as ``dagster dev`` whose children ignore their parent's
    death. Kill the watcher when the group was stopped the normal way."""
    return subprocess.Popen([sys.executable, "-c", _GROUP_GUARD, str(owner_pid or os.getpid()), str(pgid)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def stop_group(pgid: int, grace_s: float = 5.0) -> None:
    """SIGTERM process group ``pgid``, SIGKILL it after ``grace_s`` if anything is left."""
    import time

    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
