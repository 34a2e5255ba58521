"""Consumer-lag monitor: ``awet_consumer_lag{group,topic,partition}`` for the live groups.

Every ``interval_s`` and for each configured group and each partition of the topics it
consumes: lag = max(0, high watermark - committed offset) (arithmetic in
``awet_dagster.observability.lag``; a partition the group never committed lags by its whole
retained length). Offsets come from a plain Consumer created with the group's id that never
subscribes (so it never joins the group nor triggers a rebalance): ``committed()`` reads the
group's commits, ``get_watermark_offsets(cached=False)`` asks the partition leader.

Every call is bounded by ``timeout_s``; a failing group is counted in
``awet_lag_monitor_errors_total{group}`` and its previous gauges are left as they were (a
stale value is less misleading than a 0), the loop goes on with the next group.

In ``awet live`` it is the ``lag_monitor`` service (``build_service``: a non-bus thread of
the runner, ``awet live --service lag_monitor`` or part of the all-in-one run).

Note: the embedded tansu broker reports a high watermark that can lag the true end offset
(docs: shared notes on embedded infra), so lag can read low there; the clamp at 0 keeps it
sane. Against a real Kafka it is exact.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from awet_dagster.config import AwetConfig
from awet_dagster.contracts.topology import group_inputs
from awet_dagster.observability.lag import PartitionLag, group_lags
from awet_kafka.bus import RunStats
from awet_kafka.settings import group_id
from awet_dagster.observability.metrics import AwetMetrics

log = logging.getLogger("awet.live.lag_monitor")

NAME = "lag_monitor"

#: service -> topics its consumer group reads (the defaults of the service factories: the
#: topics each ``live.services.<name>.build`` hands to its BusService; group =
#: ``<kafka.group_prefix>.<service>``). Side inputs read by a ``TopicTail`` (predictions for
#: signal, exec.done/exec.orders for risk) have no consumer group and no lag.
#: Deployments that rename topics or groups pass ``groups`` explicitly.
DEFAULT_SUBSCRIPTIONS: Mapping[str, tuple[str, ...]] = group_inputs()  # the topology table


def default_groups(cfg: AwetConfig) -> dict[str, tuple[str, ...]]:
    """{group id: topics} for the default services, with ``cfg.kafka.group_prefix``."""
    prefix = cfg.kafka.group_prefix
    return {group_id(prefix, svc): topics for svc, topics in DEFAULT_SUBSCRIPTIONS.items()}


class LagMonitor:
    def __init__(
        self,
        bootstrap: str,
        groups: Mapping[str, Sequence[str]],
        metrics: AwetMetrics,
        *,
        interval_s: float = 15.0,
        timeout_s: float = 5.0,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0:
            raise ValueError("interval_s and timeout_s must be > 0")
        self.bootstrap = bootstrap
        self.groups = {g: tuple(t) for g, t in groups.items()}
        self.metrics = metrics
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._client_config = dict(client_config or {})
        self._consumers: dict[str, Consumer] = {}
        self.stop_event = threading.Event()
        self.last: list[PartitionLag] = []

    # ------------------------------------------------------------ one measurement
    def _consumer(self, group: str) -> Consumer:
        c = self._consumers.get(group)
        if c is None:
            ms = int(self.timeout_s * 1000)
            conf = {
                **self._client_config,
                "bootstrap.servers": self.bootstrap,
                "group.id": group,
                "client.id": f"awet-lag-monitor-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,  # never commits: it only reads the group's offsets
                "enable.auto.offset.store": False,
                "socket.timeout.ms": max(ms, 1000),
                "socket.connection.setup.timeout.ms": max(ms, 1000),
            }
            c = self._consumers[group] = Consumer(conf)
        return c

    def measure_group(self, group: str, topics: Sequence[str]) -> list[PartitionLag]:
        c = self._consumer(group)
        t = self.timeout_s
        parts: list[TopicPartition] = []
        for topic in topics:
            md = c.list_topics(topic, timeout=t).topics.get(topic)
            if md is None or md.error is not None:
                raise KafkaException(md.error if md is not None else f"topic {topic} unknown")
            parts.extend(TopicPartition(topic, p) for p in sorted(md.partitions))
        ends: dict[tuple[str, int], int] = {}
        lows: dict[tuple[str, int], int] = {}
        for tp in parts:
            low, high = c.get_watermark_offsets(tp, timeout=t, cached=False)
            ends[(tp.topic, tp.partition)] = high
            lows[(tp.topic, tp.partition)] = low
        committed: dict[tuple[str, int], int | None] = {}
        for tp in c.committed(parts, timeout=t) if parts else []:
            if tp.error is None:
                committed[(tp.topic, tp.partition)] = tp.offset
        return group_lags(group, ends, committed, lows)

    def measure_once(self) -> list[PartitionLag]:
        """Measure every group, update the gauges, return what was measured."""
        out: list[PartitionLag] = []
        gauge = self.metrics.consumer_lag
        for group, topics in self.groups.items():
            if self.stop_event.is_set():
                break
            try:
                lags = self.measure_group(group, topics)
            except Exception as exc:  # noqa: BLE001 - one broken group must not stop the others
                log.warning("lag of group %s unavailable: %s", group, exc)
                self.metrics.lag_monitor_errors.labels(group).inc()
                continue
            for lag in lags:
                gauge.labels(lag.group, lag.topic, str(lag.partition)).set(lag.lag)
            out.extend(lags)
        self.last = out
        return out

    # ------------------------------------------------------------ loop
    def run(self, stop: threading.Event | None = None, *, max_iterations: int | None = None,
            timeout_s: float | None = None) -> int:
        """Measure every ``interval_s`` until ``stop`` (or ``self.stop_event``) is set, or
        ``max_iterations`` measurements, or ``timeout_s`` seconds."""
        stop = stop or self.stop_event
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        done = 0
        up = self.metrics.service_up.labels("lag_monitor")
        up.set(1)
        try:
            while not stop.is_set() and not self.stop_event.is_set():
                self.measure_once()
                done += 1
                if max_iterations is not None and done >= max_iterations:
                    break
                wait = self.interval_s
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        break
                stop.wait(wait)
        finally:
            up.set(0)
        return done

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.stop_event.set()
        for group, c in list(self._consumers.items()):
            try:
                c.close()
            except Exception:  # noqa: BLE001
                log.debug("closing the consumer of %s failed", group, exc_info=True)
        self._consumers.clear()

    def __enter__(self) -> LagMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LagMonitorService:
    """A ``LagMonitor`` as a runner service (kind ``thread``): ``run/stop/close`` like a BusService."""

    def __init__(self, monitor: LagMonitor) -> None:
        self.monitor = monitor
        self.name = NAME

    def run(self, max_messages: int | None = None, timeout_s: float | None = None) -> Any:

        t0 = time.monotonic()
        stats = RunStats()
        stats.batches = self.monitor.run(timeout_s=timeout_s)
        stats.stopped_by = "stop" if self.monitor.stop_event.is_set() else "timeout"
        stats.elapsed_s = time.monotonic() - t0
        return stats

    def stop(self) -> None:
        self.monitor.stop()

    def close(self, timeout_s: float = 10.0) -> None:
        self.monitor.close()

    def __enter__(self) -> LagMonitorService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_service(cfg: AwetConfig, endpoints: Any, *, metrics: Any = None, groups: Mapping[str, Sequence[str]] | None = None,
                  interval_s: float = 15.0, timeout_s: float | None = None) -> LagMonitorService:
    """The runner's ``lag_monitor`` service. ``metrics``: the runner's ``ServiceMetrics`` (its
    ``AwetMetrics`` is used) or an ``AwetMetrics``."""
    aw = getattr(metrics, "metrics", metrics)
    return LagMonitorService(build(cfg, endpoints, metrics=aw, groups=groups, interval_s=interval_s,
                                   timeout_s=timeout_s))


def build(cfg: AwetConfig, endpoints: Any, *, metrics: AwetMetrics | None = None,
          groups: Mapping[str, Sequence[str]] | None = None, interval_s: float = 15.0,
          timeout_s: float | None = None) -> LagMonitor:
    """A LagMonitor from the config: default groups, ``cfg.kafka.client`` settings."""
    return LagMonitor(
        endpoints.kafka_bootstrap,
        groups if groups is not None else default_groups(cfg),
        metrics or AwetMetrics(),
        interval_s=interval_s,
        timeout_s=timeout_s or cfg.database.connect_timeout_s,
        client_config=cfg.kafka.client_settings(),
    )
