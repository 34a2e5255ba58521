"""Wiring shared by the service factories: Kafka configs from ``cfg.kafka``, DB access."""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import BaseEvent, MarketRawEvent, ScoredSignal, model_for_topic
from awet_dagster.storage.db import connect
from awet_dagster.storage.dead_letters import has_dead_letter, record_dead_letters
from awet_dagster.storage.bar_history import read_last_bars, read_last_bars_many
from awet_dagster.streaming.time_guard import TimeGuard, TimeLimits
from awet_kafka.bus import BusService, Handler, MessageContext
from awet_dagster.streaming.outputs import RetryLater
from awet_kafka.producer import EventProducer
from awet_kafka.settings import consumer_config, group_id, producer_config
from awet_kafka.tail import SideDeadLetters, TopicTail

log = logging.getLogger("awet.live.services")


class LiveService(BusService):
    """A BusService that also owns resources (DB connections) closed with it, and exposes
    its domain object (``component``: writer / engine) for tests and metrics."""

    def __init__(self, *args: Any, resources: Sequence[Any] = (), component: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resources = list(resources)
        self.component = component

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            super().close(timeout_s)
        finally:
            for res in self.resources:
                try:
                    res.close()
                except Exception:  # noqa: BLE001 - closing must not mask the service's error
                    log.exception("%s: closing %r failed", self.name, res)


class DeadLetterRecorder:
    """Every message the service dead-letters, also in the ``dead_letters`` table (topic,
    partition, offset, service, reason, error): what `awet status` counts and an operator
    queries. Buffered per batch and written at the checkpoint, before the offsets are committed,
    idempotently (a redelivered poison message is one row). Best effort: the DLQ topic is the
    record; a database outage here is logged, not retried (the letters are on the topic)."""

    def __init__(self, conn: LazyConnection, service: str) -> None:
        self.conn = conn
        self.service = service
        self._rows: list[tuple] = []
        self.written = 0

    def __call__(self, dlq: str, letter: Any) -> None:
        payload = base64.b64decode(letter.original_value_b64) if letter.original_value_b64 else None
        self._rows.append((letter.original_topic, letter.original_partition, letter.original_offset, letter.reason,
                           payload, self.service, letter.error_type, letter.error, letter.correlation_id, dlq))

    def holds(self, letter: Any) -> bool:
        """The table already has this service's letter for the message (an earlier run sent it)."""
        return has_dead_letter(self.conn.get(), letter.original_topic, letter.original_partition,
                               letter.original_offset, self.service)

    def flush(self) -> int:
        if not self._rows:
            return 0
        rows, self._rows = self._rows, []
        try:
            record_dead_letters(self.conn.get(), rows)
        except psycopg.Error as exc:
            self.conn.reset()
            log.warning("%s: %d dead letter(s) not recorded in the dead_letters table (they are on the DLQ "
                        "topic): %s", self.service, len(rows), exc)
            return 0
        self.written += len(rows)
        return len(rows)


def time_guard(cfg: AwetConfig, *, late_bars: bool = False) -> TimeGuard:
    """The service's time check of its input bars/signals (``awet_dagster.streaming.time_guard``).

    ``late_bars=True`` admits bars older than the symbol's last one (only the future check
    applies): for a writer whose store is an idempotent upsert, where a late bar or a
    re-sent day is a correction to keep, not a step back in a stateful stream."""
    limits = TimeLimits.from_config(cfg)
    if late_bars:
        limits = dataclasses.replace(limits, max_lateness_s=float("inf"))
    return TimeGuard(limits)


def guarded(handler: Handler, guard: TimeGuard) -> Handler:
    """``handler`` behind the time check: a bar or signal outside the limits raises
    ``TimeRejected`` (the bus dead-letters it with the reason) before any state moves.
    Decisions, exits and reports follow bars already checked upstream: not checked again."""

    def handle(event: Any, ctx: Any) -> Any:
        if isinstance(event, (MarketRawEvent, ScoredSignal)):
            guard.admit(event.symbol, getattr(event, "bar_type", "signal"), event.ts, lane_of(ctx))
        return handler(event, ctx)

    return handle


def make_bus(
    cfg: AwetConfig,
    endpoints: Any,
    *,
    name: str,
    topics: Mapping[str, type[BaseEvent]],
    handler: Handler,
    group: str | None = None,
    guard: TimeGuard | None = None,
    before_commit: Callable[[Sequence[MessageContext]], None] | None = None,
    before_batch: Callable[[Sequence[Any]], None] | None = None,
    before_produce: Callable[[Sequence[MessageContext]], None] | None = None,
    resources: Sequence[Any] = (),
    component: Any = None,
    **bus_kwargs: Any,
) -> LiveService:
    """A BusService for ``name`` consuming ``topics`` ({topic: contract}) with cfg's Kafka settings.

    ``topics`` carries the contract explicitly so tests (and deployments) can rename
    topics: a topic name that is not in the registry still decodes as its contract.
    """
    kafka = cfg.kafka
    client = kafka.client_settings()
    prefix = kafka.group_prefix
    cons = consumer_config(
        endpoints.kafka_bootstrap,
        group or group_id(prefix, name),
        client=client,
        consumer=dict(kafka.consumer),
        client_id=f"awet-{name}",
    )
    prod = producer_config(
        endpoints.kafka_bootstrap,
        client=client,
        producer=dict(kafka.producer),
        client_id=f"awet-{name}",
    )
    bus_kwargs.setdefault("batch_size", kafka.batch_size)
    bus_kwargs.setdefault("poll_timeout_s", kafka.poll_timeout_s)
    bus_kwargs.setdefault("flush_timeout_s", kafka.flush_timeout_s)
    bus_kwargs.setdefault("commit_interval_s", kafka.commit_interval_s)
    bus_kwargs.setdefault("commit_max_messages", kafka.commit_max_messages)
    # Per-key state of the component is dropped when partitions move between instances.
    forgets = [f for f in (getattr(component, "forget", None), guard.forget if guard is not None else None) if f]
    bus_kwargs.setdefault("on_rebalance", (lambda: [f() for f in forgets]) if forgets else None)
    if guard is not None:
        handler = guarded(handler, guard)
    # Dead letters also go to the dead_letters table, written at the checkpoint.
    recorder = DeadLetterRecorder(LazyConnection(endpoints.database_url, **db_settings(cfg)), name)
    bus_kwargs.setdefault("on_dead_letter", recorder)
    resources = [*resources, recorder.conn]
    return LiveService(
        name,
        list(topics),
        handler,
        consumer_config=cons,
        producer=prod,  # a config: the bus builds the producer, owns it, closes it with itself
        topic_models=dict(topics),
        before_commit=before_commit,
        before_batch=before_batch,
        before_produce=before_produce,
        resources=resources,
        component=component,
        **bus_kwargs,
    )


def contract_of(topic: str, default: type[BaseEvent]) -> type[BaseEvent]:
    """Registered contract of ``topic``, or ``default`` for an ad-hoc (test) topic name."""
    try:
        return model_for_topic(topic)
    except KeyError:
        return default


def db_settings(cfg: AwetConfig) -> dict[str, Any]:
    return {"connect_timeout_s": cfg.database.connect_timeout_s,
            "statement_timeout_ms": cfg.database.statement_timeout_ms}


class LazyConnection:
    """One psycopg connection per service, opened on first use and reopened after a failure.

    A DB outage must not dead-letter bars (they are fine; the DB is not): callers turn
    ``psycopg.OperationalError`` into ``RetryLater`` so the batch is redelivered later.
    Used from the service's own thread only; the lock just guards ``close`` from another.
    """

    def __init__(self, url: str, **settings: Any) -> None:
        self._url = url
        self._settings = settings
        self._conn: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self._url, **self._settings)
            return self._conn

    def reset(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                finally:
                    self._conn = None

    close = reset


def lane_of(where: MessageContext | Any) -> tuple[str, int]:
    """The time guard's lane: the (topic, partition) a message came from (Kafka orders a
    partition, not a topic), of a handler's ``MessageContext`` or of a raw Kafka message."""
    if isinstance(where, MessageContext):
        return where.topic, where.partition
    return where.topic(), where.partition()


def decoded(batch: Sequence[Any], model: type[BaseEvent],
            skip: Callable[[Any], bool] | None = None) -> Iterator[tuple[Any, Any]]:
    """(message, event) for the messages of a polled batch that decode as ``model``, for a
    batch pre-pass; the others are left to the bus, which dead-letters them when it handles
    them. ``skip(message)`` True: not decoded (cheap pre-filters, e.g. on the key)."""
    for msg in batch:
        if msg.error() is not None or msg.value() is None:
            continue
        if skip is not None and skip(msg):
            continue
        try:
            ev = model.model_validate_json(msg.value())
        except ValueError:  # pydantic's ValidationError
            continue
        yield msg, ev


def unseen_first(batch: Sequence[Any], model: type[BaseEvent], known: Callable[[tuple[str, str]], bool],
                 known_symbol: Callable[[str], bool] | None = None,
                 guard: TimeGuard | None = None) -> dict[tuple[str, str], datetime]:
    """{(symbol, bar_type): ts of its first message in ``batch``} for the keys ``known`` says
    are new: what a batch pre-pass warms up in one query. Messages keyed by a symbol that
    ``known_symbol`` already knows are not decoded (the common case once running). A bar the
    ``guard`` would refuse is not a first bar (warming up "before 2099" would read every bar
    there is and make the real ones look stale)."""

    def skip(msg: Any) -> bool:
        key = msg.key()
        return known_symbol is not None and key is not None and known_symbol(key.decode(errors="replace"))

    first: dict[tuple[str, str], datetime] = {}
    for msg, ev in decoded(batch, model, skip):
        k = (ev.symbol, ev.bar_type)
        if k not in first and not known(k) and (guard is None or guard.admissible(ev.symbol, ev.bar_type, ev.ts, lane_of(msg))):
            first[k] = ev.ts
    return first


def batch_warm_up(engine: Any, conn: LazyConnection, model: type[BaseEvent],
                  guard: TimeGuard | None = None) -> Callable[[Sequence[Any]], None]:
    """A bus ``before_batch`` hook warming a keyed streaming engine (``FeatureEngine``,
    ``AlphaBank``) up for every new symbol of the batch with ONE bars query; a DB outage is
    RetryLater. Keys it misses (none in practice) still warm up one by one in ``_accept``."""
    symbols: set[str] = set()

    def before_batch(batch: Sequence[Any]) -> None:
        first = unseen_first(batch, model, engine.knows, symbols.__contains__, guard)
        if not first:
            return
        with db_outage_is_retry(conn, "bars table unavailable for warm-up"):
            engine.warm_up_many(first, read_many_from(conn))
        symbols.update(s for s, _ in first)

    return before_batch


@contextlib.contextmanager
def db_outage_is_retry(conn: LazyConnection, what: str) -> Iterator[None]:
    """A PostgreSQL outage inside the block resets ``conn`` and becomes ``RetryLater("<what>:
    <error>")``: the batch is redelivered once the database is back, never dead-lettered."""
    try:
        yield
    except psycopg.OperationalError as exc:
        conn.reset()
        raise RetryLater(f"{what}: {exc}") from exc


def read_many_from(conn: LazyConnection) -> Callable[[Mapping[str, datetime], str, int], dict[str, list[dict[str, Any]]]]:
    """``read_last_bars_many`` over ``conn`` (a ``ManyHistoryReader``)."""
    return lambda wanted, bar_type, limit: read_last_bars_many(conn.get(), wanted, bar_type, limit)


def history_reader(conn: LazyConnection) -> Callable[[str, str, datetime, int], list[dict[str, Any]]]:
    """A ``HistoryReader`` over the bars table; DB outages become ``RetryLater``."""

    def read(symbol: str, bar_type: str, before: datetime, limit: int) -> list[dict[str, Any]]:
        with db_outage_is_retry(conn, "bars table unavailable for warm-up"):
            return read_last_bars(conn.get(), symbol, bar_type, before, limit)

    return read


def wait_until(cond: Any, done: Callable[[], bool], timeout_s: float,
               stopping: Callable[[], bool] = lambda: False) -> bool:
    """``cond.wait_for(done, timeout_s)`` (``cond`` held) that also returns, False, within a
    tenth of a second of a stop request: a service asked to stop does not sit out its waits
    (fills, a forecast, an alpha mark) bar after bar (seen: a risk batch kept waiting 2 s a
    bar for 24 s after SIGTERM)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        left = deadline - time.monotonic()
        if left <= 0 or stopping():
            return False
        cond.wait(min(left, 0.1))
    return True


class TailSideInputs:
    """The core's ``SideInputs`` port over a started ``TopicTail``: its condition is the lock
    and what waits are woken by; ``stop_requested`` is set to the bus's stop request once the
    bus exists (a stop cuts a wait short)."""

    def __init__(self, tail: TopicTail) -> None:
        self.tail = tail
        self.stop_requested: Callable[[], bool] = lambda: False

    def lock(self) -> Any:
        return self.tail.cond

    def wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        return wait_until(self.tail.cond, done, timeout_s, self.stop_requested)

    def stopping(self) -> bool:
        return self.stop_requested()


def tail_for(cfg: AwetConfig, endpoints: Any, name: str, topics: Mapping[str, type[BaseEvent]], on_event: Callable[[str, BaseEvent, int], None]) -> TopicTail:
    """A TopicTail with the Kafka client settings of ``cfg.kafka``."""
    kafka = cfg.kafka
    client = kafka.client_settings()
    fetch_wait = kafka.consumer.get("fetch.wait.max.ms")

    reader = f"{name}-tail"
    producer = EventProducer(producer_config(endpoints.kafka_bootstrap, client=client,
                                             producer=dict(kafka.producer), client_id=f"awet-{reader}-dlq"))
    recorder = DeadLetterRecorder(LazyConnection(endpoints.database_url, **db_settings(cfg)), reader)
    letters = SideDeadLetters(reader, producer, recorder,
                              flush_timeout_s=kafka.flush_timeout_s)
    return TopicTail(name, endpoints.kafka_bootstrap, topics, on_event, client=client, fetch_wait_ms=fetch_wait,
                     dead_letters=letters)
