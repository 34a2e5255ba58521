"""What a stream component returns and how it asks for redelivery, Kafka-free.

``Output``: one event to publish on a topic (the live bus publishes it, after which the input
is committed). ``RetryLater``: raised by a component when a dependency is down (the database,
a venue) so the input is NOT committed and comes again to the next start. ``PublishFirst``:
raised by a component whose input needs what the outputs held so far will cause (the bus then
publishes them and hands the input again). Core components use
these so they can run without the bus (backtest, tests) and under it (``awet_kafka.bus`` re-exports
both as its handler API).
"""
from __future__ import annotations

from typing import NamedTuple

from awet_dagster.contracts import BaseEvent


class RetryLater(Exception):
    """Raised by a handler to stop the loop WITHOUT committing (message will be redelivered)."""


class PublishFirst(Exception):
    """Raised by a handler, before it changed any state, when its input needs what the outputs
    its batch holds back (``before_produce``) will cause: e.g. risk at a symbol's bar waits for
    the fill of an order it approved earlier in the same batch, which execution cannot fill
    before the approval is published. The bus ends the batch before this message (publishes
    what was made, ``before_produce`` first) and hands this message and the rest of the batch
    back as the next batch."""


# A NamedTuple, not a frozen dataclass: immutable too, and several times cheaper to build
# (a handler returns one or more per message).
class Output(NamedTuple):
    """One event a handler wants published. ``key`` defaults to the event's symbol."""

    topic: str
    event: BaseEvent
    key: bytes | None = None
