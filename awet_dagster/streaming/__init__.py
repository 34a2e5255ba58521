"""Streaming side of the core: bars <-> MarketRawEvents, replay ordering and pacing,
per-symbol feature/alpha state with warm-up, deterministic event ids.

Pure core: no Kafka client and no Dagster here; ``live/`` does the wire work.
"""
from awet_dagster.streaming.events import (
    bar_event_id,
    bar_to_event,
    derived_event_id,
    event_to_bar,
    events_to_frame,
)
from awet_dagster.streaming.replay import ReplayPacer, bars_to_events, replay_order
from awet_dagster.streaming.state import (
    DEFAULT_WARMUP_BARS,
    AlphaBank,
    FeatureEngine,
    HistoryReader,
    StreamCounters,
    to_contract_signal,
)
from awet_dagster.streaming.warmup import histories_by_key

__all__ = [
    "DEFAULT_WARMUP_BARS",
    "AlphaBank",
    "FeatureEngine",
    "HistoryReader",
    "ReplayPacer",
    "StreamCounters",
    "bar_event_id",
    "bar_to_event",
    "bars_to_events",
    "derived_event_id",
    "event_to_bar",
    "events_to_frame",
    "histories_by_key",
    "replay_order",
    "to_contract_signal",
]
