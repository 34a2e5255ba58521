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

import inspect
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from awet_dagster.contracts.topology import LOOP_NODES, OPTIONAL_NODES, group_inputs
from live.bus import BusService, RetryLater, RunStats

log = logging.getLogger("awet.live.runner")

ServiceFactory = Callable[..., BusService]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    factory: ServiceFactory | str  # callable or lazy "module:attribute"
    description: str = ""
    #: "bus": a BusService (gets the bus metrics hook); "thread": any object with
    #: ``run(max_messages=, timeout_s=) -> RunStats``, ``stop()`` and ``close()`` (lag monitor).
    kind: str = "bus"
    #: "many": instances of one group may run side by side (partitions are split between
    #: them; per-key state is rebuilt when they move); "one": a second instance of the group
    #: refuses to start (``live.single_instance``). ``why``: the reason, said to the operator.
    instances: str = "many"
    why: str = ""

    def resolve(self) -> ServiceFactory:
        factory = self.factory
        if isinstance(factory, str):
            import importlib

            module, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
        return factory

    def accepts(self, keyword: str) -> bool:
        """Whether the factory takes ``keyword`` explicitly (not through ``**kwargs``)."""
        try:
            params = inspect.signature(self.resolve()).parameters
        except (TypeError, ValueError):
            return False
        p = params.get(keyword)
        return p is not None and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)

    def build(self, cfg: Any, endpoints: Any, **overrides: Any) -> BusService:
        return self.resolve()(cfg, endpoints, **overrides)


# Lazy paths: `awet live --help` must not import psycopg/polars for every service.
_KEYED = "per-symbol state, dropped and warmed up again from the bars table when partitions move"
_REGISTRY: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec("persist_bars", "live.services.persist_bars:build", "market.raw -> bars table",
                    why="idempotent upserts keyed by (symbol, bar type, ts); no state"),
        ServiceSpec("features", "live.services.features:build", "market.raw -> engineered", why=_KEYED),
        ServiceSpec("lean_alpha", "live.services.lean_alpha:build", "market.raw -> alpha.signals", why=_KEYED),
        ServiceSpec("inference", "live.services.inference:build", "engineered -> predictions (champion model)",
                    why="per-symbol feature windows, rebuilt from the bars table when partitions move"),
        ServiceSpec("signal", "live.services.signal:build",
                    "market.raw + predictions (+ alpha.signals) -> signals.scored, signals table",
                    why=_KEYED + "; forecasts and alphas are read from every partition"),
        ServiceSpec("risk", "live.services.risk:build", "signals.scored (+ exec.done) -> risk.approved|rejected",
                    instances="one",
                    why="the account-wide limits (exposure, CVaR, daily loss, drawdown, sector cap, kill "
                        "switch) need every signal of the account in one book"),
        ServiceSpec("execution", "live.services.execution:build",
                    "risk.approved + exec.exits + market.raw -> exec.orders, exec.done", instances="one",
                    why="one account's orders go out in one sequence (risk.approved has one partition) and "
                        "the paper simulator's book lives in the process"),
        ServiceSpec("exit_monitor", "live.services.exit_monitor:build", "market.raw (+ exec.done) -> exec.exits",
                    instances="one",
                    why="the exit state of every position (peak, bars held) is rebuilt from the fills only "
                        "when it starts"),
        ServiceSpec("persist_sentiment", "live.services.persist_sentiment:build",
                    "social.sentiment -> reddit_mentions table (beside `awet ingest --source reddit`)",
                    why="idempotent upserts keyed by (symbol, bucket, ts); no state"),
        ServiceSpec("lag_monitor", "live.services.lag_monitor:build_service",
                    "consumer lag of the live groups -> awet_consumer_lag (no bus)", kind="thread",
                    why="it only reads the groups' committed offsets; each instance exports the same figures"),
    )
}


def register_service(name: str, factory: ServiceFactory | str, description: str = "", kind: str = "bus",
                     instances: str = "many", why: str = "") -> None:
    """Add or replace a service."""
    _REGISTRY[name] = ServiceSpec(name, factory, description, kind, instances, why)


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

    ``metrics`` (a ``live.metrics.AwetMetrics``; created when only ``metrics_port`` is
    given) wires every service's metrics (module docstring). ``metrics_port`` (0 = any
    free port) serves them on ``metrics_host`` (default ``cfg.observability.metrics_host``)
    for the duration of the run; a port that cannot be bound raises ``MetricsPortError``
    before any service starts, or only logs a warning when ``metrics_required`` is False.

    ``shared_fetch`` (default ``cfg.kafka.shared_fetch``): services of this run consuming the
    same input topics read one shared fetch of them (``live.shared_fetch``).
    """
    names = list(names) if names else list(available_services())
    specs = [service_spec(n) for n in names]  # unknown names fail before anything starts
    for spec in specs:
        # Import every factory here, in one thread: services importing the same modules
        # lazily in their own threads can hit Python's import deadlock detection
        # (measured: _DeadlockError on awet_dagster.execution.ids, a lost start).
        spec.resolve()
    if endpoints is None:
        from awet_dagster.infra import resolve_endpoints

        endpoints = resolve_endpoints(cfg)  # InfraError names the command to run
    overrides = overrides or {}
    stop = stop_event or threading.Event()
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None
    sups: list[_Supervisor] = []
    # Single-instance services take their lock before anything starts: a second instance
    # refuses at once, with the reason (SingleInstanceError), and starts nothing.
    if shared_fetch is None:
        shared_fetch = bool(getattr(getattr(cfg, "kafka", None), "shared_fetch", False))
    fetches = _shared_fetches(specs, overrides) if shared_fetch else None
    try:
        locks = _instance_locks(specs, cfg, endpoints, overrides, fetches)
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
            from live.metrics import AwetMetrics

            metrics = AwetMetrics()
        for spec in specs:
            kw = dict(overrides.get(spec.name, {}))
            if fetches is not None and spec.kind == "bus" and fetches.shares(_inputs_of(spec.name, kw)):
                kw.setdefault("shared_fetch", fetches)
            on_up = None
            if metrics is not None:
                svc_metrics = metrics.service(spec.name)
                on_up = svc_metrics.set_up
                _wire_metrics(spec, kw, svc_metrics)
            sups.append(_Supervisor(
                spec, lambda spec=spec, kw=kw: spec.build(cfg, endpoints, **kw), stop, max_messages, deadline,
                max_restarts, backoff_s, max_backoff_s, stop_all, on_up,
            ))
        bus_sups = [s for s in sups if s.spec.kind == "bus"]
        aux_sups = [s for s in sups if s.spec.kind != "bus"]

        server = None
        if metrics_port is not None:
            server = _serve_metrics(metrics, metrics_port, metrics_host or _metrics_host(cfg), sups, stop,
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


def service_inputs(name: str, kw: Mapping[str, Any]) -> tuple[str, ...]:
    """Input topics (consumed under the service's group) of service ``name`` built with factory
    keywords ``kw`` (() if unknown): the topics its lag is measured on."""
    return _inputs_of(name, kw)


def _inputs_of(name: str, kw: Mapping[str, Any]) -> tuple[str, ...]:
    """Input topics of service ``name`` built with factory keywords ``kw`` (() if unknown)."""
    defaults = SERVICE_INPUTS.get(name)
    if defaults is None:
        return ()
    keys = _INPUT_KWARGS.get(name, ("input_topic",))
    return tuple(kw.get(k, d) for k, d in zip(keys, defaults, strict=True))


def _instance_locks(specs: Sequence[ServiceSpec], cfg: Any, endpoints: Any,
                    overrides: Mapping[str, Mapping[str, Any]], fetches: Any) -> list[Any]:
    """The group locks of ``live.single_instance``: exclusive for single-instance services and
    for those reading through the shared fetch (standalone, not group members), shared for
    group members that may scale out."""
    from live.kafka_settings import group_id
    from live.single_instance import InstanceLock

    prefix = getattr(getattr(cfg, "kafka", None), "group_prefix", "awet")
    held: list[Any] = []
    try:
        for spec in specs:
            if spec.kind != "bus" or not getattr(endpoints, "database_url", None):
                continue
            kw = overrides.get(spec.name, {})
            group = kw.get("group") or group_id(prefix, spec.name)
            standalone = fetches is not None and fetches.shares(_inputs_of(spec.name, kw))
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


def _shared_fetches(specs: Sequence[ServiceSpec], overrides: Mapping[str, Mapping[str, Any]]) -> Any:
    """A SharedFetches for the input topic sets that two or more bus services consume, or None."""
    from collections import Counter

    from live.shared_fetch import SharedFetches

    counts = Counter(frozenset(_inputs_of(s.name, overrides.get(s.name, {}))) for s in specs if s.kind == "bus")
    shared = {k: n for k, n in counts.items() if k and n >= 2}
    return SharedFetches(shared) if shared else None


class MetricsPortError(RuntimeError):
    """The /metrics + /healthz endpoint could not bind its address (port taken...)."""


def _metrics_host(cfg: Any) -> str:
    return getattr(getattr(cfg, "observability", None), "metrics_host", None) or "127.0.0.1"


def _chain(*hooks: Callable[[Any], None]) -> Callable[[Any], None]:
    def on_metrics(sample: Any) -> None:
        for hook in hooks:
            hook(sample)

    return on_metrics


def _wire_metrics(spec: ServiceSpec, kw: dict[str, Any], svc_metrics: Any) -> None:
    """Add ``svc_metrics`` to a service's factory keywords (in place)."""
    if spec.kind == "bus":
        prev = kw.get("on_metrics")
        if prev is None and kw.get("tracker") is not None:
            # The factory would set the tracker's hook itself (setdefault): chain it here.
            prev = kw["tracker"].hook(spec.name)
        kw["on_metrics"] = svc_metrics if prev is None else _chain(prev, svc_metrics)
    if spec.accepts("metrics"):
        kw.setdefault("metrics", svc_metrics)


def _serve_metrics(metrics: Any, port: int, host: str, sups: Sequence[_Supervisor], stop: threading.Event, *,
                   required: bool) -> Any:
    from live.metrics import start_metrics_server

    def health() -> tuple[bool, str]:
        states = {s.spec.name: s.state for s in sups}
        ok = not stop.is_set() and all(st in ("starting", "running", "restarting") for st in states.values())
        return ok, ("ok " if ok else "unhealthy ") + " ".join(f"{n}={st}" for n, st in states.items())

    try:
        server = start_metrics_server(port, metrics, host=host, health=health)
    except OSError as exc:
        if required:
            raise MetricsPortError(f"cannot serve /metrics on {host}:{port}: {exc}") from exc
        log.warning("metrics endpoint disabled: cannot bind %s:%d: %s", host, port, exc)
        return None
    log.info("serving /metrics and /healthz on %s", server.url)
    return server


# --------------------------------------------------------------------------- drain tracking
#: Input topics of each registered service (default names), for LoopTracker: the topology table.
SERVICE_INPUTS: dict[str, tuple[str, ...]] = group_inputs()


class LoopTracker:
    """Tells when an in-process loop has DRAINED: every consumer has consumed everything
    produced to its topics (by the services, counted through the bus metrics hook, plus
    what was published from outside, ``add_external``), no batch is in flight, and every
    side reader (``TopicTail``) has read what was produced since ``start_ms``.

    ``hook(service, topics)`` is the service's ``on_metrics``. Counting starts at
    construction; side readers count messages with a Kafka timestamp >= ``start_ms``.

    A service's consumed and produced messages are counted when its bus CHECKPOINTS them
    (outputs acknowledged, offsets committed) and dropped when its run fails
    (``run_failures``): the supervisor's rebuilt service consumes that input again and
    produces its outputs again, so counting the failed attempt too would double the
    outputs expected downstream (never drained) and the input seen (drained too early).
    A message consumed again after a checkpoint whose commit failed (the group rebalanced,
    e.g. a broker restart: UNKNOWN_MEMBER_ID) is recognised by its offset (at or below the
    highest one counted for its partition) and not counted twice: counted twice, the loop
    would look drained while a new message is still unread (measured: a lockstep replay on
    a Kafka SIGKILLed mid-run then published the next bars early and traded differently).
    """

    def __init__(self) -> None:
        self.start_ms = int(time.time() * 1000)
        self._lock = threading.Lock()
        self.consumed: dict[tuple[str, str], int] = {}
        self.produced: dict[str, int] = {}
        self.dead_letters: dict[str, int] = {}
        self.inflight: dict[str, int] = {}
        self.tails: dict[str, Any] = {}
        #: Per side reader, per topic: read by earlier readers from logs that no longer exist.
        self._tail_gone: dict[str, dict[str, int]] = {}
        self._counted_max: dict[str, dict[tuple[str, int], int]] = {}

    def hook(self, service: str, topics: Sequence[str] | None = None) -> Callable[[Any], None]:
        with self._lock:
            self.inflight.setdefault(service, 0)
            for t in topics or ():
                self.consumed.setdefault((service, t), 0)
        lock, consumed, produced, inflight, dead = (self._lock, self.consumed, self.produced, self.inflight,
                                                    self.dead_letters)

        # Since the service's last checkpoint (only its own thread calls the hook: no lock).
        pending_in: dict[str, int] = {}
        pending_out: dict[str, int] = {}
        # (topic, partition) -> highest offset checkpointed; kept across a rebuilt service's new hook.
        counted_max = self._counted_max.setdefault(service, {})
        pending_max: dict[tuple[str, int], int] = {}  # ... consumed since the last checkpoint

        def on_metrics(sample: Any) -> None:
            name = sample.name
            if name == "messages_in":
                topic = sample.topic
                inflight[service] = 1  # an existing key: safe next to lagging()'s locked read
                offset = getattr(sample, "offset", -1)
                if offset >= 0:
                    key = (topic, sample.partition)
                    if offset <= max(counted_max.get(key, -1), pending_max.get(key, -1)):
                        return  # a redelivery of a message already counted
                    pending_max[key] = offset
                pending_in[topic] = pending_in.get(topic, 0) + 1
            elif name == "messages_out":
                topic = sample.topic
                pending_out[topic] = pending_out.get(topic, 0) + 1
            elif name == "checkpoint_seconds":  # everything consumed is handled, stored, committed
                with lock:
                    for topic, n in pending_in.items():
                        consumed[service, topic] = consumed.get((service, topic), 0) + n
                    for topic, n in pending_out.items():
                        produced[topic] = produced.get(topic, 0) + n
                    inflight[service] = 0
                counted_max.update(pending_max)
                pending_in.clear()
                pending_out.clear()
                pending_max.clear()
            elif name == "run_failures":  # consumed again (and re-produced) by the rebuilt service
                pending_in.clear()
                pending_out.clear()
                pending_max.clear()
                with lock:
                    inflight[service] = 0
            elif name == "dead_letters":
                with lock:
                    dead[sample.topic] = dead.get(sample.topic, 0) + 1

        return on_metrics

    def add_external(self, topic: str, n: int) -> None:
        with self._lock:
            self.produced[topic] = self.produced.get(topic, 0) + n

    def add_tail(self, name: str, tail: Any) -> None:
        """Track ``tail`` as the side reader ``name`` (replacing the one of a rebuilt service).

        A replacement re-reads its topics from the beginning, but only the logs that still
        exist: what the previous reader counted from a log that is gone (the topic was
        recreated: different topic id, or found recreated by the old reader) stays counted.
        """
        with self._lock:
            prev = self.tails.get(name)
            if prev is not None and prev is not tail:
                gone = self._tail_gone.setdefault(name, {})
                for topic in prev.topics:
                    counted = prev.consumed_since[topic]
                    if prev.topic_ids.get(topic) == getattr(tail, "topic_ids", {}).get(topic):
                        counted -= prev.log_consumed_since[topic]  # that log is read again
                    gone[topic] = gone.get(topic, 0) + counted
            self.tails[name] = tail

    def snapshot(self) -> dict[str, Any]:
        """The counts ``lagging`` compares, as plain data (picklable: a loop split over
        processes merges the snapshots of its parts, see ``lagging_of``)."""
        with self._lock:
            snap: dict[str, Any] = {"inflight": dict(self.inflight), "consumed": dict(self.consumed),
                                    "produced": dict(self.produced)}
            tails = list(self.tails.items())
            gone = {name: dict(g) for name, g in self._tail_gone.items()}
        snap["tails"] = {name: {topic: tail.consumed_since[topic] + gone.get(name, {}).get(topic, 0)
                                for topic in tail.topics} for name, tail in tails}
        return snap

    def lagging(self) -> list[str]:
        """What is not drained yet (empty = drained)."""
        return lagging_of([self.snapshot()])

    def wait_drained(self, timeout_s: float, poll_s: float = 0.005, settle_s: float = 0.0,
                     stop_event: threading.Event | None = None) -> bool:
        """True once drained (and still drained ``settle_s`` later); False after ``timeout_s``
        or as soon as ``stop_event`` is set (SIGTERM must not wait out a drain budget)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if stop_event is not None and stop_event.is_set():
                return False
            if not self.lagging():
                if settle_s <= 0:
                    return True
                time.sleep(settle_s)
                if not self.lagging():
                    return True
            time.sleep(poll_s)
        return False


def produced_of(snapshots: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Messages per topic over the ``LoopTracker.snapshot`` of each part of a loop: produced
    by every part plus those published from outside, whoever counted them."""
    produced: dict[str, int] = {}
    for snap in snapshots:
        for topic, n in snap["produced"].items():
            produced[topic] = produced.get(topic, 0) + n
    return produced


def lagging_of(snapshots: Sequence[Mapping[str, Any]]) -> list[str]:
    """What is not drained yet (empty = drained) in a loop whose services report through the
    ``LoopTracker.snapshot`` of each part (one per process), against ``produced_of`` them."""
    produced = produced_of(snapshots)
    out = []
    for snap in snapshots:
        out.extend(f"{svc}: batch in flight" for svc, n in snap["inflight"].items() if n)
        for (svc, topic), n in snap["consumed"].items():
            want = produced.get(topic, 0)
            if n < want:
                out.append(f"{svc}: {topic} {n}/{want}")
        for name, counts in snap["tails"].items():
            for topic, got in counts.items():
                want = produced.get(topic, 0)
                if got < want:
                    out.append(f"{name} (side): {topic} {got}/{want}")
    return out


_INPUT_KWARGS = {"execution": ("market_topic", "approved_topic", "exits_topic")}

LOOP_SERVICES: tuple[str, ...] = LOOP_NODES
#: What ``awet live --replay`` runs: the loop and the lag monitor watching its groups (the same
#: services as the all-in-one ``awet live``), so a replay exports every metric ``awet live`` does.
REPLAY_SERVICES: tuple[str, ...] = (*LOOP_SERVICES, "lag_monitor")
#: One deployment (compose service, Helm Deployment) each: the ingestion service that feeds
#: market.raw, the loop, and the lag monitor that feeds awet_consumer_lag (tests/test_deploy.py
#: holds compose and the chart to this and checks the topic graph they make).
DEPLOYED_SERVICES: tuple[str, ...] = ("ingest", *LOOP_SERVICES, "lag_monitor")
#: Deployed only when switched on, and then together (compose profile ``reddit``, Helm
#: ``services.<name>.enabled``): Reddit sentiment needs API credentials a fresh deployment lacks.
OPTIONAL_DEPLOYED_SERVICES: tuple[str, ...] = OPTIONAL_NODES


class LoopHandle:
    """Services running in a background thread (``start_loop``); ``stop()`` then ``join()``."""

    def __init__(self, stop: threading.Event, thread: threading.Thread, box: dict[str, Any],
                 tracker: LoopTracker) -> None:
        self.stop_event, self.thread, self._box, self.tracker = stop, thread, box, tracker

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout_s: float = 60.0) -> dict[str, ServiceResult]:
        self.thread.join(timeout_s)
        if "error" in self._box:
            raise self._box["error"]
        return self._box.get("results", {})

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()


def start_loop(cfg: Any, endpoints: Any, *, names: Sequence[str] = LOOP_SERVICES,
               overrides: Mapping[str, Mapping[str, Any]] | None = None, tracker: LoopTracker | None = None,
               timeout_s: float | None = None, **run_kwargs: Any) -> LoopHandle:
    """Run ``names`` with ``run_services`` in a background thread, each wired to ``tracker``.

    My services take ``tracker=`` (they also register their side readers); the others get
    ``on_metrics=tracker.hook(name, inputs)``. Topic/group overrides are merged in. Services of
    kind ``thread`` (the lag monitor) consume nothing: not tracked, stopped with the loop.
    """
    tracker = tracker or LoopTracker()
    merged: dict[str, dict[str, Any]] = {}
    for name in names:
        kw = dict((overrides or {}).get(name, {}))
        if service_spec(name).kind != "bus":
            merged[name] = kw  # nothing consumed, nothing to track
            continue
        if name in ("persist_bars", "features", "lean_alpha"):
            kw.setdefault("on_metrics", tracker.hook(name, list(_inputs_of(name, kw))))
        else:
            kw.setdefault("tracker", tracker)
            tracker.hook(name, list(_inputs_of(name, kw)))
        merged[name] = kw
    stop = threading.Event()
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["results"] = run_services(list(names), cfg, endpoints, overrides=merged, stop_event=stop,
                                          install_signal_handlers=False, timeout_s=timeout_s, **run_kwargs)
        except BaseException as exc:  # noqa: BLE001 - surfaced by join()
            box["error"] = exc

    thread = threading.Thread(target=main, name="live-loop", daemon=True)
    thread.start()
    return LoopHandle(stop, thread, box, tracker)


#: publish_acknowledged flushes in slices of this length to notice a failed message early.
_FLUSH_SLICE_S = 0.5


def publish_acknowledged(producer: Any, topic: str, events: Sequence[Any], *, timeout_s: float = 60.0,
                         renew: Callable[[], Any] | None = None) -> Any:
    """Publish ``events`` to ``topic`` and return once the broker acknowledged every one.

    Survives a broker outage or restart in the middle: every message has its own delivery
    callback, so after a round in which some were reported failed (their
    ``message.timeout.ms`` ran out, the producer died) exactly those are sent again — none
    dropped, none that was acknowledged duplicated. A round in which messages are still in
    flight with no verdict keeps waiting for it: the idempotent producer retries them itself
    and a durable broker (Kafka) de-duplicates the retries, whereas purging them and sending
    them again would duplicate every one that lands meanwhile (measured: a Kafka SIGKILLed
    mid-replay then held each in-flight bar twice). With ``renew``, a producer whose messages
    failed is replaced by ``renew()``: an idempotent producer whose broker lost its
    producer-id state (tansu with memory storage restarted) gets UNKNOWN_PRODUCER_ID until
    ``message.timeout.ms`` and only a new instance (a new InitProducerId) delivers again.
    Without ``renew`` the same producer retries.

    ``producer``: an ``EventProducer``. Returns the producer in use at the end (``renew``'s
    when it was replaced). Raises ``DeliveryError`` after ``timeout_s`` (what is still in
    flight then is purged: it may land, at least once).
    """
    from confluent_kafka import KafkaException

    from live.bus import DeliveryError, event_headers

    deadline = time.monotonic() + timeout_s
    pending = list(events)
    for ev in pending:
        producer.check(topic, ev)
    rounds = 0
    while pending:
        raw = producer.raw
        failed: set[int] = set()
        fatal: BaseException | None = None
        try:
            for i, ev in enumerate(pending):
                value, key, headers = ev.model_dump_json().encode(), ev.kafka_key(), event_headers(ev)

                def on_delivery(err: Any, _msg: Any, i: int = i) -> None:
                    if err is not None:
                        failed.add(i)

                while True:
                    try:
                        raw.produce(topic, value=value, key=key, headers=headers, on_delivery=on_delivery)
                        break
                    except BufferError:  # local queue full: serve delivery reports, bounded
                        if time.monotonic() >= deadline:
                            raise DeliveryError(f"{topic}: producer queue still full after {timeout_s}s") from None
                        raw.poll(0.05)
                    except KafkaException:  # fatal producer: this one and the rest were not sent
                        failed.update(range(i, len(pending)))
                        raise
            # Until every message has a verdict (or one failed), bounded by the deadline.
            remaining = len(pending)
            while remaining and not failed and time.monotonic() < deadline:
                remaining = raw.flush(max(0.0, min(_FLUSH_SLICE_S, deadline - time.monotonic())))
        except (KafkaException, SystemError) as exc:
            # A fatal producer error (e.g. an idempotent producer fenced by a broker that lost
            # its producer ids) is raised from produce/flush/poll, in the middle of serving the
            # delivery reports (a callback running then raises SystemError); the rest is served
            # below. (librdkafka fails every message of a fatal producer.)
            fatal, remaining = exc, 1
        if remaining and fatal is None and not failed:  # the deadline passed with messages in flight
            _drain_reports(raw)
            raise DeliveryError(f"{topic}: {remaining} event(s) not acknowledged within {timeout_s}s")
        if remaining:
            remaining = _drain_reports(raw)  # purge: the rest reports _PURGE_QUEUE / _PURGE_INFLIGHT
        if remaining:  # not accounted for: send all again (duplicates possible, no loss)
            failed = set(range(len(pending)))
        pending = [ev for i, ev in enumerate(pending) if i in failed]
        if not pending:
            break
        rounds += 1
        if time.monotonic() >= deadline:
            raise DeliveryError(f"{topic}: {len(pending)} event(s) not acknowledged within {timeout_s}s "
                                f"({rounds} round(s))")
        log.warning("%s: %d event(s) not acknowledged (round %d%s); sending them again%s", topic, len(pending),
                    rounds, f", producer failed: {fatal!r} caused by {fatal.__cause__!r}" if fatal else "",
                    " with a new producer" if renew is not None else "")
        if renew is not None:
            old, producer = producer, renew()
            if old is not producer and hasattr(old, "close"):
                old.close()  # its messages are accounted for above; its threads would keep reconnecting
        else:
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
    return producer


def _drain_reports(raw: Any, timeout_s: float = 5.0) -> int:
    """Purge what ``raw`` still holds and serve every delivery report left (bounded);
    returns how many messages are still unaccounted for."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            raw.purge()
            remaining = raw.flush(max(0.0, min(1.0, deadline - time.monotonic())))
        except (KafkaException, SystemError):  # a fatal error raised while serving: go on serving
            remaining = len(raw)
        if not remaining or time.monotonic() >= deadline:
            return remaining


def replay_through_loop(producer: Any, bars: Any, tracker: LoopTracker, *, topic: str = "market.raw",
                        lockstep: bool = False, drain_timeout_s: float = 120.0,
                        stop_event: threading.Event | None = None,
                        renew_producer: Callable[[], Any] | None = None) -> tuple[int, bool]:
    """Publish ``bars`` (replay order) to ``topic`` and wait until the loop has drained.

    ``lockstep``: publish one timestamp's bars at a time and wait for the loop to drain
    before the next one — every service then sees the bars of ts t only after everything
    caused by earlier bars (orders, fills, exits) went through, which is the backtest's
    sequencing (used for backtest/live parity). Otherwise everything is published at once.
    Every bar is published until the broker acknowledged it (``publish_acknowledged``:
    across a broker outage or restart, nothing dropped, nothing acknowledged sent twice);
    ``renew_producer`` makes a fresh producer when the one in use stopped delivering.
    Returns (bars published, drained).
    """
    from awet_dagster.streaming import bars_to_events

    stop_event = stop_event or threading.Event()
    deadline = time.monotonic() + drain_timeout_s
    box = [producer]

    def publish(evs: list) -> bool:
        tracker.add_external(topic, len(evs))
        box[0] = publish_acknowledged(box[0], topic, evs, timeout_s=max(deadline - time.monotonic(), 1.0),
                                      renew=renew_producer)
        if stop_event.is_set():
            return False
        return tracker.wait_drained(max(deadline - time.monotonic(), 0.0), stop_event=stop_event)

    if not lockstep:
        events = list(bars_to_events(bars))
        return len(events), publish(events)
    published, current, group = 0, None, []
    for ev in bars_to_events(bars):
        if stop_event.is_set():
            return published, False
        if current is not None and ev.ts != current:
            if not publish(group):
                return published + len(group), False
            published += len(group)
            group = []
        current = ev.ts
        group.append(ev)
    if group:
        ok = publish(group)
        published += len(group)
        return published, ok
    return published, True
