"""What a stream component returns and how it asks for redelivery, Kafka-free.

``Output``: one event to publish on a topic (the live bus publishes it, after which the input
is committed). ``RetryLater``: raised by a component when a dependency is down (the database,
a venue) so the input is NOT committed and comes again to the next start. Core components use
these so they can run without the bus (backtest, tests) and under it (``live.bus`` re-exports
both as its handler API).
"""
from __future__ import annotations

from typing import NamedTuple

from awet_dagster.contracts import BaseEvent


class RetryLater(Exception):
    """Raised by a handler to stop the loop WITHOUT committing (message will be redelivered)."""


# A NamedTuple, not a frozen dataclass: immutable too, and several times cheaper to build
# (a handler returns one or more per message).
class Output(NamedTuple):
    """One event a handler wants published. ``key`` defaults to the event's symbol."""

    topic: str
    event: BaseEvent
    key: bytes | None = None
