"""From decisions to orders: the one path entries (RiskDecision) and exits (ExitEvent)
take to a broker in the live execution service (the backtest and risk put the same requests,
``orders.entry_request`` / ``exit_request``, to the same simulator through ``risk.step.BarStep``).

Returns the contract events to publish: the OrderEvent (audit of what was sent, or why
not) and, when a gate blocked it or the venue refused it, a rejected ExecutionReport.
"""
from __future__ import annotations

from dataclasses import dataclass

from awet_dagster.contracts import ExecutionReport, ExitEvent, OrderEvent, RiskDecision
from awet_dagster.execution.broker import Broker, BrokerRejected, OrderBlocked
from awet_dagster.execution.orders import (
    BrokerOrder,
    OrderRequest,
    entry_request,
    execution_report,
    exit_request,
    order_event,
)


@dataclass(frozen=True)
class RouteResult:
    request: OrderRequest
    order: BrokerOrder | None
    order_event: OrderEvent
    report: ExecutionReport | None  # set when nothing was placed (blocked / rejected)

    @property
    def placed(self) -> bool:
        return self.order is not None


class OrderRouter:
    def __init__(self, broker: Broker, *, dry_run: bool = False) -> None:
        self.broker = broker
        self.dry_run = dry_run

    def route_entry(self, decision: RiskDecision, reference_price: float) -> RouteResult:
        return self.route(entry_request(decision, reference_price))

    def route_exit(self, event: ExitEvent) -> RouteResult:
        return self.route(exit_request(event))

    def route(self, req: OrderRequest) -> RouteResult:
        venue = self.broker.venue
        try:
            order = self.broker.submit(req)
        except (OrderBlocked, BrokerRejected) as exc:
            msg = f"{type(exc).__name__}: {exc}"
            ev = order_event(req, None, venue=venue, dry_run=self.dry_run, status="rejected")
            rep = execution_report(req, ts=req.ts, filled_qty=0.0, avg_price=None, fee=0.0, status="rejected",
                                   venue=venue, dry_run=self.dry_run, message=msg)
            return RouteResult(req, None, ev, rep)
        return RouteResult(req, order, order_event(req, order, venue=venue, dry_run=self.dry_run), None)
