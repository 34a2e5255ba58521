"""Order requests, broker-side order views and their contract events."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from awet_dagster.contracts import ExecutionReport, ExitEvent, OrderEvent, RiskDecision
from awet_dagster.contracts.base import Side
from awet_dagster.execution.ids import client_order_id

OPEN_STATUSES = frozenset({"new", "accepted", "partially_filled"})
# Order type of a bracket leg -> the exit it makes (Alpaca: take-profit leg = limit, stop-loss leg = stop).
LEG_EXIT_REASONS = {"limit": "take_profit", "stop": "stop_loss", "stop_limit": "stop_loss"}


@dataclass(frozen=True)
class OrderRequest:
    client_order_id: str
    correlation_id: str
    symbol: str
    side: Side
    qty: float
    intent: str  # "entry" | "exit"
    source_event_id: str
    ts: datetime  # decision time (start of the bar the decision was made on)
    reference_price: float  # price the decision saw (slippage is measured against it)
    take_profit: float | None = None
    stop_loss: float | None = None

    def __post_init__(self) -> None:
        if self.qty <= 0:
            raise ValueError(f"order qty must be > 0, got {self.qty}")
        if self.intent not in ("entry", "exit"):
            raise ValueError(f"intent must be entry or exit, got {self.intent!r}")


@dataclass(frozen=True)
class BrokerOrder:
    client_order_id: str
    broker_order_id: str
    symbol: str
    side: Side
    qty: float
    filled_qty: float
    avg_fill_price: float | None
    status: str  # contract OrderStatus
    order_class: str = "simple"
    order_type: str = "market"  # market | limit | stop | stop_limit | trailing_stop
    legs: tuple[BrokerOrder, ...] = ()  # a bracket's take-profit and stop-loss legs (when read nested)
    filled_at: datetime | None = None  # when the venue completed the fill (Alpaca: full fills only)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def exit_reason(self) -> str | None:
        """As a bracket leg: ``take_profit`` (limit leg) or ``stop_loss`` (stop leg)."""
        return LEG_EXIT_REASONS.get(self.order_type)


@dataclass(frozen=True)
class BrokerPosition:
    symbol: str
    qty: float  # signed
    avg_price: float


def entry_request(decision: RiskDecision, reference_price: float) -> OrderRequest:
    if not decision.approved:
        raise ValueError("only an approved decision becomes an order")
    return OrderRequest(
        client_order_id=client_order_id(decision.correlation_id, "entry"),
        correlation_id=decision.correlation_id,
        symbol=decision.symbol,
        side=decision.side,
        qty=decision.qty,
        intent="entry",
        source_event_id=decision.event_id,
        ts=decision.ts,
        reference_price=reference_price,
        take_profit=decision.take_profit,
        stop_loss=decision.stop_loss,
    )


def exit_request(event: ExitEvent) -> OrderRequest:
    """One exit order per position: the id derives from the entry's correlation id."""
    return OrderRequest(
        client_order_id=client_order_id(event.correlation_id, "exit"),
        correlation_id=event.correlation_id,
        symbol=event.symbol,
        side=event.side,
        qty=event.qty,
        intent="exit",
        source_event_id=event.event_id,
        ts=event.ts,
        reference_price=event.trigger_price,
    )


def order_event(req: OrderRequest, order: BrokerOrder | None, *, venue: str, dry_run: bool,
                status: str | None = None) -> OrderEvent:
    return OrderEvent(
        correlation_id=req.correlation_id,
        client_order_id=req.client_order_id,
        broker_order_id=order.broker_order_id if order else None,
        symbol=req.symbol,
        ts=req.ts,
        side=req.side,
        qty=req.qty,
        take_profit=req.take_profit,
        stop_loss=req.stop_loss,
        intent=req.intent,
        source_event_id=req.source_event_id,
        status=status or (order.status if order else "new"),
        venue=venue,
        dry_run=dry_run,
    )


def execution_report(req: OrderRequest, *, ts: datetime, filled_qty: float, avg_price: float | None,
                     fee: float, status: str, venue: str, dry_run: bool, broker_order_id: str | None = None,
                     message: str | None = None) -> ExecutionReport:
    slip = None
    if avg_price is not None:
        sign = 1.0 if req.side == "buy" else -1.0
        slip = sign * (avg_price / req.reference_price - 1.0) * 1e4
    return ExecutionReport(
        correlation_id=req.correlation_id,
        client_order_id=req.client_order_id,
        broker_order_id=broker_order_id,
        symbol=req.symbol,
        ts=ts,
        side=req.side,
        qty=req.qty,
        filled_qty=filled_qty,
        avg_price=avg_price,
        fee=fee,
        slippage_bps=slip,
        status=status,
        intent=req.intent,
        source_event_id=req.source_event_id,
        venue=venue,
        dry_run=dry_run,
        message=message,
    )
