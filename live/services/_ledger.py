"""The bus of a service that books fills in bar order (risk): the core component
(``RiskDesk``), a side reader of ``exec.done`` + ``exec.orders`` (+ ``market.clock`` in event-time
order) feeding its ``FillLedger`` through the ``SideInputs`` port, and the bus on its input topic,
ordered by ``EventTimeOrderer`` when the component has a sequencer."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import BarClock, BaseEvent, ExecutionReport, OrderEvent
from awet_dagster.streaming.sequencer import EventTimeSequencer
from awet_kafka.bus import MessageContext
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


class EventTimeOrderer:
    """The bus's ``Orderer`` over the core ``EventTimeSequencer``: each message that decodes is
    held by its event's (bar type, ts, symbol) until its time is complete; one that does not
    (or a consumer error) goes at once, for the bus to dead-letter. ``lock``: the side
    reader's lock, under which the clocks reach the sequencer."""

    def __init__(self, sequencer: EventTimeSequencer, model: type[BaseEvent], lock: Callable[[], Any],
                 metrics: Any = None) -> None:
        self.sequencer, self.model, self.lock = sequencer, model, lock
        self.metrics = metrics  # a ServiceMetrics: signals held, bar times released incomplete
        self._now: list[Any] = []

    def offer(self, messages: Sequence[Any]) -> None:
        with self.lock():
            for msg in messages:
                try:
                    ev = None if msg.error() is not None or msg.value() is None \
                        else self.model.model_validate_json(msg.value())
                except ValueError:  # pydantic's ValidationError: the bus dead-letters it
                    ev = None
                if ev is None:
                    self._now.append(msg)
                else:
                    self.sequencer.offer(ev.bar_type, ev.ts, ev.symbol, msg)
            self._report()

    def ready(self) -> list[Any]:
        with self.lock():
            out, self._now = self._now + self.sequencer.ready(), []
            self._report()
        return out

    def _report(self) -> None:
        if self.metrics is not None:
            self.metrics.event_order(len(self.sequencer), self.sequencer.counters["incomplete"])

    def held(self) -> int:
        with self.lock():
            return len(self.sequencer)

    def drop(self, partitions: set[tuple[str, int]]) -> None:
        with self.lock():
            self.sequencer.drop(lambda m: (m.topic(), m.partition()) not in partitions)


def build_with_fill_tail(cfg: AwetConfig, endpoints: Any, *, name: str, component: Any, conn: LazyConnection,
                         input_topic: str, input_contract: type, done_topic: str, orders_topic: str,
                         group: str | None, tracker: Any, bus_kwargs: dict[str, Any],
                         batch_hooks: bool = False, clock_topic: str | None = None) -> Any:
    """Start ``component`` (restore from the tables), its side reader of exec.done +
    exec.orders, then the bus on ``input_topic``; on any failure close what was opened. A
    database outage in the handler or a hook is RetryLater (redelivered, never dead-lettered).
    ``batch_hooks``: the component's ``prepare(events with lanes)`` runs before each batch and
    ``write_audit()`` before its outputs are published (risk). ``clock_topic``: read beside
    the others (its ``BarClock``s go to the component's sequencer) and the input handed over in
    event-time order (``EventTimeOrderer``)."""
    if tracker is not None:
        bus_kwargs.setdefault("on_metrics", tracker.hook(name, [input_topic]))
    model = contract_of(input_topic, input_contract)
    side_topics = {done_topic: contract_of(done_topic, ExecutionReport),
                   orders_topic: contract_of(orders_topic, OrderEvent)}
    if clock_topic is not None:
        side_topics[clock_topic] = contract_of(clock_topic, BarClock)
    tail = tail_for(cfg, endpoints, name, side_topics, lambda topic, event, ts_ms: component.on_side_event(event))
    try:
        component.start()
        tail.since_ms = tracker.start_ms if tracker is not None else 0
        side = component.side = TailSideInputs(tail.start())
        if tracker is not None:
            tracker.add_tail(name, tail)

        def handle(event: Any, ctx: MessageContext) -> Any:
            with db_outage_is_retry(conn, "database unavailable"):
                return component.handle(event)

        hooks: dict[str, Any] = {}
        if batch_hooks:
            def before_batch(batch: Sequence[Any]) -> None:
                with db_outage_is_retry(conn, "database unavailable"):
                    component.prepare([(ev, lane_of(msg)) for msg, ev in decoded(batch, model)])

            def before_produce(contexts: Sequence[MessageContext]) -> None:
                with db_outage_is_retry(conn, "audit log unavailable"):
                    component.write_audit()

            hooks = {"before_batch": before_batch, "before_produce": before_produce}
        if clock_topic is not None:
            hooks["orderer"] = EventTimeOrderer(component.sequencer, model, side.lock,
                                                getattr(component, "metrics", None))
        bus = make_bus(
            cfg, endpoints, name=name, topics={input_topic: model}, guard=component.guard, handler=handle,
            group=group, resources=[tail, conn], component=component, **hooks, **bus_kwargs,
        )
        side.stop_requested = lambda: bus.stop_requested  # a stop cuts a fill wait short (Alpaca)
        return bus
    except Exception:
        tail.close()
        conn.close()
        raise
