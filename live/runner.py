"""Registry of live services by name, and running one or several in one process.

A factory is ``(cfg, endpoints, **overrides) -> BusService``; ``overrides`` are the
factory's keyword arguments (topic names, group id...), passed per service name.

``run_services`` runs each service in its own thread, supervised:
- SIGTERM/SIGINT (when called from the main thread) stop every service after its
  current batch; ``timeout_s`` and ``max_messages`` bound each run;
- a service whose ``run`` raises (``RetryLater`` from a DB outage, ``DeliveryError``,
  a bug) is closed and REBUILT from its factory after an exponential backoff: a
  BusService whose batch was not committed must not keep polling (its consumer already
  moved past that batch), a fresh consumer resumes from the last committed offset.
  After ``max_restarts`` consecutive failures the whole process stops (fail loudly,
  let the process supervisor decide).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from live.bus import BusService, RunStats

log = logging.getLogger("awet.live.runner")

ServiceFactory = Callable[..., BusService]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    factory: ServiceFactory | str  # callable or lazy "module:attribute"
    description: str = ""

    def build(self, cfg: Any, endpoints: Any, **overrides: Any) -> BusService:
        factory = self.factory
        if isinstance(factory, str):
            import importlib

            module, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
        return factory(cfg, endpoints, **overrides)


# Lazy paths: `awet live --help` must not import psycopg/polars for every service.
_REGISTRY: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec("persist_bars", "live.services.persist_bars:build", "market.raw -> bars table"),
        ServiceSpec("features", "live.services.features:build", "market.raw -> engineered"),
        ServiceSpec("lean_alpha", "live.services.lean_alpha:build", "market.raw -> alpha.signals"),
    )
}


def register_service(name: str, factory: ServiceFactory | str, description: str = "") -> None:
    """Add or replace a service (the lead adds inference, signal, risk, execution...)."""
    _REGISTRY[name] = ServiceSpec(name, factory, description)


def available_services() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def service_spec(name: str) -> ServiceSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; available: {list(_REGISTRY)}") from None


@dataclass
class ServiceResult:
    name: str
    stats: list[RunStats] = field(default_factory=list)  # one per (re)start
    restarts: int = 0
    error: str | None = None  # last error if the service gave up

    @property
    def processed(self) -> int:
        return sum(s.processed for s in self.stats)

    @property
    def dead_lettered(self) -> int:
        return sum(s.dead_lettered for s in self.stats)

    @property
    def produced(self) -> int:
        return sum(s.produced for s in self.stats)


class _Supervisor:
    """Runs one service in a thread, rebuilding it after failures (bounded backoff)."""

    def __init__(self, spec: ServiceSpec, build: Callable[[], BusService], stop: threading.Event,
                 max_messages: int | None, deadline: float | None, max_restarts: int,
                 backoff_s: float, max_backoff_s: float, on_give_up: Callable[[], None]) -> None:
        self.spec = spec
        self.result = ServiceResult(spec.name)
        self._build = build
        self._stop = stop
        self._max_messages = max_messages
        self._deadline = deadline
        self._max_restarts = max_restarts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._on_give_up = on_give_up
        self._current: BusService | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._main, name=f"svc-{spec.name}", daemon=True)

    def stop(self) -> None:
        with self._lock:
            if self._current is not None:
                self._current.stop()

    def _left(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _main(self) -> None:
        failures = 0
        while not self._stop.is_set():
            left = self._left()
            if left is not None and left <= 0:
                return
            remaining = None
            if self._max_messages is not None:
                remaining = self._max_messages - sum(s.consumed for s in self.result.stats)
                if remaining <= 0:
                    return
            try:
                svc = self._build()
            except Exception as exc:  # noqa: BLE001 - a failed build is a failure like any other
                log.exception("%s: could not be built", self.spec.name)
                svc, err = None, exc
            else:
                err = None
            if svc is not None:
                with self._lock:
                    self._current = svc
                if self._stop.is_set():  # stop arrived while building
                    svc.stop()
                try:
                    stats = svc.run(max_messages=remaining, timeout_s=left)
                    self.result.stats.append(stats)
                    log.info("%s: stopped (%s) after %d message(s)", self.spec.name, stats.stopped_by,
                             stats.consumed)
                    return
                except Exception as exc:  # noqa: BLE001 - supervised: rebuild below
                    err = exc
                    log.warning("%s: run failed: %r", self.spec.name, exc)
                finally:
                    with self._lock:
                        self._current = None
                    try:
                        svc.close()
                    except Exception:  # noqa: BLE001
                        log.exception("%s: close failed", self.spec.name)
            failures += 1
            self.result.error = f"{type(err).__name__}: {err}"
            if failures > self._max_restarts:
                log.error("%s: giving up after %d failure(s): %s", self.spec.name, failures, self.result.error)
                self._on_give_up()
                return
            self.result.restarts += 1
            delay = min(self._backoff_s * 2 ** (failures - 1), self._max_backoff_s)
            left = self._left()
            if left is not None:
                delay = min(delay, max(left, 0.0))
            self._stop.wait(delay)


def run_services(
    names: Sequence[str] | None,
    cfg: Any,
    endpoints: Any = None,
    *,
    max_messages: int | None = None,
    timeout_s: float | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    stop_event: threading.Event | None = None,
    install_signal_handlers: bool = True,
    max_restarts: int = 5,
    backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
) -> dict[str, ServiceResult]:
    """Run the named services (None/empty = all registered) until stopped or bounded.

    ``endpoints`` (database_url, kafka_bootstrap) default to ``resolve_endpoints(cfg)``.
    ``max_messages`` and ``timeout_s`` apply to each service. ``overrides[name]`` are
    keyword arguments for that service's factory. Returns one ``ServiceResult`` per name;
    a service that gave up has ``error`` set (and stopped all the others).
    """
    names = list(names) if names else list(available_services())
    specs = [service_spec(n) for n in names]  # unknown names fail before anything starts
    if endpoints is None:
        from awet_dagster.infra import resolve_endpoints

        endpoints = resolve_endpoints(cfg)  # InfraError names the command to run
    overrides = overrides or {}
    stop = stop_event or threading.Event()
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    sups: list[_Supervisor] = []

    def stop_all() -> None:
        stop.set()
        for s in sups:
            s.stop()

    for spec in specs:
        kw = dict(overrides.get(spec.name, {}))
        sups.append(_Supervisor(
            spec, lambda spec=spec, kw=kw: spec.build(cfg, endpoints, **kw), stop, max_messages, deadline,
            max_restarts, backoff_s, max_backoff_s, stop_all,
        ))

    previous: dict[int, Any] = {}
    if install_signal_handlers and threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, _frame: Any) -> None:
            log.info("received %s: stopping %d service(s) after their current batch",
                     signal.Signals(signum).name, len(sups))
            stop_all()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        for s in sups:
            s.thread.start()
        # Join in short slices: the main thread must stay responsive to signals.
        while any(s.thread.is_alive() for s in sups):
            if stop.is_set():
                for s in sups:
                    s.stop()
            for s in sups:
                s.thread.join(0.2)
    finally:
        stop_all()
        for s in sups:
            s.thread.join(30)  # each run returns within a batch + close timeouts
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return {s.spec.name: s.result for s in sups}
