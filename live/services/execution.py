"""``execution``: risk.approved + exec.exits (+ market.raw for fills) -> exec.orders, exec.done.

Wiring for the core ``OrderLifecycle`` (``awet_dagster.execution.lifecycle``, whose module
doc tells the order path, restart and bracket rules): decode, call it, publish what it
returns, and write its queued order states and fills at the checkpoint, BEFORE the offsets
that produced them are committed (the bus's ``before_commit``). A database outage anywhere
is ``RetryLater``: the batch is redelivered, never dead-lettered. On start it restores from
the tables, reconciles with the broker and re-announces recent order states.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import ExecutionReport, ExitEvent, MarketRawEvent, OrderEvent, RiskDecision
from awet_dagster.contracts.topics import EXEC_DONE, EXEC_EXITS, EXEC_ORDERS, MARKET_RAW, RISK_APPROVED
from awet_dagster.execution.lifecycle import OrderLifecycle, fill_time, make_broker
from awet_dagster.execution.orders import BrokerOrder, OrderRequest
from awet_dagster.storage.execution import PostgresExecutionStore
from awet_kafka.bus import MessageContext
from awet_dagster.streaming.outputs import Output
from live.services._common import (
    LazyConnection,
    LiveService,
    contract_of,
    db_outage_is_retry,
    db_settings,
    decoded,
    make_bus,
    time_guard,
)

__all__ = ["NAME", "build", "fill_time", "make_broker"]

log = logging.getLogger("awet.live.execution")

NAME = "execution"


def build(cfg: AwetConfig, endpoints: Any, *, approved_topic: str = RISK_APPROVED, exits_topic: str = EXEC_EXITS,
          market_topic: str = MARKET_RAW, orders_topic: str = EXEC_ORDERS, done_topic: str = EXEC_DONE,
          group: str | None = None, name: str = NAME, namespace: str = "", broker: Any = None,
          on_submit: Callable[[OrderRequest, BrokerOrder], None] | None = None, tracker: Any = None,
          metrics: Any = None, **bus_kwargs: Any) -> LiveService:
    """``broker``: an instance (tests) or None (from ``execution.broker``). ``namespace``
    scopes the rows this instance restores (tests sharing one database). ``metrics``: a
    ``awet_dagster.observability.metrics.ServiceMetrics`` for the trading metrics (the runner passes it)."""
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    b = broker if broker is not None and not isinstance(broker, str) else make_broker(cfg, broker)
    # The simulator is not a real venue: its orders are not "dry-run" orders.
    dry_run = bool(cfg.execution.dry_run) if b.venue == "alpaca" else False
    ex = OrderLifecycle(PostgresExecutionStore(conn.get), b, initial_equity=cfg.risk.initial_equity,
                        orders_topic=orders_topic, done_topic=done_topic, namespace=namespace, dry_run=dry_run,
                        on_submit=on_submit, metrics=metrics)
    for topic, model in ((orders_topic, OrderEvent), (done_topic, ExecutionReport)):
        if contract_of(topic, model) is not model:
            raise ValueError(f"topic {topic!r} does not carry {model.__name__}")
    order_topics = {approved_topic: contract_of(approved_topic, RiskDecision),
                    exits_topic: contract_of(exits_topic, ExitEvent)}
    if tracker is not None:
        bus_kwargs.setdefault("on_metrics", tracker.hook(name, [market_topic, approved_topic, exits_topic]))
    also = bus_kwargs.pop("before_commit", None)  # a caller's hook (tests) runs after our writes

    def handle(event: Any, ctx: MessageContext) -> list[Output]:
        # A DB outage must not dead-letter an order: redeliver once the DB is back.
        with db_outage_is_retry(conn, "database unavailable"):
            return ex.handle(event)

    def before_batch(batch: Sequence[Any]) -> None:
        # The batch's decisions and exits, read ahead so their order rows are written at once.
        # A message that does not decode is left to the bus (dead letter).
        events = [ev for topic, model in order_topics.items()
                  for _, ev in decoded(batch, model, skip=lambda m, t=topic: m.topic() != t)]
        with db_outage_is_retry(conn, "orders table unavailable"):
            ex.prepare(events)

    def before_commit(contexts: Sequence[MessageContext]) -> None:
        with db_outage_is_retry(conn, "could not record the batch's order states and fills"):
            ex.flush_writes()
        if also is not None:
            also(contexts)

    svc = make_bus(
        cfg, endpoints, name=name, topics={market_topic: contract_of(market_topic, MarketRawEvent), **order_topics},
        handler=handle, group=group, resources=[conn], component=ex, before_batch=before_batch,
        before_commit=before_commit, guard=time_guard(cfg), **bus_kwargs,
    )
    try:
        with db_outage_is_retry(conn, "orders table unavailable"):
            recovered = ex.start()
        for out in recovered:
            svc.producer.send(out.topic, out.event, key=out.key)
        if recovered:
            svc.producer.flush(30)
            log.info("execution: re-announced %d recent order state(s)", len(recovered))
    except Exception:
        svc.close()
        raise
    return svc
