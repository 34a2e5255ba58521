"""Three independent safety gates; any one closed and no order leaves the process.

1. paper endpoint: the Alpaca base URL must be https://paper-api.alpaca.markets or a
   loopback test server (127.0.0.1 / ::1 / localhost). Checked when the Alpaca broker is
   built (it refuses to exist otherwise) AND again before every order.
2. `execution.dry_run`: true -> nothing is sent (the default).
3. `execution.approval_file`: must exist; deleting it halts order flow at once (it is
   re-checked on every order, not cached).
The gates are evaluated independently and all reasons are reported together.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from awet_dagster.config.schema import ExecutionConfig
from awet_dagster.execution.broker import Broker, OrderBlocked
from awet_dagster.execution.orders import BrokerOrder, BrokerPosition, OrderRequest

PAPER_HOST = "paper-api.alpaca.markets"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    reason: str | None = None


@dataclass(frozen=True)
class GateReport:
    results: tuple[GateResult, ...]

    @property
    def open(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(f"{r.name}: {r.reason}" for r in self.results if not r.passed)


def paper_endpoint_gate(base_url: str) -> GateResult:
    name = "paper_endpoint"
    try:
        parts = urlsplit(base_url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        return GateResult(name, False, f"unparsable base URL ({exc})")
    if parts.username or parts.password:
        return GateResult(name, False, "base URL must not carry credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return GateResult(name, False, "base URL must be scheme://host[:port] only")
    if host == PAPER_HOST and parts.scheme == "https" and port in (None, 443):
        return GateResult(name, True)
    if host in LOOPBACK_HOSTS and parts.scheme in ("http", "https"):
        return GateResult(name, True)
    return GateResult(name, False, f"{parts.scheme}://{host} is not the Alpaca paper endpoint "
                                   f"(https://{PAPER_HOST}) nor a loopback test server")


def dry_run_gate(dry_run: bool) -> GateResult:
    return GateResult("dry_run", not dry_run, "execution.dry_run is true" if dry_run else None)


def approval_file_gate(path: Path) -> GateResult:
    ok = Path(path).is_file()
    return GateResult("approval_file", ok, None if ok else f"approval file {path} does not exist")


def evaluate_gates(cfg: ExecutionConfig, base_url: str | None = None) -> GateReport:
    """`base_url`: the URL the broker really talks to (default: the configured one)."""
    return GateReport((
        paper_endpoint_gate(base_url if base_url is not None else cfg.alpaca_base_url),
        dry_run_gate(cfg.dry_run),
        approval_file_gate(cfg.approval_file),
    ))


class GatedBroker:
    """Wraps a real broker: `submit` checks every gate first and raises `OrderBlocked`.

    Reads (lookups, open orders, positions) and cancels pass through: they send no order,
    and reconciliation must work while trading is halted.
    """

    def __init__(self, inner: Broker, cfg: ExecutionConfig) -> None:
        self.inner = inner
        self.cfg = cfg
        self.venue = inner.venue
        self.blocked = 0

    def submit(self, order: OrderRequest) -> BrokerOrder:
        report = evaluate_gates(self.cfg, getattr(self.inner, "base_url", None))
        if not report.open:
            self.blocked += 1
            raise OrderBlocked(report.reasons)
        return self.inner.submit(order)

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        return self.inner.get_order_by_client_id(client_order_id)

    def list_open_orders(self) -> list[BrokerOrder]:
        return self.inner.list_open_orders()

    def list_positions(self) -> list[BrokerPosition]:
        return self.inner.list_positions()

    def cancel(self, client_order_id: str) -> BrokerOrder | None:
        return self.inner.cancel(client_order_id)

    # Bracket legs (inner brokers that work them, e.g. Alpaca: see `works_brackets`).
    def get_bracket(self, client_order_id: str, broker_order_id: str | None = None) -> BrokerOrder | None:
        return self.inner.get_bracket(client_order_id, broker_order_id)  # type: ignore[attr-defined]

    def cancel_bracket(self, client_order_id: str, broker_order_id: str | None = None) -> BrokerOrder | None:
        return self.inner.cancel_bracket(client_order_id, broker_order_id)  # type: ignore[attr-defined]
