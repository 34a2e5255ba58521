"""The in-process loop harness of replays and tests: ``start_loop`` runs services in a
background thread, ``LoopTracker`` tells when everything published has gone through them
(drained), ``replay_through_loop`` publishes bars and waits for that (``lockstep``: one
timestamp at a time, the backtest's sequencing).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.streaming import bars_to_events
from awet_dagster.streaming.sequencer import bar_clocks
from awet_kafka.publish import publish_acknowledged
from live.registry import LOOP_SERVICES, service_inputs, service_spec
from live.supervisor import ServiceResult, run_services


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


def start_loop(cfg: AwetConfig, endpoints: Any, *, names: Sequence[str] = LOOP_SERVICES,
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
            kw.setdefault("on_metrics", tracker.hook(name, list(service_inputs(name, kw))))
        else:
            kw.setdefault("tracker", tracker)
            tracker.hook(name, list(service_inputs(name, kw)))
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


def replay_through_loop(producer: Any, bars: Any, tracker: LoopTracker, *, topic: str = "market.raw",
                        clock_topic: str | None = None, lockstep: bool = False, drain_timeout_s: float = 120.0,
                        stop_event: threading.Event | None = None,
                        renew_producer: Callable[[], Any] | None = None) -> tuple[int, bool]:
    """Publish ``bars`` (replay order) to ``topic`` and wait until the loop has drained.

    ``lockstep``: publish one timestamp's bars at a time and wait for the loop to drain
    before the next one — every service then sees the bars of ts t only after everything
    caused by earlier bars (orders, fills, exits) went through, which is the backtest's
    sequencing (used for backtest/live parity). Otherwise everything is published at once.
    ``clock_topic``: after the bars of each timestamp, their ``BarClock`` goes there (what risk
    with ``risk.event_order: clock`` orders its input by: then the orders equal the backtest's
    with any partitioning, lockstep or not; without it, only with one partition per topic, see
    docs/live-vs-backtest.md).
    Every bar is published until the broker acknowledged it (``publish_acknowledged``:
    across a broker outage or restart, nothing dropped, nothing acknowledged sent twice);
    ``renew_producer`` makes a fresh producer when the one in use stopped delivering.
    Returns (bars published, drained).
    """
    stop_event = stop_event or threading.Event()
    deadline = time.monotonic() + drain_timeout_s
    box = [producer]

    def publish(evs: list) -> bool:
        tracker.add_external(topic, len(evs))
        box[0] = publish_acknowledged(box[0], topic, evs, timeout_s=max(deadline - time.monotonic(), 1.0),
                                      renew=renew_producer)
        if clock_topic is not None:  # after the bars were acknowledged: a clock never lists a bar not sent
            clocks = bar_clocks(evs)
            tracker.add_external(clock_topic, len(clocks))
            box[0] = publish_acknowledged(box[0], clock_topic, clocks,
                                          timeout_s=max(deadline - time.monotonic(), 1.0), renew=renew_producer)
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
