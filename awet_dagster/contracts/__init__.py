"""Event contracts (pydantic v2) and the topic registry of the live loop.

Pure core: no Kafka client import here; ``live/bus.py`` does the wire work.
"""

from .base import BaseEvent, ContractModel, ensure_utc, new_event_id, utc_now
from .events import (
    CONTRACT_MODELS,
    AlphaSignal,
    ComponentScores,
    DeadLetter,
    ExecutionReport,
    ExitEvent,
    FeatureEvent,
    FilterFailure,
    MarketRawEvent,
    OrderEvent,
    Prediction,
    Quantiles,
    RiskDecision,
    RiskSnapshot,
    ScoredSignal,
)
from .topics import ALL_TOPICS, TOPIC_REGISTRY, all_topics_with_dlq, dlq_topic, is_dlq_topic, model_for_topic

__all__ = [
    "ALL_TOPICS",
    "CONTRACT_MODELS",
    "TOPIC_REGISTRY",
    "AlphaSignal",
    "BaseEvent",
    "ComponentScores",
    "ContractModel",
    "DeadLetter",
    "ExecutionReport",
    "ExitEvent",
    "FeatureEvent",
    "FilterFailure",
    "MarketRawEvent",
    "OrderEvent",
    "Prediction",
    "Quantiles",
    "RiskDecision",
    "RiskSnapshot",
    "ScoredSignal",
    "all_topics_with_dlq",
    "dlq_topic",
    "ensure_utc",
    "is_dlq_topic",
    "model_for_topic",
    "new_event_id",
    "utc_now",
]
