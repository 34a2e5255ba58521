"""The shared at-least-once Kafka loop every live service runs (``BusService``). Publishing is
``awet_kafka.producer`` (``EventProducer``), dead letters ``awet_kafka.dead_letters``.

Size (about 870 lines, over the 400 of docs/conventions.md): the consume -> handle -> produce ->
checkpoint loop and its failure paths (delivery errors, RetryLater, PublishFirst, an orderer's
held messages, rebalances, the commit answers) are one state machine whose invariants are stated here once; split, each part would
restate the other's.

Per batch: poll -> decode (contract of the topic) -> handle -> produce outputs (sent at
once). Per CHECKPOINT - when ``commit_interval_s`` has passed since the first uncommitted
batch, when ``commit_max_messages`` are uncommitted, as soon as the input is idle, and
before ``run`` returns: flush -> ``before_commit`` (everything consumed since the last
checkpoint) -> store those offsets -> commit them asynchronously. Whenever ``run`` returns
(stop, ``max_messages``, timeout) and on ``close``, a final synchronous commit makes sure
everything acknowledged so far is committed.

Why checkpoints instead of a flush + commit per batch: at live rates a poll brings one or
two messages, and waiting for the broker's acks and the DB write after each kept every
hop busy waiting while the next bars queued (measured: bar -> signal p50 20 ms against a
2 ms broker round trip). The guarantee only needs outputs acknowledged before the COMMIT,
not before the next batch is handled.

Guarantees and why:
- Offsets are stored/committed only after every output (and every dead letter) of the
  batches they cover is acknowledged by the broker and ``before_commit`` ran for them. If a
  delivery fails, ``DeliveryError`` is raised and no offset since the last checkpoint is
  stored or committed, so after a restart those batches are consumed again: duplicates are
  possible, loss is not. Downstream consumers must be idempotent on
  ``event_id`` / ``client_order_id``.
- Commit mode: the per-batch commit is asynchronous (``commit(asynchronous=True)`` of the
  offsets stored with ``store_offsets``, after the flush succeeded), so the loop does not
  wait a broker round trip per batch. This is still at-least-once: an async commit that
  fails or is lost (crash before it lands) only moves the committed offset less far, i.e.
  causes redelivery, never loss. Failures are reported by librdkafka's ``on_commit``
  callback (served by the next poll) and counted in ``RunStats.commit_failures`` and the
  ``commit_failures`` metric. ``run`` ends (normal return) and ``close`` end with a
  synchronous commit of the stored offsets, so a stopped service (``stop()``, SIGTERM)
  has committed everything it acknowledged before it exits. The offset store is
  librdkafka's: it only holds offsets of partitions currently assigned (a revoked
  partition's stored offset is dropped), so a commit never moves a partition this
  consumer no longer owns. ``enable.auto.offset.store`` must therefore be false
  (``awet_kafka.settings`` forces it; ``BusService`` refuses true and sets it otherwise).
- A message that cannot be decoded, or whose handler raises, is written to ``<topic>.dlq``
  (a ``DeadLetter`` envelope with the original bytes) and then committed like any other,
  so one poison message never blocks a partition. A handler that wants the message
  redelivered instead (a dependency is down) raises ``RetryLater``: the loop stops
  without committing the batch.
- Batching: the first message is waited for with ``poll`` (returns as soon as one is there),
  the rest of the batch is taken from what librdkafka already fetched with
  ``consume(timeout=0)``. (``consume(n, timeout)`` alone waits for the whole timeout unless
  n messages arrive, which would add the timeout to every idle-time message's latency.)
  ``batch_size`` (default 500) bounds a poll batch; a crash re-delivers at most what was
  consumed since the last checkpoint whose commit landed (``commit_interval_s``, default
  0.1 s, or ``commit_max_messages``, default 5000, worth of input).
- A handler that raises ``PublishFirst`` (its input needs what the held outputs will cause)
  ends the batch BEFORE that message: the outputs so far are published (``before_produce``
  first) and that message with the rest of the batch is handled again as the next batch
  (kept in memory, in order; not consumed twice, counted once; no checkpoint until it is
  handled; dropped with partitions revoked or lost, whose new owner reads them). Offsets only
  ever cover handled messages.
- An ``orderer`` (optional) decides the order messages are handled in across partitions
  (risk: event time, ``live.services._ledger.EventTimeOrderer``): polled messages are
  offered to it and only those it says are ready are handled, in its order; the held ones
  stay in memory (not counted consumed, dropped with partitions revoked or lost), no offset
  is committed at or past a held message, and it is asked again after every poll (a clock
  read beside the input may release them).
- Batch hooks (optional): ``before_batch(messages)`` runs once per polled batch before any
  message is handled (prefetch what the whole batch needs in one query, micro-batch model
  calls); ``before_produce(contexts)`` makes the loop HOLD the batch's outputs until it has
  run, then publish them (a service stores what it decided, e.g. the risk audit, in one
  transaction per batch and still before anything is published). Either may raise
  ``RetryLater``: nothing of the batch is published or committed.
- Every wait is bounded: poll by ``poll_timeout_s``, flush by ``flush_timeout_s``, the
  final synchronous commit and consumer close by librdkafka's ``socket.timeout.ms``.
- Graceful stop: ``stop()`` (or SIGTERM/SIGINT once ``install_signal_handlers()`` ran in the
  main thread) lets the current batch finish, flush and commit, then ``run`` commits
  synchronously and returns.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import ValidationError

from awet_dagster.contracts import BaseEvent, DeadLetter, dlq_topic, model_for_topic
# The handler API: what a handler returns and raises (core types, re-exported here).
from awet_dagster.streaming.outputs import Output, PublishFirst, RetryLater
from awet_kafka.dead_letters import dead_letter_for, decode_failure_reason, send_dead_letter
from awet_kafka.producer import EventProducer

log = logging.getLogger("awet.kafka.bus")


# --------------------------------------------------------------------------- small types
# MessageContext: a slotted class (cheaper than a dataclass, and its headers are lazy).
class MessageContext:
    """Where the event being handled came from (read-only: treat it as immutable).

    Fields: ``service topic partition offset key headers timestamp_ms correlation_id``.
    ``headers`` is built lazily from the Kafka message on first access: converting librdkafka
    headers to Python costs more per message than anything else the loop does besides
    decoding, and most handlers never look at them.
    """

    __slots__ = ("service", "topic", "partition", "offset", "key", "_headers", "timestamp_ms", "correlation_id",
                 "_message")

    _fields = ("service", "topic", "partition", "offset", "key", "headers", "timestamp_ms", "correlation_id")

    def __init__(
        self,
        service: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        headers: tuple[tuple[str, bytes | None], ...] | None,
        timestamp_ms: int | None,
        correlation_id: str,
        message: Message | None = None,
    ) -> None:
        self.service = service
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self._headers = headers  # None: take them from ``message`` when first asked
        self.timestamp_ms = timestamp_ms
        self.correlation_id = correlation_id
        self._message = message

    @property
    def headers(self) -> tuple[tuple[str, bytes | None], ...]:
        headers = self._headers
        if headers is None:
            raw = self._message.headers() if self._message is not None else None
            headers = self._headers = tuple(raw) if raw else ()
            self._message = None
        return headers

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    def _astuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MessageContext):
            return NotImplemented
        return self._astuple() == other._astuple()

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __repr__(self) -> str:
        return "MessageContext(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields) + ")"


Handler = Callable[[BaseEvent, MessageContext], Iterable[Output] | None]


@dataclass(frozen=True)
class MetricSample:
    """One observation for the metrics hook.

    Counters (value = increment): ``messages_in``, ``messages_out``, ``dead_letters``,
    ``commit_failures``, ``run_failures`` (``run`` raised: the service must be rebuilt, and
    its replacement consumes again what was consumed since the last checkpoint).
    Latencies (value = seconds): ``handle_seconds`` (decode+handle of
    one message), ``event_age_seconds`` (now - Kafka timestamp of the input when decoded),
    ``batch_seconds`` (a polled batch: decode, handle, publish), ``checkpoint_seconds``
    (flush + before_commit + commit of everything since the previous checkpoint; after it,
    nothing consumed so far is in flight). ``messages_in`` carries the message's partition
    and offset (else -1), so a reader can tell a redelivery from a new message.
    """

    name: str
    topic: str
    value: float
    partition: int = -1
    offset: int = -1


MetricsHook = Callable[[MetricSample], None]


@dataclass
class RunStats:
    """What one ``run`` call did. ``processed`` = handled without error."""

    processed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commit_failures: int = 0
    consumer_errors: int = 0
    stopped_by: str = ""
    elapsed_s: float = 0.0

    @property
    def consumed(self) -> int:
        return self.processed + self.dead_lettered


#: How long an async commit may stay unanswered before the next one is sent anyway.
_COMMIT_ANSWER_WAIT_S = 2.0
#: Poll timeout while an orderer holds messages: what releases them may come from beside the input.
_HELD_POLL_S = 0.02


class Orderer(Protocol):
    """Decides the order a bus handles its messages in (see the module doc)."""

    def offer(self, messages: Sequence[Message]) -> None: ...

    def ready(self) -> list[Message]:
        """The messages to handle now, in order (the others stay held)."""
        ...

    def held(self) -> int:
        """How many messages it holds (the bus polls briefly while it holds any)."""
        ...

    def drop(self, partitions: set[tuple[str, int]]) -> None:
        """Forget the held messages of ``partitions`` (taken away: their new owner reads them)."""
        ...


def _no_offset(exc: KafkaException) -> bool:
    """A commit refused as _NO_OFFSET: nothing was stored beyond what is committed (harmless)."""
    return bool(exc.args) and isinstance(exc.args[0], KafkaError) and exc.args[0].code() == KafkaError._NO_OFFSET


# --------------------------------------------------------------------------- service loop
class BusService:
    """Consume ``topics``, run ``handler`` per event, publish its outputs; at-least-once.

    ``topic_models`` overrides the registry (``awet_dagster.contracts.topics``) for ad-hoc
    topic names. ``before_commit`` is called after a batch's flush succeeded and before its
    commit (persist what the batch consumed; a test hook: crash there to prove redelivery).
    ``before_batch`` / ``before_produce``: see the module doc.
    """

    def __init__(
        self,
        name: str,
        topics: Sequence[str],
        handler: Handler,
        *,
        consumer_config: Mapping[str, Any],
        producer: EventProducer | Mapping[str, Any],
        topic_models: Mapping[str, type[BaseEvent]] | None = None,
        batch_size: int = 500,
        poll_timeout_s: float = 0.5,
        flush_timeout_s: float = 10.0,
        on_metrics: MetricsHook | None = None,
        before_commit: Callable[[Sequence[MessageContext]], None] | None = None,
        before_batch: Callable[[Sequence[Message]], None] | None = None,
        before_produce: Callable[[Sequence[MessageContext]], None] | None = None,
        commit_interval_s: float = 0.1,
        commit_max_messages: int = 5000,
        shared_fetch: Any = None,
        on_rebalance: Callable[[], None] | None = None,
        on_dead_letter: Callable[[str, DeadLetter], None] | None = None,
        orderer: Orderer | None = None,
    ) -> None:
        if not topics:
            raise ValueError("at least one topic is required")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if consumer_config.get("enable.auto.commit") not in (False, "false"):
            raise ValueError("consumer_config must set enable.auto.commit=false (use awet_kafka.settings)")
        if consumer_config.get("enable.auto.offset.store") in (True, "true"):
            raise ValueError("consumer_config must not set enable.auto.offset.store=true: the bus stores "
                             "offsets itself, after delivery (use awet_kafka.settings)")
        overrides = dict(topic_models or {})
        # Resolve every contract now: an unknown topic is a wiring bug, fail at start-up.
        self._models = {t: overrides[t] if t in overrides else model_for_topic(t) for t in topics}
        self.name = name
        self.topics = tuple(topics)
        self._handler = handler
        self._batch_size = batch_size
        self._poll_timeout_s = poll_timeout_s
        self._flush_timeout_s = flush_timeout_s
        self._on_metrics = on_metrics
        self._before_commit = before_commit
        self._before_batch = before_batch
        self._before_produce = before_produce
        self._on_rebalance = on_rebalance
        self._orderer = orderer
        # With an orderer: per partition, the offsets polled and not yet committable, in order,
        # and those of them handled (out of order).
        self._polled: dict[tuple[str, int], deque[int]] = {}
        self._handled: dict[tuple[str, int], set[int]] = {}
        # (dlq topic, letter) for every dead letter; its optional flush() runs at each checkpoint,
        # after the letters were acknowledged and before the offsets are committed.
        self._on_dead_letter = on_dead_letter
        self.rebalances = 0
        if commit_interval_s < 0 or commit_max_messages < 1:
            raise ValueError("commit_interval_s must be >= 0 and commit_max_messages >= 1")
        self._commit_interval_s = commit_interval_s
        self._commit_max_messages = commit_max_messages
        # Consumed since the last checkpoint: offsets to commit, contexts for before_commit.
        self._pending_offsets: dict[tuple[str, int], int] = {}
        self._pending_contexts: list[MessageContext] = []
        self._pending_messages = 0
        self._pending_produced = 0
        self._pending_since = 0.0
        # A producer built here from a config is this service's: closed with it. One passed in
        # belongs to the caller (it may serve others).
        self._owns_producer = not isinstance(producer, EventProducer)
        self.producer = producer if isinstance(producer, EventProducer) else EventProducer(producer)
        conf = dict(consumer_config)
        conf["enable.auto.offset.store"] = False  # offsets are stored by the loop, after delivery
        self._user_on_commit = conf.pop("on_commit", None)
        conf["on_commit"] = self._on_commit
        self._consumer = Consumer(conf)
        # Messages come from ``_source``: the consumer itself, or this process's shared fetch
        # of the topics (awet_kafka.shared_fetch; the consumer then only looks up and commits the
        # group's offsets).
        self._source: Any = None
        if shared_fetch is not None:
            try:
                self._source = shared_fetch.attach(name, self._consumer, self.topics, conf)
            except KafkaException as exc:  # metadata/offsets unavailable: consume the usual way
                log.warning("%s: shared fetch unavailable (%s): consuming on its own", name, exc)
            if self._source is None:  # attach may have assigned it: a group member starts clean
                self._consumer.close()
                self._consumer = Consumer(conf)
        if self._source is None:
            self._consumer.subscribe(list(self.topics), on_assign=self._assigned, on_revoke=self._revoked,
                                     on_lost=self._lost)
            self._source = self._consumer
        self._stop = threading.Event()
        self._abandoned: str | None = None  # why the consumer's position is past uncommitted messages
        # The rest of a batch a handler ended with PublishFirst (its first message already went
        # through the messages_in metric: _carry_counted), or what an orderer released beyond a
        # batch: the next batches (consumed, not handled).
        self._carry: list[Message] = []
        self._carry_counted: tuple[str, int, int] | None = None
        self._closed = False
        self._failed: str | None = None  # set when run() raised: the instance must be rebuilt
        self._prev_handlers: dict[int, Any] = {}
        #: RunStats of the run in progress (async commit results are counted into it).
        self._active_stats: RunStats | None = None
        #: Offsets were stored since the last synchronous commit (a final sync commit is due).
        self._uncommitted = False
        # One async commit in flight at a time (``_commit``): how many are, and whether stored
        # offsets wait for the next one.
        self._commits_in_flight = 0
        self._commit_owed = False
        self._commit_sent_at = 0.0
        #: Async/sync commit failures over the service's lifetime.
        self.commit_failures = 0

    # ----------------------------------------------------------------- control
    def stop(self) -> None:
        """Ask the loop to return after the current batch is committed (thread/signal safe)."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> bool:
        """Make SIGTERM/SIGINT call ``stop()``. Only possible in the main thread (returns False elsewhere)."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("%s: not in the main thread, signal handlers not installed", self.name)
            return False
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._prev_handlers[sig] = signal.signal(sig, self._on_signal)
        return True

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("%s: received %s, stopping after the current batch", self.name, signal.Signals(signum).name)
        self.stop()

    def _restore_signal_handlers(self) -> None:
        if self._prev_handlers and threading.current_thread() is threading.main_thread():
            for sig, prev in self._prev_handlers.items():
                signal.signal(sig, prev)
        self._prev_handlers.clear()

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush the producer, leave the group (so a replacement rebalances fast). Idempotent.

        After a failed ``run`` the producer is purged instead of flushed: what it still holds
        belongs to input that was not committed, which the replacement consumes and produces
        again. Waiting for it would only delay the replacement, and keep alive a producer
        that may be unable to deliver at all (an idempotent producer whose id the broker
        lost: on tansu it retries under that id, which the restarted broker hands out
        again, and fences the replacement's new producer).
        """
        if self._closed:
            return
        self._closed = True
        try:
            raw = self.producer.raw
            try:
                if self._failed is not None:
                    raw.purge()
                    # Serve the purge's delivery reports (one poll(0) may leave some queued).
                    raw.flush(min(1.0, timeout_s))
                    remaining = 0
                else:
                    remaining = raw.flush(timeout_s)
            except (KafkaException, SystemError) as exc:
                # A producer in a fatal state raises here (confluent-kafka raises a fatal error
                # from flush/poll; a Python callback running meanwhile sees it as SystemError),
                # e.g. OUT_OF_ORDER_SEQUENCE after a tansu restart. Still commit below: stored
                # offsets only cover acknowledged outputs.
                remaining = 0
                log.warning("%s: producer failed at close: %r (cause: %r)", self.name, exc, exc.__cause__)
            if remaining:
                log.warning("%s: %d message(s) undelivered at close", self.name, remaining)
            # Only offsets of fully acknowledged batches are ever stored: commit them for good.
            self._commit_sync(None)
        finally:
            try:
                if self._source is not self._consumer:
                    self._source.close()
                self._consumer.close()
            finally:
                if self._owns_producer:
                    self.producer.close()
                self._restore_signal_handlers()

    def __enter__(self) -> BusService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def serve(self) -> RunStats:
        """Service entrypoint: signal handlers, run until stopped, close."""
        self.install_signal_handlers()
        try:
            return self.run()
        finally:
            self.close()

    @property
    def consumer(self) -> Consumer:
        return self._consumer

    # ----------------------------------------------------------------- loop
    def run(self, max_messages: int | None = None, timeout_s: float | None = None) -> RunStats:
        """Process until ``stop()``, ``max_messages`` consumed (incl. dead letters) or ``timeout_s``.

        Returns within ``timeout_s`` + one poll/batch (+ the final synchronous commit) even
        when no message arrives. On a normal return every acknowledged batch is committed.
        """
        if self._closed:
            raise RuntimeError(f"{self.name}: service is closed")
        if self._failed is not None:
            # The consumer's position is past a batch that was never committed: running on
            # would silently skip it. Only a fresh instance resumes from the committed offsets.
            raise RuntimeError(f"{self.name}: a previous run failed ({self._failed}); rebuild the service")
        if self._abandoned is not None:  # the same: part of a batch was left when stopped
            raise RuntimeError(f"{self.name}: the previous run {self._abandoned}; rebuild the service")
        stats = RunStats()
        self._active_stats = stats
        start = time.monotonic()
        deadline = start + timeout_s if timeout_s is not None else None
        consumer = self._source
        try:
            while True:
                if self._stop.is_set():
                    stats.stopped_by = "stop"
                    break
                if max_messages is not None and stats.consumed >= max_messages:
                    stats.stopped_by = "max_messages"
                    break
                wait = self._poll_timeout_s
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        stats.stopped_by = "timeout"
                        break
                    wait = min(wait, left)
                if self._carry:
                    limit = self._batch_size if max_messages is None else min(self._batch_size,
                                                                            max_messages - stats.consumed)
                    batch, self._carry = self._carry[:limit], self._carry[limit:]
                    self._process_batch(batch, stats)
                    if self._checkpoint_due():
                        self._checkpoint(stats)
                    continue
                if self._orderer is not None:
                    ready = self._orderer.ready()  # released by a clock or a time-out since the last poll
                    if ready:
                        self._process_batch(self._bounded(ready, max_messages, stats), stats)
                        if self._checkpoint_due():
                            self._checkpoint(stats)
                        continue
                    if self._orderer.held():
                        wait = min(wait, _HELD_POLL_S)
                if self._pending_messages:
                    # Idle input: checkpoint now rather than after a long poll.
                    first = consumer.poll(0)
                    if first is None:
                        self._checkpoint(stats)
                        first = consumer.poll(wait)
                else:
                    first = consumer.poll(wait)
                if first is None:
                    if self._commit_owed:
                        self._serve_commits(stats)
                    continue
                limit = self._batch_size
                if max_messages is not None:
                    limit = min(limit, max_messages - stats.consumed)
                batch = [first]
                if limit > 1:
                    batch.extend(consumer.consume(num_messages=limit - 1, timeout=0))
                if self._orderer is not None:
                    for m in batch:  # the order they came in: what a commit must not skip
                        if m.error() is None:
                            self._polled.setdefault((m.topic(), m.partition()), deque()).append(m.offset())
                    self._orderer.offer(batch)
                    batch = self._bounded(self._orderer.ready(), max_messages, stats)
                    if not batch:
                        continue
                self._process_batch(batch, stats)
                if self._checkpoint_due():
                    self._checkpoint(stats)
            # Leave nothing acknowledged-but-uncommitted behind (stop/SIGTERM, max_messages, timeout).
            self._checkpoint(stats)
            self._commit_sync(stats)
        except BaseException as exc:
            self._failed = f"{type(exc).__name__}: {exc}"
            # What was consumed since the last checkpoint is consumed again by the replacement.
            self._metric("run_failures", ",".join(self.topics), 1)
            raise
        finally:
            self._active_stats = None
        stats.elapsed_s = time.monotonic() - start
        return stats

    def _handled_prefix(self, touched: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """With an orderer: per partition the last offset of the longest run, in polled order,
        of handled messages (what may be committed: nothing held or carried below it)."""
        out: dict[tuple[str, int], int] = {}
        for tp in touched:
            polled, handled = self._polled.get(tp), self._handled.get(tp, set())
            last = None
            while polled and polled[0] in handled:
                last = polled.popleft()
                handled.discard(last)
            if last is not None:
                out[tp] = last
        return out

    def _bounded(self, ready: list[Message], max_messages: int | None, stats: RunStats) -> list[Message]:
        """At most a batch (and what ``max_messages`` leaves) of what an orderer released; the
        rest is carried, in order, to the next batches."""
        limit = self._batch_size if max_messages is None else min(self._batch_size, max_messages - stats.consumed)
        if len(ready) <= limit:
            return ready
        self._carry = ready[limit:] + self._carry
        return ready[:limit]

    def _checkpoint_due(self) -> bool:
        # Not while a batch's rest is carried: the message it was cut at has been counted in
        # (messages_in) and must not be reported consumed (checkpoint) before it is handled.
        return not self._carry and (self._pending_messages >= self._commit_max_messages
                                    or time.monotonic() - self._pending_since >= self._commit_interval_s)

    def _process_batch(self, batch: list[Message], stats: RunStats) -> None:
        t0 = time.monotonic()
        on_metrics = self._on_metrics
        keep_contexts = self._before_commit is not None or self._before_produce is not None
        # Outputs held back until before_produce ran (None: published as they are made).
        held: list[Output] | None = [] if self._before_produce is not None else None
        process_one = self._process_one
        contexts: list[MessageContext] = []
        offsets: dict[tuple[str, int], int] = {}
        produced = 0
        if self._before_batch is not None:
            self._before_batch(batch)
        done = len(batch)
        for i, msg in enumerate(batch):
            if i and self._stop.is_set():
                # Stopping means stopping: the rest of a long batch (a risk batch waiting for
                # fills, bar by bar) is left uncommitted and read again by the next instance.
                done = i
                self._abandoned = f"stopped after {i} of a batch of {len(batch)} message(s)"
                log.info("%s: %s; the rest is redelivered to the next instance", self.name, self._abandoned)
                break
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaException(err)
                stats.consumer_errors += 1
                log.warning("%s: consumer error: %s", self.name, err)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if on_metrics is not None:
                if self._carry_counted == (topic, partition, offset):
                    self._carry_counted = None
                else:
                    on_metrics(MetricSample("messages_in", topic, 1, partition, offset))
            try:
                n_out, ctx = process_one(msg, topic, partition, offset, stats, held)
            except PublishFirst as exc:
                if not held and not produced:  # nothing to publish first: it would come back forever
                    raise RuntimeError(f"{self.name}: PublishFirst on {topic}[{partition}]@{offset} with "
                                       f"no output of its batch before it ({exc})") from exc
                # Handled again, with the rest, once what the batch made so far is published.
                done = i
                self._carry = batch[i:] + self._carry
                self._carry_counted = (topic, partition, offset)
                log.debug("%s: publishing %d output(s) before %s[%d]@%d: %s", self.name,
                          len(held) if held is not None else 0, topic, partition, offset, exc)
                break
            if self._orderer is not None:  # it may hand a partition's messages out of offset order
                self._handled.setdefault((topic, partition), set()).add(offset)
            # A batch holds each partition's messages in order (without an orderer): the last is the max.
            offsets[topic, partition] = offset
            produced += n_out
            if keep_contexts and ctx is not None:
                contexts.append(ctx)
        if self._orderer is not None:
            offsets = self._handled_prefix(offsets)
        if held is not None:
            self._before_produce(contexts)  # type: ignore[misc]
            send = self.producer.send_checked
            for out in held:
                send(out.topic, out.event, out.key)
        # Committed at the next checkpoint, once everything produced is acknowledged.
        if not self._pending_messages:
            self._pending_since = time.monotonic()
        self._pending_messages += done
        self._pending_produced += produced
        self._pending_offsets.update(offsets)  # batches come in offset order per partition
        if self._before_commit is not None:
            self._pending_contexts.extend(contexts)
        stats.batches += 1
        if on_metrics is not None:
            self._metric("batch_seconds", ",".join(self.topics), time.monotonic() - t0)

    def _checkpoint(self, stats: RunStats) -> None:
        """Flush -> before_commit -> store + commit (async) everything consumed since the last
        checkpoint. Everything produced (outputs and dead letters) must be acknowledged before
        its input offsets are stored/committed; DeliveryError propagates and nothing is.
        (A flush with nothing outstanding returns at once, see EventProducer.flush.)"""
        if not self._pending_messages:
            return
        t0 = time.monotonic()
        self.producer.flush(self._flush_timeout_s)
        stats.produced += self._pending_produced
        flush_letters = getattr(self._on_dead_letter, "flush", None)
        if flush_letters is not None:
            flush_letters()  # e.g. the dead_letters table rows of this checkpoint's letters
        if self._before_commit is not None:
            self._before_commit(self._pending_contexts)
        offsets = self._pending_offsets
        self._pending_offsets, self._pending_contexts = {}, []
        self._pending_messages = self._pending_produced = 0
        if offsets:
            self._commit(offsets, stats)
        if self._on_metrics is not None:
            self._metric("checkpoint_seconds", ",".join(self.topics), time.monotonic() - t0)

    def _process_one(
        self, msg: Message, topic: str, partition: int, offset: int, stats: RunStats,
        held: list[Output] | None = None,
    ) -> tuple[int, MessageContext | None]:
        """Decode + handle + send outputs of one message (or append them to ``held``);
        dead-letter it on failure."""
        on_metrics = self._on_metrics
        t0 = time.monotonic() if on_metrics is not None else 0.0
        value = msg.value()
        if value is None:
            self._dead_letter(msg, "empty_message", ValueError("message has no value (tombstone)"), None)
            stats.dead_lettered += 1
            return 0, None
        try:
            event = self._models[topic].model_validate_json(value)
        except ValidationError as exc:
            self._dead_letter(msg, decode_failure_reason(exc), exc, None)
            stats.dead_lettered += 1
            return 0, None
        ts_ms = msg.timestamp()[1]
        if ts_ms is None or ts_ms <= 0:
            ts_ms = None
        elif on_metrics is not None:
            self._metric("event_age_seconds", topic, max(0.0, time.time() - ts_ms / 1000))
        ctx = MessageContext(self.name, topic, partition, offset, msg.key(), None, ts_ms, event.correlation_id, msg)
        try:
            outputs = self._handler(event, ctx)
            if outputs:
                outputs = list(outputs)  # list(): generator errors surface here
                for out in outputs:
                    if not isinstance(out, Output):
                        raise TypeError(f"handler must yield Output, got {type(out).__name__}")
                    self.producer.check(out.topic, out.event)  # wrong contract for topic: DLQ, not crash
            else:
                outputs = ()
        except (RetryLater, PublishFirst):
            raise
        except Exception as exc:  # noqa: BLE001 - any handler bug goes to the DLQ, loop continues
            # A refusal of the input itself names its own reason code (e.g. invalid_time).
            reason = getattr(exc, "dlq_reason", None) or "handler_error"
            log.warning("%s: %s on %s[%d]@%d: %s", self.name, "refused" if reason != "handler_error" else
                        "handler failed", topic, partition, offset, exc if reason != "handler_error" else repr(exc))
            self._dead_letter(msg, reason, exc, event.correlation_id)
            stats.dead_lettered += 1
            return 0, None
        if not outputs:
            stats.processed += 1
            if on_metrics is not None:
                self._metric("handle_seconds", topic, time.monotonic() - t0)
            return 0, ctx
        if held is not None:
            held.extend(outputs)
        else:
            send = self.producer.send_checked
            for out in outputs:
                send(out.topic, out.event, out.key)
        stats.processed += 1
        if on_metrics is not None:  # skip the bookkeeping entirely when nobody listens
            for out in outputs:
                self._metric("messages_out", out.topic, 1)
            self._metric("handle_seconds", topic, time.monotonic() - t0)
        return len(outputs), ctx

    def _dead_letter(self, msg: Message, reason: str, exc: BaseException, correlation_id: str | None) -> None:
        letter = dead_letter_for(self.name, msg, reason, exc, correlation_id)
        if letter is None:
            return
        send_dead_letter(self.producer, letter, msg.key())
        self._metric("dead_letters", letter.original_topic, 1)
        if self._on_dead_letter is not None:
            self._on_dead_letter(dlq_topic(letter.original_topic), letter)

    def _commit(self, offsets: dict[tuple[str, int], int], stats: RunStats) -> None:
        """Store the acknowledged batch's offsets and commit them asynchronously.

        Not waiting for the broker is safe: a failed or lost async commit leaves the committed
        offset behind (redelivery, not loss), and ``run``/``close`` end with a synchronous
        commit of the stored offsets. Failures arrive in ``_on_commit``.
        """
        topics = ",".join(sorted({t for t, _ in offsets}))
        try:
            # Partitions revoked meanwhile are not stored (librdkafka drops them): their new
            # owner re-reads from the last commit. Duplicates, no loss.
            self._consumer.store_offsets(offsets=[TopicPartition(t, p, o + 1) for (t, p), o in offsets.items()])
        except KafkaException as exc:
            if not _no_offset(exc):
                self._commit_failed(topics, exc, stats)
            return
        self._uncommitted = True
        self._commit_owed = True
        self._serve_commits(stats, topics)

    def _serve_commits(self, stats: RunStats | None, topics: str | None = None) -> None:
        """Serve commit callbacks (with a shared fetch nobody else polls the group consumer)
        and send a commit that is owed since the last one came back. Not from ``_on_commit``:
        polling inside a poll callback would re-enter librdkafka's queue."""
        try:
            if self._source is not self._consumer:
                self._consumer.poll(0)
        except KafkaException as exc:
            self._commit_failed(topics or ",".join(self.topics), exc, stats)
        self._send_owed_commit(stats, topics)

    def _send_owed_commit(self, stats: RunStats | None, topics: str | None = None) -> None:
        try:
            self._commit_stored()
        except KafkaException as exc:
            if not _no_offset(exc):  # _NO_OFFSET: nothing stored beyond what is committed
                self._commit_failed(topics or ",".join(self.topics), exc, stats)

    def _commit_stored(self) -> None:
        """Commit the stored offsets asynchronously, unless a commit is still unanswered: its
        answer (``_on_commit``) then sends the next one, covering everything stored meanwhile.

        Why one at a time: a commit every ``commit_interval_s`` regardless piled up requests on
        the group coordinator's connection, which heartbeats share (measured on Kafka on a
        loaded 2-core machine: 2,700 OffsetCommitRequests in flight, heartbeats "held back by
        preceding OffsetCommitRequest", session timeouts and rebalances mid-run). Coalescing:
        bar->order p99 of ``benchmarks/live_loop.py --quick`` 166-178 ms against 232-448 ms
        without, in alternating runs (docs/benchmarks.md)."""
        if not self._commit_owed:
            return
        now = time.monotonic()
        # An answer can queue behind messages fetched before it (served in order by poll):
        # a commit unanswered for long does not hold the next one back for ever.
        if self._commits_in_flight and now - self._commit_sent_at < _COMMIT_ANSWER_WAIT_S:
            return
        self._commit_owed = False
        self._commits_in_flight += 1
        self._commit_sent_at = now
        try:
            self._consumer.commit(asynchronous=True)
        except BaseException:
            self._commits_in_flight -= 1
            raise

    # ----------------------------------------------------------------- rebalance
    # Served by poll/consume, i.e. in this service's thread between two batches (never in the
    # middle of one). Another instance of the service joined or left the group: the partitions
    # move. What this instance handled is checkpointed (outputs flushed, before_commit, offsets
    # committed synchronously) BEFORE it gives partitions up, so their new owner starts exactly
    # after it: no output is produced twice. Per-key state (features, alphas, windows) is then
    # dropped (``on_rebalance``): a symbol this instance gets back may have moved on meanwhile,
    # and state warmed up again from the database is right where stale state would not be.
    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        stats = self._active_stats
        if stats is not None and self._failed is None:
            try:
                self._checkpoint(stats)
                self._commit_sync(stats)
            except Exception as exc:  # noqa: BLE001 - cannot raise through librdkafka: redelivery, not loss
                log.warning("%s: checkpoint before giving up %d partition(s) failed (they will be read "
                            "again by their new owner): %r", self.name, len(partitions), exc)
        self._reset_state("revoked", partitions)

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked (the session expired): another member may own them already, so
        # nothing may be committed for them; their new owner reads them again.
        self._reset_state("lost", partitions)

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._reset_state("assigned", partitions)

    def _reset_state(self, what: str, partitions: list[TopicPartition]) -> None:
        self.rebalances += 1
        gone = {(tp.topic, tp.partition) for tp in partitions} if what != "assigned" else set()
        if self._carry and gone:  # their new owner reads them from the committed offset
            self._carry = [m for m in self._carry if (m.topic(), m.partition()) not in gone]
        if self._orderer is not None and gone:
            self._orderer.drop(gone)
            for tp in gone:
                self._polled.pop(tp, None)
                self._handled.pop(tp, None)
        if self.rebalances > 1:  # the first assignment is the start: nothing to forget
            log.info("%s: %d partition(s) %s: per-key state dropped", self.name, len(partitions), what)
        if self._on_rebalance is not None and self.rebalances > 1:
            self._on_rebalance()

    def _commit_sync(self, stats: RunStats | None) -> None:
        """Synchronously commit every stored (= acknowledged) offset not committed yet."""
        if not self._uncommitted:
            return
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if not _no_offset(exc):  # _NO_OFFSET: the async commits landed
                self._commit_failed(",".join(self.topics), exc, stats)
                return
        self._uncommitted = False
        self._commit_owed = False

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's commit callback (async commits), served by poll/consume/close."""
        self._commits_in_flight = max(0, self._commits_in_flight - 1)
        try:
            if err is not None and err.code() != KafkaError._NO_OFFSET:
                failed: object = err
            else:
                failed = next((tp for tp in partitions if tp.error is not None), None)
            if failed is not None:
                topics = ",".join(sorted({tp.topic for tp in partitions})) or ",".join(self.topics)
                self._commit_failed(topics, failed, self._active_stats)
        finally:
            if self._user_on_commit is not None:
                self._user_on_commit(err, partitions)
            if self._commit_owed and not self._closed:
                self._send_owed_commit(self._active_stats)  # what was stored while this one was in flight

    def _commit_failed(self, topics: str, error: object, stats: RunStats | None) -> None:
        # E.g. the partition was revoked by a rebalance meanwhile: the new owner re-reads
        # from the last commit. Duplicates, no loss; keep going.
        self.commit_failures += 1
        if stats is not None:
            stats.commit_failures += 1
        self._metric("commit_failures", topics, 1)
        log.warning("%s: commit failed (its messages may be redelivered): %s", self.name, error)

    def _metric(self, name: str, topic: str, value: float) -> None:
        if self._on_metrics is None:
            return
        try:
            self._on_metrics(MetricSample(name, topic, value))
        except Exception:  # noqa: BLE001 - metrics must never break the loop
            log.exception("%s: metrics hook failed", self.name)
