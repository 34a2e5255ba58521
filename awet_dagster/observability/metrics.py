"""Every Prometheus metric AWET exports, in one place: the catalogue.

A catalogue, on purpose one file: the alert rules and dashboards may use only the names
exported here (tests/test_alerts.py, tests/test_dashboards.py read it).

- ``AwetMetrics``: the catalogue. Each instance owns its own ``CollectorRegistry`` (tests build
  several side by side; a process normally has one). All names start with ``awet_``.
- ``ServiceMetrics``: what one service uses: the core components (``OrderLifecycle``,
  ``RiskDesk``, ``Forecaster``) report their domain metrics through its small methods (orders,
  rejections, PnL, kill switch...), and it is the live bus's ``on_metrics`` hook (turns the bus's
  ``MetricSample`` into the pipeline metrics).
- ``service_port(cfg, service)``: each process's port,
  ``cfg.observability.metrics_port_base`` + ``SERVICE_PORT_OFFSETS[service]``.
The HTTP endpoint serving them is ``live.metrics`` (``start_metrics_server``, and
``python -m live.metrics --textfile-dir``, the exporter of the Dagster runs' ``*.prom`` files).
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from awet_dagster.config import AwetConfig
from awet_dagster.observability import textfile as tf

log = logging.getLogger("awet.observability.metrics")

#: Port of each process = ``cfg.observability.metrics_port_base`` + offset. ``runner`` is a
#: process running several services (``awet live run``): one endpoint, ``service`` labels
#: tell the services apart. Fixed numbers so docker/prometheus/prometheus.yml can list them.
SERVICE_PORT_OFFSETS: Mapping[str, int] = {
    "runner": 0,
    "ingest": 1,  # awet ingest, any source
    "persist_bars": 2,
    "features": 3,
    "lean_alpha": 4,
    "inference": 5,
    "signal": 6,
    "risk": 7,
    "execution": 8,
    # 9 was exit_monitor's (merged into risk): left free so no other port moves.
    "lag_monitor": 10,
    "replay": 11,
    "ingest_reddit": 12,  # awet ingest --source reddit (runs beside a bar ingest)
    "persist_sentiment": 13,
    "textfile_exporter": 19,
}

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
AGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
BAR_TO_ORDER_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
# The TFT confidence |q50| / (|q50| + half the q10-q90 spread) sits mostly well below 0.3 for
# daily forecasts (median forecast small against its own spread): finer buckets down there.
CONFIDENCE_BUCKETS = (0.01, 0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)
# Signed (negative = price improvement). A histogram with negative buckets exports no _sum
# (prometheus_client follows OpenMetrics: a signed sum is no counter): use the buckets (median).
SLIPPAGE_BPS_BUCKETS = (-50.0, -25.0, -10.0, -5.0, -2.0, 0.0, 2.0, 5.0, 10.0, 15.0, 25.0, 50.0, 100.0)


def reason_code(reason: str, max_len: int = 40) -> str:
    """Bounded label value for a free-text rejection reason: ``"throttle: 31 orders..."`` ->
    ``"throttle"`` (text before the first ``:``, lower-case, ``[a-z0-9_]``)."""
    head = reason.split(":", 1)[0].strip().lower()
    code = re.sub(r"[^a-z0-9]+", "_", head).strip("_")[:max_len]
    return code or "unknown"


class _LastBarCollector:
    """``awet_last_bar_age_seconds{symbol}``: computed at scrape time from the last bar's time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._ts: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def seen(self, symbol: str, ts_epoch_s: float) -> None:
        with self._lock:
            if ts_epoch_s > self._ts.get(symbol, float("-inf")):
                self._ts[symbol] = ts_epoch_s

    def _families(self, with_samples: bool) -> Iterable[GaugeMetricFamily]:
        age = GaugeMetricFamily("awet_last_bar_age_seconds",
                                "Seconds since the start of the newest bar seen, per symbol", labels=["symbol"])
        stamp = GaugeMetricFamily("awet_last_bar_timestamp_seconds",
                                  "Unix time of the newest bar seen (bar start), per symbol", labels=["symbol"])
        if with_samples:
            with self._lock:
                items = sorted(self._ts.items())
            now = self._clock()
            for sym, ts in items:
                age.add_metric([sym], max(0.0, now - ts))
                stamp.add_metric([sym], ts)
        return [age, stamp]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families(False)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self._families(True)


class _OwnedGauges:
    """Label-less gauges that appear in the exposition only after their first ``set``."""

    def __init__(self, helps: Mapping[str, str]) -> None:
        self._helps = dict(helps)
        self._values: dict[str, float] = {}

    def set(self, name: str, value: float) -> None:
        if name not in self._helps:
            raise KeyError(f"unknown owned gauge {name!r}")
        self._values[name] = float(value)

    def get(self, name: str) -> float | None:
        return self._values.get(name)

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [GaugeMetricFamily(n, h) for n, h in self._helps.items()]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        values = dict(self._values)
        return [GaugeMetricFamily(n, self._helps[n], value=values[n]) for n in self._helps if n in values]


class AwetMetrics:
    """The catalogue of live metrics, registered in ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.clock = clock
        if process_metrics:
            ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes...

        # ---- pipeline (fed by the bus's on_metrics hook through ServiceMetrics)
        self.events_in = Counter("awet_events_in", "Messages consumed", ["service", "topic"], registry=r)
        self.events_out = Counter("awet_events_out", "Messages produced", ["service", "topic"], registry=r)
        self.dead_letters = Counter("awet_dead_letters", "Messages sent to <topic>.dlq (by input topic)",
                                    ["service", "topic"], registry=r)
        self.commit_failures = Counter("awet_commit_failures", "Failed asynchronous offset commits",
                                       ["service"], registry=r)
        self.handler_latency = Histogram("awet_handler_latency_seconds", "Decode + handle time of one message",
                                         ["service"], buckets=LATENCY_BUCKETS, registry=r)
        self.event_age = Histogram("awet_event_age_seconds", "Now minus the input message's Kafka timestamp",
                                   ["service"], buckets=AGE_BUCKETS, registry=r)
        self.batch_latency = Histogram("awet_batch_seconds", "A polled batch: decode + handle + publish (commits are checkpointed apart)",
                                       ["service"], buckets=LATENCY_BUCKETS, registry=r)
        self.pipeline_last_event = Gauge("awet_pipeline_last_event_timestamp_seconds",
                                         "Unix time the service last consumed a message", ["service"], registry=r)
        self.service_up = Gauge("awet_service_up", "1 while the service runs its loop, 0 once stopped or failed",
                                ["service"], registry=r)
        self.consumer_lag = Gauge("awet_consumer_lag", "Messages not yet committed by the group (clamped at 0)",
                                  ["group", "topic", "partition"], registry=r)
        self.lag_monitor_errors = Counter("awet_lag_monitor_errors", "Lag measurements that failed",
                                          ["group"], registry=r)
        self.bar_to_order = Histogram("awet_bar_to_order_latency_seconds",
                                      "Bar close seen on market.raw -> order submitted to the venue",
                                      buckets=BAR_TO_ORDER_BUCKETS, registry=r)
        self.last_bar = _LastBarCollector(clock)
        r.register(self.last_bar)

        # ---- model
        self.model_confidence = Histogram("awet_model_confidence", "Confidence of each scored signal (0..1)",
                                          buckets=CONFIDENCE_BUCKETS, registry=r)
        self.model_oos_sharpe = Gauge(tf.MODEL_OOS_SHARPE, tf.TEXTFILE_METRICS[tf.MODEL_OOS_SHARPE][0],
                                      list(tf.TEXTFILE_METRICS[tf.MODEL_OOS_SHARPE][1]), registry=r)
        self.champion_info = Gauge(tf.MODEL_CHAMPION_INFO, tf.TEXTFILE_METRICS[tf.MODEL_CHAMPION_INFO][0],
                                   list(tf.TEXTFILE_METRICS[tf.MODEL_CHAMPION_INFO][1]), registry=r)
        self.textfile_write_ts = Gauge(tf.TEXTFILE_WRITE_TS, tf.TEXTFILE_METRICS[tf.TEXTFILE_WRITE_TS][0],
                                       list(tf.TEXTFILE_METRICS[tf.TEXTFILE_WRITE_TS][1]), registry=r)

        # ---- trading
        self.exposure = Gauge("awet_exposure_dollars", "Signed position value per symbol", ["symbol"], registry=r)
        self.orders_submitted = Counter("awet_orders_submitted", "Orders sent to the venue",
                                        ["side", "venue"], registry=r)
        self.risk_rejections = Counter("awet_risk_rejections", "Signals rejected by the risk engine",
                                       ["reason"], registry=r)
        # kind: timeout, connection, http_<status>, cancel_unconfirmed, unavailable (every failed
        # call, also the ones a retry absorbed: AlpacaPaperBroker.on_error).
        self.broker_api_errors = Counter("awet_broker_api_errors", "Failed broker API calls",
                                         ["venue", "kind"], registry=r)
        self.slippage = Histogram("awet_slippage_bps", "Fill price vs decision price, bps (positive = worse)",
                                  ["venue"], buckets=SLIPPAGE_BPS_BUCKETS, registry=r)
        self.slippage_last = Gauge("awet_slippage_last_bps", "Slippage of the last fill, bps", ["symbol"],
                                   registry=r)
        self.incomplete_bar_times = Counter(
            "awet_risk_incomplete_bar_times", "Bar times risk released before every bar their clock listed had "
            "come (risk.event_order clock: a bar lost upstream, a clock missing, or a restart)", registry=r)
        # Label-less gauges owned by ONE service (risk/execution/inference): exported only once
        # set, so the other processes do not report a misleading 0 (a 0 kill switch from the
        # features service would hide nothing, but a 0 PnL would pollute sums and panels).
        self.owned = _OwnedGauges({
            "awet_pnl_realised_dollars": "Realised PnL since inception",
            "awet_pnl_unrealised_dollars": "Unrealised PnL of open positions",
            "awet_pnl_total_dollars": "Realised + unrealised PnL",
            "awet_daily_pnl_dollars": "PnL of the current session vs its opening equity (negative when losing)",
            "awet_exposure_total_dollars": "Gross exposure, sum of |position value|",
            "awet_kill_switch_active": "1 while the kill switch is tripped",
            "awet_risk_signals_held": "Scored signals risk holds until their bar time is complete (risk.event_order clock)",
            "awet_model_prediction_drift": "Drift of recent predictions vs the training distribution (PSI)",
        })
        r.register(self.owned)

    def service(self, name: str) -> ServiceMetrics:
        return ServiceMetrics(self, name)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def exported_names(self) -> set[str]:
        names = exported_names(self.registry, (self.owned, self.last_bar))
        for h in vars(self).values():  # no _sum for a histogram with negative buckets (see above)
            if isinstance(h, Histogram) and h._upper_bounds[0] < 0:  # noqa: SLF001
                names.discard(h._name + "_sum")  # noqa: SLF001
        return names


def exported_names(registry: CollectorRegistry, describe_collectors: Iterable[Any] = ()) -> set[str]:
    """Every series name the registry can expose, with the suffixes a query may use
    (``_total``/``_created`` of counters, ``_bucket``/``_sum``/``_count`` of histograms)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "info": ("_info",),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    }
    names: set[str] = set()
    families = list(registry.collect())
    for collector in describe_collectors:  # custom collectors: names even when nothing is set yet
        families.extend(collector.describe())
    for family in families:
        if family.type not in ("counter", "histogram", "summary", "info", "gaugehistogram"):
            names.add(family.name)  # a counter/histogram has no series under its bare name
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names


class ServiceMetrics:
    """Metrics of one service: call it with ``MetricSample``s (it is a bus ``MetricsHook``)."""

    def __init__(self, metrics: AwetMetrics, service: str) -> None:
        self.metrics = m = metrics
        self.service = service
        self._clock = m.clock
        self._in: dict[str, Any] = {}
        self._out: dict[str, Any] = {}
        self._dlq: dict[str, Any] = {}
        self._handle = m.handler_latency.labels(service)
        self._age = m.event_age.labels(service)
        self._batch = m.batch_latency.labels(service)
        self._commit_fail = m.commit_failures.labels(service)
        self._last_event = m.pipeline_last_event.labels(service)
        self._up = m.service_up.labels(service)
        self._incomplete_seen = 0

    # ------------------------------------------------------------ bus hook
    def __call__(self, sample: Any) -> None:
        name, topic, value = sample.name, sample.topic, sample.value
        if name == "handle_seconds":
            self._handle.observe(value)
        elif name == "messages_in":
            child = self._in.get(topic)
            if child is None:
                child = self._in.setdefault(topic, self.metrics.events_in.labels(self.service, topic))
                # A consumed topic's dead-letter count exists (at 0) before its first dead letter.
                self._dlq.setdefault(topic, self.metrics.dead_letters.labels(self.service, topic))
            child.inc(value)
            self._last_event.set(self._clock())
        elif name == "messages_out":
            child = self._out.get(topic) or self._out.setdefault(topic,
                                                                  self.metrics.events_out.labels(self.service, topic))
            child.inc(value)
        elif name == "event_age_seconds":
            self._age.observe(value)
        elif name == "batch_seconds":
            self._batch.observe(value)
        elif name == "dead_letters":
            child = self._dlq.get(topic) or self._dlq.setdefault(topic,
                                                                 self.metrics.dead_letters.labels(self.service, topic))
            child.inc(value)
        elif name == "commit_failures":
            self._commit_fail.inc(value)
        else:
            log.debug("%s: unknown metric sample %r", self.service, name)

    # ------------------------------------------------------------ lifecycle
    def set_up(self, up: bool = True) -> None:
        self._up.set(1 if up else 0)

    # ------------------------------------------------------------ domain
    def bar_seen(self, symbol: str, ts_epoch_s: float) -> None:
        """A bar for ``symbol`` starting at ``ts_epoch_s`` arrived (feeds ``awet_last_bar_age_seconds``)."""
        self.metrics.last_bar.seen(symbol, ts_epoch_s)

    def bar_to_order(self, seconds: float) -> None:
        self.metrics.bar_to_order.observe(max(0.0, seconds))

    def prediction(self, confidence: float) -> None:
        self.metrics.model_confidence.observe(confidence)

    def set_drift(self, value: float) -> None:
        self.metrics.owned.set("awet_model_prediction_drift", value)

    def set_champion(self, model: str, version: str | int, oos_sharpe: float | None = None) -> None:
        """The champion being served (replaces any previously reported version and its Sharpe)."""
        self.clear_champion()
        self.metrics.champion_info.labels(model, str(version)).set(1)
        if oos_sharpe is not None:
            self.metrics.model_oos_sharpe.labels(model).set(oos_sharpe)

    def clear_champion(self) -> None:
        """No model served (idle inference): no champion series, no OOS Sharpe."""
        self.metrics.champion_info.clear()
        self.metrics.model_oos_sharpe.clear()

    def venue_ready(self, venue: str) -> None:
        """An execution venue is in use: its order, error and slippage series exist from now on (at
        0), so ``increase()``/``rate()`` see the first order or error instead of a missing series.
        Errors are pre-declared under ``kind="timeout"``, the one kind every venue can report;
        the others (http_<status>, connection...) appear when they happen."""
        for side in ("buy", "sell"):
            self.metrics.orders_submitted.labels(side, venue)
        self.metrics.broker_api_errors.labels(venue, "timeout")
        self.metrics.slippage.labels(venue)

    def order_submitted(self, side: str, venue: str) -> None:
        self.metrics.orders_submitted.labels(side.lower(), venue).inc()

    def risk_rejection(self, reason: str) -> None:
        self.metrics.risk_rejections.labels(reason_code(reason)).inc()

    def broker_error(self, venue: str, kind: int | str) -> None:
        self.metrics.broker_api_errors.labels(venue, str(kind)).inc()

    def slippage(self, symbol: str, venue: str, bps: float) -> None:
        self.metrics.slippage.labels(venue).observe(bps)
        self.metrics.slippage_last.labels(symbol).set(bps)

    def set_pnl(self, realised: float, unrealised: float) -> None:
        self.metrics.owned.set("awet_pnl_realised_dollars", realised)
        self.metrics.owned.set("awet_pnl_unrealised_dollars", unrealised)
        self.metrics.owned.set("awet_pnl_total_dollars", realised + unrealised)

    def set_daily_pnl(self, dollars: float) -> None:
        self.metrics.owned.set("awet_daily_pnl_dollars", dollars)

    def set_exposure(self, per_symbol: Mapping[str, float]) -> None:
        """Signed position values by symbol (symbols not listed are dropped)."""
        self.metrics.exposure.clear()
        for sym, value in per_symbol.items():
            self.metrics.exposure.labels(sym).set(value)
        self.metrics.owned.set("awet_exposure_total_dollars", sum(abs(v) for v in per_symbol.values()))

    def set_kill_switch(self, tripped: bool) -> None:
        self.metrics.owned.set("awet_kill_switch_active", 1 if tripped else 0)

    def event_order(self, held: int, incomplete_total: int) -> None:
        """Risk's event-time order: signals held now; bar times released incomplete so far (a running count)."""
        self.metrics.owned.set("awet_risk_signals_held", held)
        if incomplete_total > self._incomplete_seen:
            self.metrics.incomplete_bar_times.inc(incomplete_total - self._incomplete_seen)
            self._incomplete_seen = incomplete_total


def service_port(cfg: AwetConfig, service: str) -> int:
    """``cfg.observability.metrics_port_base`` + the service's fixed offset."""
    try:
        offset = SERVICE_PORT_OFFSETS[service]
    except KeyError:
        raise KeyError(f"no metrics port offset for service {service!r}; known: {sorted(SERVICE_PORT_OFFSETS)}") \
            from None
    return int(cfg.observability.metrics_port_base) + offset
