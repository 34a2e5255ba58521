"""Topic names and the topic -> contract registry.

Decision on exits (documented here because it shapes the topology):
``ExitEvent`` is an *order request* that goes to the execution service on its own topic,
``exec.exits``, NOT through ``risk.approved``. Closing a position only reduces risk, and an
exit must never be blocked by entry limits (max exposure, CVaR budget) or wait behind the
risk service. The execution service consumes ``risk.approved`` (entries) and ``exec.exits``
(exits), turns either into an ``OrderEvent`` (published on ``exec.orders`` as the audit
trail of what was sent to the venue) and reports outcomes as ``ExecutionReport`` on
``exec.done``.

Every topic has a dead-letter twin ``<topic>.dlq`` carrying ``DeadLetter`` envelopes.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .base import BaseEvent
from .events import (
    AlphaSignal,
    BarClock,
    DeadLetter,
    ExecutionReport,
    ExitEvent,
    FeatureEvent,
    MarketRawEvent,
    OrderEvent,
    Prediction,
    RiskDecision,
    ScoredSignal,
    SentimentEvent,
)

MARKET_RAW = "market.raw"
#: Per bar time, the bars a source published (``BarClock``): what risk orders its input by.
MARKET_CLOCK = "market.clock"
ENGINEERED = "engineered"
ALPHA_SIGNALS = "alpha.signals"
PREDICTIONS = "predictions"
SIGNALS_SCORED = "signals.scored"
RISK_APPROVED = "risk.approved"
RISK_REJECTED = "risk.rejected"
EXEC_EXITS = "exec.exits"
EXEC_ORDERS = "exec.orders"
EXEC_DONE = "exec.done"
#: Reddit mentions and sentiment per symbol and closed bucket (``awet ingest --source reddit``).
SOCIAL_SENTIMENT = "social.sentiment"

DLQ_SUFFIX = ".dlq"

#: topic name -> contract class carried on it (read-only).
TOPIC_REGISTRY: Mapping[str, type[BaseEvent]] = MappingProxyType(
    {
        MARKET_RAW: MarketRawEvent,
        MARKET_CLOCK: BarClock,
        ENGINEERED: FeatureEvent,
        ALPHA_SIGNALS: AlphaSignal,
        PREDICTIONS: Prediction,
        SIGNALS_SCORED: ScoredSignal,
        RISK_APPROVED: RiskDecision,
        RISK_REJECTED: RiskDecision,
        EXEC_EXITS: ExitEvent,
        EXEC_ORDERS: OrderEvent,
        EXEC_DONE: ExecutionReport,
        SOCIAL_SENTIMENT: SentimentEvent,
    }
)

#: The main topics, in pipeline order (without their DLQ twins).
ALL_TOPICS: tuple[str, ...] = tuple(TOPIC_REGISTRY)


def clock_topic_for(bar_topic: str) -> str | None:
    """Where a source publishing bars to ``bar_topic`` sends their clocks: ``market.clock`` for
    ``market.raw``; none for a bar topic of its own (a test, an experiment), whose readers expect
    no clocks."""
    return MARKET_CLOCK if bar_topic == MARKET_RAW else None


def dlq_topic(topic: str) -> str:
    """Dead-letter topic of ``topic`` (``market.raw`` -> ``market.raw.dlq``)."""
    if topic.endswith(DLQ_SUFFIX):
        raise ValueError(f"{topic!r} is already a dead-letter topic")
    return topic + DLQ_SUFFIX


def is_dlq_topic(topic: str) -> bool:
    return topic.endswith(DLQ_SUFFIX)


def all_topics_with_dlq() -> tuple[str, ...]:
    """Every main topic followed by its DLQ twin: what a deployment must create."""
    return tuple(name for t in ALL_TOPICS for name in (t, dlq_topic(t)))


def model_for_topic(topic: str) -> type[BaseEvent]:
    """Contract class for ``topic``; ``<anything>.dlq`` carries ``DeadLetter``."""
    if is_dlq_topic(topic):
        return DeadLetter
    try:
        return TOPIC_REGISTRY[topic]
    except KeyError:
        raise KeyError(f"no contract registered for topic {topic!r}; known: {sorted(TOPIC_REGISTRY)}") from None
