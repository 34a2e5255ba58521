"""Running one or several live services in one process, supervised (the registry:
``live.registry``; the metrics wiring: ``live.service_metrics``).

``run_services`` runs each service in its own thread, supervised:
- SIGTERM/SIGINT (when called from the main thread) stop every service after its
  current batch; ``timeout_s`` and ``max_messages`` bound each run;
- a service whose ``run`` raises (``RetryLater`` from a DB outage, ``DeliveryError``,
  a bug) is closed and REBUILT from its factory after an exponential backoff: a
  BusService whose batch was not committed must not keep polling (its consumer already
  moved past that batch), a fresh consumer resumes from the last committed offset.
  After ``max_restarts`` consecutive failures the whole process stops (fail loudly,
  let the process supervisor decide).

Metrics (``metrics=`` / ``metrics_port=``): every bus service gets ``metrics.service(name)``
as its bus ``on_metrics`` hook (chained after a tracker's or an override's hook), factories
that take a ``metrics`` keyword (risk, execution, inference, lag_monitor) get it too for
their domain metrics, ``awet_service_up{service}`` is 1 while a service's loop runs and 0
while it is built, restarting, stopped or given up, and ``metrics_port`` serves ``/metrics``
+ ``/healthz`` (200 while every service is starting, running or restarting; 503 once one
stopped or gave up, or the process is stopping). Services of kind ``thread`` (the lag
monitor) are not bus services: no bus hook; they are stopped once every bus service of the
run has finished.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.infra import resolve_endpoints
from awet_kafka.bus import BusService, RunStats
from awet_dagster.streaming.outputs import RetryLater
from awet_kafka.settings import group_id
from awet_dagster.observability.metrics import AwetMetrics
from live.registry import ServiceSpec, available_services, service_inputs, service_spec
from live.service_metrics import metrics_host as default_metrics_host
from live.service_metrics import serve_metrics, wire_metrics
from awet_kafka.shared_fetch import SharedFetches
from live.single_instance import InstanceLock

log = logging.getLogger("awet.live.runner")


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


class Supervisor:
    """Runs one service in a thread, rebuilding it after failures (bounded backoff).

    ``state``: starting -> running -> (restarting -> running)* -> stopped | failed.
    ``on_up(bool)`` is told when a run starts (True) and ends (False)."""

    def __init__(self, spec: ServiceSpec, build: Callable[[], BusService], stop: threading.Event,
                 max_messages: int | None, deadline: float | None, max_restarts: int,
                 backoff_s: float, max_backoff_s: float, on_give_up: Callable[[], None],
                 on_up: Callable[[bool], None] | None = None) -> None:
        self.spec = spec
        self.state = "starting"
        self._on_up = on_up
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

    def _up(self, up: bool) -> None:
        if self._on_up is not None:
            try:
                self._on_up(up)
            except Exception:  # noqa: BLE001 - metrics must never break supervision
                log.exception("%s: service_up hook failed", self.spec.name)

    def _main(self) -> None:
        try:
            self._loop()
        finally:
            if self.state != "failed":
                self.state = "stopped"
            self._up(False)

    def _loop(self) -> None:
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
                    self.state = "running"
                    self._up(True)
                    stats = svc.run(max_messages=remaining, timeout_s=left)
                    self.result.stats.append(stats)
                    log.info("%s: stopped (%s) after %d message(s)", self.spec.name, stats.stopped_by,
                             stats.consumed)
                    return
                except RetryLater as exc:
                    if not self._stop.is_set():
                        err = exc
                        log.warning("%s: run failed: %r", self.spec.name, exc)
                    else:  # a stop cut a wait short: its batch is redelivered to the next start
                        log.info("%s: stopped mid-batch (%s); uncommitted input is redelivered", self.spec.name, exc)
                        return
                except Exception as exc:  # noqa: BLE001 - supervised: rebuild below
                    err = exc
                    # The cause matters: a fatal Kafka error raised inside a callback surfaces
                    # as a SystemError whose __cause__ is the KafkaException.
                    log.warning("%s: run failed: %r%s", self.spec.name, exc,
                                f" (caused by {exc.__cause__!r})" if exc.__cause__ is not None else "")
                finally:
                    self._up(False)
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
                self.state = "failed"
                self._on_give_up()
                return
            self.state = "restarting"
            self.result.restarts += 1
            delay = min(self._backoff_s * 2 ** (failures - 1), self._max_backoff_s)
            left = self._left()
            if left is not None:
                delay = min(delay, max(left, 0.0))
            self._stop.wait(delay)


def run_services(
    names: Sequence[str] | None,
    cfg: AwetConfig,
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
    metrics: Any = None,
    metrics_port: int | None = None,
    metrics_host: str | None = None,
    metrics_required: bool = True,
    shared_fetch: bool | None = None,
) -> dict[str, ServiceResult]:
    """Run the named services (None/empty = all registered) until stopped or bounded.

    ``endpoints`` (database_url, kafka_bootstrap) default to ``resolve_endpoints(cfg)``.
    ``max_messages`` and ``timeout_s`` apply to each service. ``overrides[name]`` are
    keyword arguments for that service's factory. Returns one ``ServiceResult`` per name;
    a service that gave up has ``error`` set (and stopped all the others).

    ``metrics`` (a ``awet_dagster.observability.metrics.AwetMetrics``; created when only ``metrics_port`` is
    given) wires every service's metrics (module docstring). ``metrics_port`` (0 = any
    free port) serves them on ``metrics_host`` (default ``cfg.observability.metrics_host``)
    for the duration of the run; a port that cannot be bound raises ``MetricsPortError``
    before any service starts, or only logs a warning when ``metrics_required`` is False.

    ``shared_fetch`` (default ``cfg.kafka.shared_fetch``): services of this run consuming the
    same input topics read one shared fetch of them (``awet_kafka.shared_fetch``).
    """
    names = list(names) if names else list(available_services())
    specs = [service_spec(n) for n in names]  # unknown names fail before anything starts
    for spec in specs:
        # Import every factory here, in one thread: services importing the same modules
        # lazily in their own threads can hit Python's import deadlock detection
        # (measured: _DeadlockError on awet_dagster.execution.ids, a lost start).
        spec.resolve()
    if endpoints is None:
        endpoints = resolve_endpoints(cfg)  # InfraError names the command to run
    overrides = overrides or {}
    stop = stop_event or threading.Event()
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    sups: list[Supervisor] = []
    # Single-instance services take their lock before anything starts: a second instance
    # refuses at once, with the reason (SingleInstanceError), and starts nothing.
    if shared_fetch is None:
        shared_fetch = cfg.kafka.shared_fetch
    fetches = shared_fetches(specs, overrides) if shared_fetch else None
    try:
        locks = instance_locks(specs, cfg, endpoints, overrides, fetches)
    except BaseException:
        if fetches is not None:
            fetches.close()
        raise
    try:
        def stop_all() -> None:
            stop.set()
            for s in sups:
                s.stop()

        if metrics is None and metrics_port is not None:
            metrics = AwetMetrics()
        for spec in specs:
            kw = dict(overrides.get(spec.name, {}))
            if fetches is not None and spec.kind == "bus" and fetches.shares(service_inputs(spec.name, kw)):
                kw.setdefault("shared_fetch", fetches)
            on_up = None
            if metrics is not None:
                svc_metrics = metrics.service(spec.name)
                on_up = svc_metrics.set_up
                wire_metrics(spec, kw, svc_metrics)
            sups.append(Supervisor(
                spec, lambda spec=spec, kw=kw: spec.build(cfg, endpoints, **kw), stop, max_messages, deadline,
                max_restarts, backoff_s, max_backoff_s, stop_all, on_up,
            ))
        bus_sups = [s for s in sups if s.spec.kind == "bus"]
        aux_sups = [s for s in sups if s.spec.kind != "bus"]

        server = None
        if metrics_port is not None:
            server = serve_metrics(metrics, metrics_port, metrics_host or default_metrics_host(cfg), sups, stop,
                                   required=metrics_required)

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
                elif aux_sups and bus_sups and not any(s.thread.is_alive() for s in bus_sups):
                    stop_all()  # the services the lag monitor watches are done: so is it
                for s in sups:
                    s.thread.join(0.2)
        finally:
            stop_all()
            for s in sups:
                s.thread.join(30)  # each run returns within a batch + close timeouts
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if server is not None:
                server.close()
            if fetches is not None:
                fetches.close()
    finally:
        for lock in locks:
            lock.release()
    return {s.spec.name: s.result for s in sups}


def instance_locks(specs: Sequence[ServiceSpec], cfg: AwetConfig, endpoints: Any,
                    overrides: Mapping[str, Mapping[str, Any]], fetches: Any) -> list[Any]:
    """The group locks of ``live.single_instance``: exclusive for single-instance services and
    for those reading through the shared fetch (standalone, not group members), shared for
    group members that may scale out."""
    prefix = cfg.kafka.group_prefix
    held: list[Any] = []
    try:
        for spec in specs:
            if spec.kind != "bus" or not getattr(endpoints, "database_url", None):
                continue
            kw = overrides.get(spec.name, {})
            group = kw.get("group") or group_id(prefix, spec.name)
            standalone = fetches is not None and fetches.shares(service_inputs(spec.name, kw))
            if spec.instances == "one":
                why = f"{spec.name} runs as ONE instance: {spec.why}"
            elif standalone:
                why = (f"here {spec.name} reads the shared fetch of all the services of one process (`awet "
                       f"live`) and does not join its consumer group, so no other instance may run beside "
                       f"it: scale {spec.name} out with `awet live --service {spec.name}` instances only")
            else:
                why = (f"that instance reads the shared fetch of an all-in-one `awet live` and does not "
                       f"join the group; stop it, or run every instance with `awet live --service "
                       f"{spec.name}`")
            shared = spec.instances != "one" and not standalone
            held.append(InstanceLock(endpoints.database_url, spec.name, group, why, shared=shared).acquire())
    except BaseException:
        for lock in held:
            lock.release()
        raise
    return held


def shared_fetches(specs: Sequence[ServiceSpec], overrides: Mapping[str, Mapping[str, Any]]) -> Any:
    """A SharedFetches for the input topic sets that two or more bus services consume, or None."""
    counts = Counter(frozenset(service_inputs(s.name, overrides.get(s.name, {}))) for s in specs if s.kind == "bus")
    shared = {k: n for k, n in counts.items() if k and n >= 2}
    return SharedFetches(shared) if shared else None
