"""``risk``: signals.scored -> risk.approved | risk.rejected (every decision audited) and
exec.exits (the exit rules on the same book).

Wiring for the core ``RiskDesk`` (``awet_dagster.risk.desk``, whose module doc tells the
rules: fills booked at their bar, computed for the paper venue, waited for with Alpaca; exits;
idempotent decisions; batching) over ``PostgresRiskStore``. Its portfolio follows ``exec.done`` and ``exec.orders`` through a side
``TopicTail`` (decided: consume exec.done rather than share memory with the execution
service, so the two can run in different processes). The batch's audit records are written
before its decisions are published (the bus's ``before_produce``).
"""
from __future__ import annotations

from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import ExitEvent, RiskDecision, ScoredSignal
from awet_dagster.contracts.topics import (
    EXEC_DONE,
    EXEC_EXITS,
    EXEC_ORDERS,
    MARKET_CLOCK,
    RISK_APPROVED,
    RISK_REJECTED,
    SIGNALS_SCORED,
)
from awet_dagster.risk.desk import RiskDesk
from awet_dagster.storage.risk import PostgresRiskStore
from awet_dagster.streaming.sequencer import EventTimeSequencer
from live.services._common import LazyConnection, LiveService, contract_of, db_settings, time_guard
from live.services._ledger import build_with_fill_tail

NAME = "risk"


def build(cfg: AwetConfig, endpoints: Any, *, input_topic: str = SIGNALS_SCORED, approved_topic: str = RISK_APPROVED,
          rejected_topic: str = RISK_REJECTED, exits_topic: str = EXEC_EXITS, done_topic: str = EXEC_DONE, orders_topic: str = EXEC_ORDERS,
          clock_topic: str = MARKET_CLOCK, event_order: str | None = None,
          group: str | None = None, name: str = NAME, namespace: str = "",
          fill_wait_s: float | None = None, tracker: Any = None, metrics: Any = None,
          **bus_kwargs: Any) -> LiveService:
    """``metrics``: a ``awet_dagster.observability.metrics.ServiceMetrics`` for the trading gauges (the runner
    passes it). ``event_order`` ("arrival" | "clock", default ``risk.event_order``): with "clock" the
    signals are handed over in event-time order, by the clocks read from ``clock_topic``."""
    order = event_order or cfg.risk.event_order
    if order not in ("arrival", "clock"):
        raise ValueError(f"event_order must be 'arrival' or 'clock', got {order!r}")
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    desk = RiskDesk(cfg, PostgresRiskStore(conn.get, namespace), approved_topic=approved_topic,
                    rejected_topic=rejected_topic, exits_topic=exits_topic, guard=time_guard(cfg), namespace=namespace,
                    fill_wait_s=fill_wait_s, metrics=metrics,
                    sequencer=EventTimeSequencer(cfg.risk.clock_wait_s) if order == "clock" else None)
    for topic in (approved_topic, rejected_topic):
        if contract_of(topic, RiskDecision) is not RiskDecision:
            raise ValueError(f"topic {topic!r} does not carry RiskDecision")
    if contract_of(exits_topic, ExitEvent) is not ExitEvent:
        raise ValueError(f"topic {exits_topic!r} does not carry ExitEvent")
    return build_with_fill_tail(cfg, endpoints, name=name, component=desk, conn=conn, input_topic=input_topic,
                                input_contract=ScoredSignal, done_topic=done_topic, orders_topic=orders_topic,
                                group=group, tracker=tracker, bus_kwargs=bus_kwargs, batch_hooks=True,
                                clock_topic=clock_topic if order == "clock" else None)
