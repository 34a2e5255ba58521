"""The bus of a service that books fills in bar order (risk, the exit monitor): the core
component (``RiskDesk``, ``ExitWatch``), a side reader of ``exec.done`` + ``exec.orders``
feeding its ``FillLedger`` through the ``SideInputs`` port, and the bus on its input topic."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import ExecutionReport, OrderEvent
from live.bus import MessageContext
from live.services._common import (
    LazyConnection,
    TailSideInputs,
    contract_of,
    db_outage_is_retry,
    decoded,
    lane_of,
    make_bus,
    tail_for,
)


def build_with_fill_tail(cfg: AwetConfig, endpoints: Any, *, name: str, component: Any, conn: LazyConnection,
                         input_topic: str, input_contract: type, done_topic: str, orders_topic: str,
                         group: str | None, tracker: Any, bus_kwargs: dict[str, Any],
                         batch_hooks: bool = False) -> Any:
    """Start ``component`` (restore from the tables), its side reader of exec.done +
    exec.orders, then the bus on ``input_topic``; on any failure close what was opened. A
    database outage in the handler or a hook is RetryLater (redelivered, never dead-lettered).
    ``batch_hooks``: the component's ``prepare(events with lanes)`` runs before each batch and
    ``write_audit()`` before its outputs are published (risk)."""
    if tracker is not None:
        bus_kwargs.setdefault("on_metrics", tracker.hook(name, [input_topic]))
    model = contract_of(input_topic, input_contract)
    tail = tail_for(cfg, endpoints, name, {done_topic: contract_of(done_topic, ExecutionReport),
                                           orders_topic: contract_of(orders_topic, OrderEvent)},
                    lambda topic, event, ts_ms: component.on_side_event(event))
    try:
        component.start()
        tail.since_ms = tracker.start_ms if tracker is not None else 0
        side = component.side = TailSideInputs(tail.start())
        if tracker is not None:
            tracker.add_tail(name, tail)

        def handle(event: Any, ctx: MessageContext) -> Any:
            with db_outage_is_retry(conn, "database unavailable"):
                return component.handle(event)

        hooks: dict[str, Callable[..., Any]] = {}
        if batch_hooks:
            def before_batch(batch: Sequence[Any]) -> None:
                with db_outage_is_retry(conn, "database unavailable"):
                    component.prepare([(ev, lane_of(msg)) for msg, ev in decoded(batch, model)])

            def before_produce(contexts: Sequence[MessageContext]) -> None:
                with db_outage_is_retry(conn, "audit log unavailable"):
                    component.write_audit()

            hooks = {"before_batch": before_batch, "before_produce": before_produce}
        bus = make_bus(
            cfg, endpoints, name=name, topics={input_topic: model}, guard=component.guard, handler=handle,
            group=group, resources=[tail, conn], component=component, **hooks, **bus_kwargs,
        )
        side.stop_requested = lambda: bus.stop_requested  # a stop cuts a fill wait short
        return bus
    except Exception:
        tail.close()
        conn.close()
        raise
