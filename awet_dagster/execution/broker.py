"""The broker interface shared by the paper simulator and Alpaca paper trading."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from awet_dagster.execution.orders import BrokerOrder, BrokerPosition, OrderRequest


class BrokerError(Exception):
    """Base class of execution errors."""


class BrokerUnavailable(BrokerError):
    """The venue could not be reached after every retry (the order may or may not exist:
    look it up by client_order_id before trying again)."""


class BrokerRejected(BrokerError):
    """The venue refused the order (4xx other than a duplicate client_order_id)."""


class OrderBlocked(BrokerError):
    """A safety gate is closed: the order never left the process."""

    def __init__(self, reasons: tuple[str, ...]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class UnsafeEndpoint(BrokerError):
    """The configured base URL is not the Alpaca paper host nor a loopback test server."""


@runtime_checkable
class Broker(Protocol):
    venue: str

    def submit(self, order: OrderRequest) -> BrokerOrder:
        """Idempotent by client_order_id: a second submit returns the existing order."""
        ...

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None: ...

    def list_open_orders(self) -> list[BrokerOrder]: ...

    def list_positions(self) -> list[BrokerPosition]: ...

    def cancel(self, client_order_id: str) -> BrokerOrder | None: ...


@runtime_checkable
class BracketBroker(Protocol):
    """A venue that works bracket legs itself (Alpaca): the execution service must follow them."""

    def get_bracket(self, client_order_id: str, broker_order_id: str | None = None) -> BrokerOrder | None:
        """The order with its legs (``BrokerOrder.legs``)."""
        ...

    def cancel_bracket(self, client_order_id: str, broker_order_id: str | None = None) -> BrokerOrder | None:
        """Cancel the order if still open and every open leg; the order with its legs after."""
        ...


def works_brackets(broker: object) -> bool:
    """Whether the venue behind ``broker`` (a ``GatedBroker``'s inner broker) works bracket
    legs itself, so the caller must follow them (``BracketBroker``)."""
    return isinstance(getattr(broker, "inner", broker), BracketBroker)
