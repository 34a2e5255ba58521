"""The bus of a service that books fills in bar order (risk, the exit monitor): its state, a
side reader of ``exec.done`` + ``exec.orders`` feeding the state's ``FillLedger``
(``awet_dagster.execution.ledger``), and the bus on its input topic."""
from __future__ import annotations

from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import ExecutionReport, OrderEvent
from live.services._common import contract_of, make_bus, tail_for, time_guard, wait_until


def build_with_fill_tail(cfg: AwetConfig, endpoints: Any, *, name: str, state: Any, conn: Any, input_topic: str,
                         input_contract: type, done_topic: str, orders_topic: str, group: str | None,
                         tracker: Any, bus_kwargs: dict[str, Any]) -> Any:
    """The bus of a service that books fills in bar order (risk, exit monitor): start `state`,
    start its side reader of `exec.done` + `exec.orders`, then the bus on `input_topic`;
    on any failure close what was opened."""
    if tracker is not None:
        bus_kwargs.setdefault("on_metrics", tracker.hook(name, [input_topic]))
    tail = tail_for(cfg, endpoints, name, {done_topic: contract_of(done_topic, ExecutionReport),
                                           orders_topic: contract_of(orders_topic, OrderEvent)},
                    state.on_side_event)
    try:
        state.start()
        tail.since_ms = tracker.start_ms if tracker is not None else 0
        state.tail = tail.start()
        if tracker is not None:
            tracker.add_tail(name, tail)
        # Optional batch hooks of the state (risk: warm-up/lookup pre-pass, audit before publish).
        hooks = {k: getattr(state, m) for k, m in (("before_batch", "prepare"), ("before_produce", "write_audit"))
                 if callable(getattr(state, m, None))}
        guard = getattr(state, "guard", None) or time_guard(cfg)
        bus = make_bus(
            cfg, endpoints, name=name, topics={input_topic: contract_of(input_topic, input_contract)}, guard=guard,
            handler=state.handle, group=group, resources=[tail, conn], component=state, **hooks, **bus_kwargs,
        )
        state.stopping = lambda: bus.stop_requested  # a stop cuts a fill wait short
        return bus
    except Exception:
        tail.close()
        conn.close()
        raise


#: The fill wait of risk and the exit monitor: ``_common.wait_until`` (stop-aware).
wait_for_fills = wait_until
