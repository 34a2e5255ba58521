"""One fetch of a topic for all the services of one process that consume it.

Size (over 400 lines): the fetcher, its per-subscriber queues and its rebalance handling share
one lock and one set of invariants (nothing handed out twice, nothing skipped on a move).

Why: ``awet live`` runs every service in one process, and five of them consume
``market.raw`` (persist_bars, features, lean_alpha, signal, execution). With one
consumer each, the broker serves every record batch five times. On the embedded tansu
broker that is the bottleneck of the live loop: serving one record batch to one consumer
costs it ~1 ms of CPU whatever the batch's size (measured: 200 msgs/s to 6 consumers kept
it at 130-150% CPU on 2 cores; see docs/benchmarks.md). Here one fetching consumer per
topic set reads the topic once into an in-memory log that every service of the process
reads at its own pace.

What stays per service (so the guarantees and the operator's view are unchanged):
- its consumer group and its committed offsets: each service keeps a Consumer of its own
  group, assigned to the topic's partitions and PAUSED (it never fetches), used only to
  look up where the group stopped and to store/commit offsets after its outputs are
  delivered (``awet_kafka.bus``). Lag per group, restarts from the committed offset and
  at-least-once work as with a private consumer. The group has no members (standalone
  commits, as with ``assign``): fine in the one-process mode, where each service runs once.
- its own pace: a slow service only holds the log's trimming (bounded by ``max_buffered``
  messages; above that the fetch pauses until the slowest reader catches up).

Start and fall-back: the fetch starts when every service expected on that topic set has
subscribed (the runner knows how many), or ``start_grace_s`` after the first one, at the
lowest committed offset of the subscribers. A service that subscribes later at an offset
the log no longer holds (rebuilt after a failure, long after) gets ``None`` and consumes
with a private consumer as usual: correct, only without the saving.
A broker that comes back with NEW logs (tansu, memory storage, restarted: every topic
recreated, offsets from 0, and a fetch beyond the new end answers "empty", not out of
range) is detected as the side readers do (``awet_kafka.tail``): after the fetch lost
every broker connection it compares the topic ids; a recreated topic is fetched again
from its beginning, and every reader, once it has read what was fetched before, reads the
new log from its start (what a group member whose commits died with the broker does).
A fatal consumer error of the fetch is raised to every reader (``KafkaException``): the
services fail and are rebuilt like after any fatal consumer error, and their replacements
look their committed offsets up again and subscribe to a fresh fetch.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from awet_kafka.tail import describe_topic_ids
from awet_kafka.admin import COORDINATOR_BUSY

log = logging.getLogger("awet.kafka.shared_fetch")

_EARLIEST = ("earliest", "smallest", "beginning")
_METADATA_TIMEOUT_S = 10.0


def _committed(consumer: Consumer, tps: list[TopicPartition], timeout_s: float) -> list[TopicPartition]:
    """The group's committed offsets of ``tps``, retrying while the coordinator is busy (seen:
    NOT_COORDINATOR from a Kafka broker started seconds earlier) until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.committed(tps, timeout=max(deadline - time.monotonic(), 0.5))
        except KafkaException as exc:
            err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if err is None or err.code() not in COORDINATOR_BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
_RECHECK_INTERVAL_S = 0.5


class _Reset:
    """Log entry: the topics were recreated; what follows is the new log from its start."""

    __slots__ = ()


_RESET = _Reset()


class SharedFetch:
    """A fetching consumer of ``topics`` and the log its subscribers read (one per topic set)."""

    def __init__(self, consumer_conf: Mapping[str, Any], topics: Sequence[str], *, expected: int = 1,
                 max_buffered: int = 20_000, start_grace_s: float = 5.0, fetch_batch: int = 500,
                 overrun_s: float = 30.0) -> None:
        conf = {k: v for k, v in consumer_conf.items() if k not in ("on_commit", "group.id", "client.id")}
        # Never commits: the group id only satisfies librdkafka (offsets belong to the subscribers' groups).
        conf["group.id"] = f"awet-shared-fetch-{'+'.join(sorted(topics))}"
        conf["client.id"] = "awet-shared-fetch"
        conf["enable.auto.commit"] = False

        def on_error(err: KafkaError) -> None:  # served by poll/consume, in the fetch thread
            if err.code() == KafkaError._ALL_BROKERS_DOWN:
                self._recheck_at = time.monotonic()  # the broker may come back with new logs
            log.debug("shared fetch: %s", err)

        conf["error_cb"] = on_error
        self.topics = tuple(topics)
        self._conf = conf
        self._admin_conf = {k: v for k, v in conf.items() if k == "bootstrap.servers" or k.startswith(
            ("security.", "sasl.", "ssl.", "socket.", "client."))}
        self._topic_ids: dict[str, str | None] = {}
        self._recheck_at: float | None = None
        self.resets = 0
        self._new_log_seq = 0  # sequence number where the newest log starts (after a reset)
        self._expected = max(1, expected)
        self._max_buffered = max(1, max_buffered)
        self._grace_s = start_grace_s
        self._fetch_batch = max(1, fetch_batch)
        self._overrun_s = overrun_s
        self.cond = threading.Condition()
        self._log: list[Message] = []
        self._base_seq = 0  # sequence number of self._log[0]
        self._subs: list[Subscription] = []
        self._registered = 0
        self._first_registration: float | None = None
        self._start_offsets: dict[tuple[str, int], int] = {}  # lowest start per partition (before start)
        self._available_from: dict[tuple[str, int], int] = {}  # after start: oldest offset still readable
        self._started = False
        self._closed = False
        self.failed: KafkaException | None = None
        self.fetched = 0
        self._thread = threading.Thread(target=self._main, name=f"shared-fetch-{'+'.join(self.topics)}",
                                        daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- subscribers
    def subscribe(self, name: str, starts: Mapping[tuple[str, int], int]) -> Subscription | None:
        """A reader starting at ``starts`` ({(topic, partition): offset or OFFSET_BEGINNING}),
        or None when the log cannot serve it (already past those offsets, closed, failed)."""
        with self.cond:
            if self._closed or self.failed is not None:
                return None
            if self._started:
                for tp, off in starts.items():
                    have = self._available_from.get(tp)
                    if have is None or (have != OFFSET_BEGINNING and (off == OFFSET_BEGINNING or off < have)):
                        return None
                # What precedes a reset is a dead log: a service subscribing now (rebuilt after
                # the outage) reads the new one, where its group's offsets point.
                cursor = max(self._base_seq, self._new_log_seq)
            else:
                for tp, off in starts.items():
                    prev = self._start_offsets.get(tp)
                    if prev is None or off == OFFSET_BEGINNING or (prev != OFFSET_BEGINNING and off < prev):
                        self._start_offsets[tp] = off
                cursor = 0
            self._registered += 1
            if self._first_registration is None:
                self._first_registration = time.monotonic()
            sub = Subscription(self, name, dict(starts), cursor)
            self._subs.append(sub)
            self.cond.notify_all()
            return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self.cond:
            if sub in self._subs:
                self._subs.remove(sub)
            self.cond.notify_all()

    # ----------------------------------------------------------------- fetch loop
    def _ready_to_start(self) -> bool:
        if self._registered >= self._expected:
            return True
        return self._first_registration is not None and time.monotonic() - self._first_registration >= self._grace_s

    def _trim(self) -> None:
        """Drop what every subscriber has read (called with the lock held)."""
        if not self._subs:
            return
        low = min(s.cursor for s in self._subs)
        n = low - self._base_seq
        if n <= 0:
            return
        for m in self._log[:n]:
            if m is not _RESET:
                self._available_from[m.topic(), m.partition()] = m.offset() + 1
        del self._log[:n]
        self._base_seq = low

    def _check_topics(self, consumer: Consumer) -> None:
        """After a broker outage: a topic whose id changed is a new log: fetch it from its
        beginning and let the readers know where in the stream the new log starts."""
        try:
            now = describe_topic_ids(self._admin_conf, self.topics, 2.0)
        except Exception as exc:  # noqa: BLE001 - broker still down / topics not recreated yet
            self._recheck_at = time.monotonic() + _RECHECK_INTERVAL_S
            log.debug("shared fetch: topic-id check deferred: %s", exc)
            return
        self._recheck_at = None
        changed = [t for t, (tid, _) in now.items() if tid is not None and tid != self._topic_ids.get(t)]
        if not changed:
            return
        # Topics that kept their id keep their position (this fetch reads whole topic sets, but
        # a set may mix a recreated topic with one that survived).
        keep = [tp for tp in consumer.assignment() if tp.topic not in changed]
        parts = [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
                 for tp in (consumer.position(keep) if keep else [])]
        for topic in changed:
            parts.extend(TopicPartition(topic, p, OFFSET_BEGINNING) for p in now[topic][1])
        consumer.assign(parts)
        with self.cond:
            self._log.append(_RESET)  # type: ignore[arg-type]
            self._new_log_seq = self._base_seq + len(self._log)
            for topic in changed:
                self._topic_ids[topic] = now[topic][0]
                for tp in list(self._available_from):
                    if tp[0] == topic:
                        self._available_from[tp] = OFFSET_BEGINNING
            self.resets += 1
            self.cond.notify_all()
        log.warning("shared fetch: topic(s) %s were recreated (new topic id: e.g. the broker restarted without "
                    "its data); fetching them again from the beginning", changed)

    def _cut_slowest(self) -> None:
        """Drop the reader(s) holding the full log (lock held): they fail at their next read
        and are rebuilt by their supervisor, with a private consumer from their committed offset."""
        low = min(s.cursor for s in self._subs)
        for sub in [s for s in self._subs if s.cursor == low]:
            log.error("shared fetch of %s: %s is %d message(s) behind for %.0f s: cutting it loose",
                      ",".join(self.topics), sub.name, len(self._log), self._overrun_s)
            sub.overrun = True
            self._subs.remove(sub)
        self._trim()
        self.cond.notify_all()

    def _main(self) -> None:
        consumer: Consumer | None = None
        try:
            with self.cond:
                while not self._closed and not self._ready_to_start():
                    self.cond.wait(0.1)
                if self._closed:
                    return
                starts = dict(self._start_offsets)
                self._available_from = dict(starts)
                self._started = True
            try:
                self._topic_ids = {t: tid for t, (tid, _) in describe_topic_ids(self._admin_conf, self.topics,
                                                                                  _METADATA_TIMEOUT_S).items()}
            except Exception as exc:  # noqa: BLE001 - a safety net, not a start requirement
                log.warning("shared fetch of %s: topic ids unavailable (a recreated topic will not be detected): "
                            "%s", ",".join(self.topics), exc)
            consumer = Consumer(self._conf)
            consumer.assign([TopicPartition(t, p, off) for (t, p), off in starts.items()])
            log.info("shared fetch of %s started for %d service(s)", ",".join(self.topics), self._registered)
            full_since: float | None = None
            while not self._closed:
                if self._recheck_at is not None and time.monotonic() >= self._recheck_at:
                    self._check_topics(consumer)
                with self.cond:
                    if len(self._log) >= self._max_buffered // 2:
                        self._trim()
                    if len(self._log) >= self._max_buffered:
                        # The slowest reader holds the log: let it catch up, but never block the
                        # others for good (a wedged service): after overrun_s it is cut loose.
                        now = time.monotonic()
                        full_since = full_since or now
                        if self._subs and now - full_since >= self._overrun_s:  # none: wait for one
                            self._cut_slowest()
                            full_since = None
                        else:
                            self.cond.wait(0.05)
                        continue
                    full_since = None
                # poll() returns as soon as one message is there; consume(n, timeout) would wait for n.
                first = consumer.poll(0.1)
                if first is None:
                    continue
                batch = [first, *consumer.consume(self._fetch_batch - 1, 0)]
                good: list[Message] = []
                for m in batch:
                    err = m.error()
                    if err is None:
                        good.append(m)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        continue
                    elif err.fatal():
                        raise KafkaException(err)
                    else:  # the subscribers' own consumers would only have logged it too
                        log.warning("shared fetch of %s: consumer error: %s", ",".join(self.topics), err)
                if good:
                    with self.cond:
                        self._log.extend(good)
                        self.fetched += len(good)
                        self.cond.notify_all()
        except KafkaException as exc:
            self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - readers must learn that nothing more will come
            log.exception("shared fetch of %s failed", ",".join(self.topics))
            self._fail(KafkaException(KafkaError(KafkaError._FAIL, f"shared fetch failed: {exc!r}")))
        finally:
            if consumer is not None:
                consumer.close()

    def _fail(self, exc: KafkaException) -> None:
        """Stop fetching; every reader raises ``exc`` at its next read."""
        with self.cond:
            if self.failed is None:
                log.error("shared fetch of %s failed: %s", ",".join(self.topics), exc)
                self.failed = exc
            self._closed = True
            self.cond.notify_all()

    def close(self, timeout_s: float = 10.0) -> None:
        with self.cond:
            self._closed = True
            self.cond.notify_all()
        self._thread.join(timeout_s)


class Subscription:
    """A service's reader of a ``SharedFetch``: ``poll``/``consume`` like a Consumer."""

    def __init__(self, fetch: SharedFetch, name: str, starts: dict[tuple[str, int], int], cursor: int) -> None:
        self.fetch = fetch
        self.name = name
        self.cursor = cursor  # sequence number of the next log entry to read
        # Skip what precedes the service's committed offset, per partition, until it is reached
        # (after that everything is delivered: a recreated log restarts its offsets at 0).
        self._skip = {tp: off for tp, off in starts.items() if off != OFFSET_BEGINNING}
        self._closed = False
        self.overrun = False

    def _check(self) -> None:
        if self.overrun:
            raise KafkaException(KafkaError(KafkaError._FAIL, f"{self.name} fell too far behind the shared "
                                                              f"fetch of {','.join(self.fetch.topics)}"))
        if self.fetch.failed is not None:
            raise self.fetch.failed

    def _take(self, n: int) -> list[Message]:  # lock held
        f = self.fetch
        self._check()
        out: list[Message] = []
        i = self.cursor - f._base_seq
        log_ = f._log
        skip = self._skip
        while len(out) < n and i < len(log_):
            m = log_[i]
            i += 1
            if m is _RESET:  # a new log starts here: its offsets restart, nothing of it is skipped
                skip.clear()
                continue
            if skip:
                tp = (m.topic(), m.partition())
                start = skip.get(tp)
                if start is not None:
                    if m.offset() < start:
                        continue
                    del skip[tp]
            out.append(m)
        self.cursor = f._base_seq + i
        return out

    def _wait(self, timeout: float) -> bool:
        """Wait (lock held) until something may be readable; False at the timeout."""
        f = self.fetch
        deadline = time.monotonic() + timeout
        while self.cursor - f._base_seq >= len(f._log):
            self._check()
            if self._closed or f._closed:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            f.cond.wait(left)
        return True

    def poll(self, timeout: float = -1) -> Message | None:
        f = self.fetch
        deadline = time.monotonic() + (timeout if timeout >= 0 else 1e9)
        with f.cond:
            while True:
                left = deadline - time.monotonic()
                if not self._wait(max(0.0, left)):
                    return None
                got = self._take(1)
                if got:
                    return got[0]

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        f = self.fetch
        with f.cond:
            got = self._take(num_messages)
            if not got and timeout != 0 and self._wait(timeout if timeout >= 0 else 1e9):
                got = self._take(num_messages)
            return got

    def close(self) -> None:
        self._closed = True
        self.fetch._unsubscribe(self)


class SharedFetches:
    """The shared fetches of one process, one per topic set (``run_services`` owns it).

    ``expected``: how many services will subscribe to each topic set (frozenset of topics):
    the fetch waits for all of them (up to ``start_grace_s``) before it starts.
    """

    def __init__(self, expected: Mapping[frozenset[str], int] | None = None, *, max_buffered: int = 20_000,
                 start_grace_s: float = 5.0) -> None:
        self._expected = dict(expected or {})
        self._max_buffered = max_buffered
        self._grace_s = start_grace_s
        self._fetches: dict[frozenset[str], SharedFetch] = {}
        self._lock = threading.Lock()
        self._closed = False

    def shares(self, topics: Sequence[str]) -> bool:
        return self._expected.get(frozenset(topics), 0) >= 2

    def attach(self, name: str, consumer: Consumer, topics: Sequence[str],
               consumer_conf: Mapping[str, Any]) -> Subscription | None:
        """Set ``consumer`` (the service's own group) up as a paused, commit-only consumer of
        ``topics`` and return the service's reader of the shared fetch; None when the topics
        are not shared or the fetch cannot serve the service (``consumer`` may be assigned
        then: the caller replaces it with a fresh one to consume on its own)."""
        key = frozenset(topics)
        if self._closed or not self.shares(topics):
            return None
        if str(consumer_conf.get("auto.offset.reset", "latest")).lower() not in _EARLIEST:
            return None  # "latest" needs the high watermark, which tansu reports wrongly: keep the group's own way
        tps: list[TopicPartition] = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=_METADATA_TIMEOUT_S).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                return None
            tps.extend(TopicPartition(topic, p) for p in sorted(meta.partitions))
        committed = _committed(consumer, tps, _METADATA_TIMEOUT_S)
        starts = {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else OFFSET_BEGINNING) for tp in committed}
        positioned = [TopicPartition(t, p, off) for (t, p), off in starts.items()]
        consumer.assign(positioned)
        consumer.pause(positioned)
        with self._lock:
            fetch = self._fetches.get(key)
            if fetch is None or fetch.failed is not None or fetch._closed:
                if fetch is not None:
                    fetch.close(1.0)
                fetch = self._fetches[key] = SharedFetch(consumer_conf, topics, expected=self._expected[key],
                                                         max_buffered=self._max_buffered,
                                                         start_grace_s=self._grace_s)
        sub = fetch.subscribe(name, starts)
        if sub is None:
            log.info("%s: the shared fetch of %s is past its committed offsets: consuming on its own",
                     name, ",".join(topics))
        return sub

    def close(self) -> None:
        with self._lock:
            self._closed = True
            fetches, self._fetches = list(self._fetches.values()), {}
        for f in fetches:
            f.close()
