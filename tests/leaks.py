"""What a test session must not leave running (issue #18): checked once, at the session's end,
after every fixture was torn down (tests/conftest.py ``pytest_sessionfinish``).

- Kafka clients not closed: a producer or consumer object still alive keeps librdkafka
  threads reconnecting to a broker that was stopped long ago (seen in CI logs: producers of
  services of earlier tests, every few seconds until the run ended).
- Threads running project code (services, tails, fetchers, fake servers of the tests).
- Processes: descendants of this process, and any process whose command line names a
  temporary AWET home or pytest temp directory of this session (an orphan reparented to
  init after its starter died is not a descendant any more).

Each finding names the thing (client id / service, thread name and target, pid and command
line) so the test that started it can be found.
"""
from __future__ import annotations

import gc
import threading
import types
from collections.abc import Iterable

PROJECT_MODULES = ("live", "awet_kafka", "awet_dagster", "awet_cli", "assets", "jobs", "sensors", "resources", "tests",
                   "benchmarks")


def _ours(module: str | None) -> bool:
    return bool(module) and module.split(".", 1)[0] in PROJECT_MODULES


def _owner(obj: object) -> object | None:
    """The object whose attribute holds ``obj`` (one level through its ``__dict__``), or a frame."""
    for ref in gc.get_referrers(obj):
        if isinstance(ref, types.FrameType):
            return ref
        if isinstance(ref, dict):
            for owner in gc.get_referrers(ref):
                if getattr(owner, "__dict__", None) is ref:
                    return owner
    return None


def _describe_owner(owner: object | None) -> str:
    if owner is None:
        return "held by no project object (a module global or container)"
    if isinstance(owner, types.FrameType):
        return f"held by a frame of {owner.f_code.co_qualname} ({owner.f_code.co_filename}:{owner.f_lineno})"
    label = getattr(owner, "client_id", None) or getattr(owner, "name", None)
    cls = type(owner)
    return f"held by {cls.__module__}.{cls.__qualname__}" + (f" {label!r}" if label else "")


def open_kafka_clients() -> list[str]:
    """Producers and consumers that are alive and not closed."""
    from confluent_kafka import Consumer, Producer

    gc.collect()
    found = []
    for obj in gc.get_objects():
        if isinstance(obj, Producer):
            try:
                len(obj)
            except RuntimeError:  # "Producer has been closed"
                continue
            found.append(f"Kafka producer {_describe_owner(_owner(obj))}")
        elif isinstance(obj, Consumer):
            try:
                obj.assignment()
            except RuntimeError:  # "Consumer closed"
                continue
            found.append(f"Kafka consumer {_describe_owner(_owner(obj))}")
    return found


def _target_module(thread: threading.Thread) -> str | None:
    target = getattr(thread, "_target", None)
    if target is None:
        return type(thread).__module__ if type(thread) is not threading.Thread else None
    owner = getattr(target, "__self__", None)
    if owner is not None and not isinstance(owner, types.ModuleType):
        # A socketserver's serve_forever: whose server it is shows in its handler class.
        handler = getattr(owner, "RequestHandlerClass", None)
        return (handler or type(owner)).__module__
    return getattr(target, "__module__", None)


def project_threads() -> list[str]:
    """Threads still running project code (or any non-daemon thread: it would hold the exit)."""
    out = []
    for t in threading.enumerate():
        if t is threading.main_thread() or not t.is_alive():
            continue
        module = _target_module(t)
        if _ours(module) or not t.daemon:
            out.append(f"thread {t.name!r} (target in {module}, daemon={t.daemon})")
    return out


def stray_processes(roots: Iterable[str]) -> list[str]:
    """Live descendants of this process, and processes whose command line names one of ``roots``."""
    import psutil

    roots = [r for r in roots if r]
    me = psutil.Process()
    seen: dict[int, str] = {}

    def note(p: psutil.Process, why: str) -> None:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                return
            cmd = " ".join(p.cmdline())[:200]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        seen.setdefault(p.pid, f"process {p.pid} ({why}): {cmd}")

    for child in me.children(recursive=True):
        note(child, "a descendant of the test session")
    if roots:
        for p in psutil.process_iter(["cmdline"]):
            if p.pid == me.pid:
                continue
            cmd = " ".join(p.info.get("cmdline") or ())
            if any(r in cmd for r in roots):
                note(p, "runs in this session's temporary directories")
    return list(seen.values())


def leftovers(roots: Iterable[str]) -> list[str]:
    """Everything the session left running; empty when it stopped what it started."""
    return [*open_kafka_clients(), *project_threads(), *stray_processes(roots)]

