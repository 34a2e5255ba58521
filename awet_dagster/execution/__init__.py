"""Execution: deterministic order ids, broker interface, paper simulator, Alpaca paper
broker behind three safety gates, start-up reconciliation (pure core)."""
from awet_dagster.execution.alpaca_broker import PAPER_URL, AlpacaPaperBroker, parse_order
from awet_dagster.execution.broker import (
    BracketBroker,
    Broker,
    BrokerError,
    BrokerRejected,
    BrokerUnavailable,
    OrderBlocked,
    UnsafeEndpoint,
    works_brackets,
)
from awet_dagster.execution.gates import (
    GatedBroker,
    GateReport,
    GateResult,
    approval_file_gate,
    dry_run_gate,
    evaluate_gates,
    paper_endpoint_gate,
)
from awet_dagster.execution.ids import client_order_id, is_ours
from awet_dagster.execution.orders import (
    BrokerOrder,
    BrokerPosition,
    OrderRequest,
    entry_request,
    execution_report,
    exit_request,
    order_event,
)
from awet_dagster.execution.reconcile import InMemoryOrderStore, OrderStore, ReconcileReport, reconcile
from awet_dagster.execution.router import OrderRouter, RouteResult
from awet_dagster.execution.simulator import PaperSimulator

__all__ = [
    "PAPER_URL",
    "AlpacaPaperBroker",
    "BracketBroker",
    "Broker",
    "BrokerError",
    "BrokerOrder",
    "BrokerPosition",
    "BrokerRejected",
    "BrokerUnavailable",
    "GateReport",
    "GateResult",
    "GatedBroker",
    "InMemoryOrderStore",
    "OrderBlocked",
    "OrderRequest",
    "OrderRouter",
    "OrderStore",
    "PaperSimulator",
    "ReconcileReport",
    "RouteResult",
    "UnsafeEndpoint",
    "approval_file_gate",
    "client_order_id",
    "dry_run_gate",
    "entry_request",
    "evaluate_gates",
    "execution_report",
    "exit_request",
    "is_ours",
    "order_event",
    "paper_endpoint_gate",
    "parse_order",
    "reconcile",
    "works_brackets",
]
