"""Conversions between bar rows (the polars bar schema) and ``MarketRawEvent``s.

Event ids are deterministic (uuid5) so that re-publishing the same bar — a replay run
twice, an ingest reconnect, a service redelivery — yields the same ``event_id`` and a
downstream consumer can dedupe on it. ``correlation_id`` is NOT deterministic: it is a
fresh id per published bar, the id that follows a trade from bar to exit.
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import polars as pl

from awet_dagster.contracts import MarketRawEvent, bar_source, new_event_id
from awet_dagster.sources.schema import BAR_SCHEMA

# Fixed namespace: changing it would change every event id (and break dedupe across versions).
_NAMESPACE = uuid.UUID("6f1d3c1e-2b1a-4f38-9b43-6a3f1f0c7a11")


def _iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError("bar ts must be timezone-aware (UTC)")
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def bar_event_id(symbol: str, bar_type: str, ts: datetime) -> str:
    """Deterministic id of the market event for one bar (same bar -> same id)."""
    return str(uuid.uuid5(_NAMESPACE, f"bar|{symbol}|{bar_type}|{_iso(ts)}"))


def derived_event_id(kind: str, symbol: str, bar_type: str, ts: datetime, *parts: object) -> str:
    """Deterministic id of an event derived from one bar (features, alpha signal...).

    A redelivered bar recomputes the same event with the same id, so consumers dedupe it.
    """
    extra = "|".join(str(p) for p in parts)
    return str(uuid.uuid5(_NAMESPACE, f"{kind}|{symbol}|{bar_type}|{_iso(ts)}|{extra}"))


def _opt(value: Any) -> float | None:
    # Nullable columns arrive as None or NaN; the contract wants None (NaN is rejected).
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def bar_to_event(bar: Mapping[str, Any], *, correlation_id: str | None = None,
                 source: str | None = None, replay: bool = False) -> MarketRawEvent:
    """MarketRawEvent for one bar row (a mapping with the bar-schema keys).

    ``source`` (default: the row's own) is named as the design's feed (``bar_source``:
    the offline sample and synthetic bars are "stub"); ``replay``: the bar is re-published
    from storage. The volume is a whole number of shares (a fractional one, which only a
    crypto feed has, is rounded)."""
    symbol, bar_type, ts = bar["symbol"], bar["bar_type"], bar["ts"]
    return MarketRawEvent(
        event_id=bar_event_id(symbol, bar_type, ts),
        correlation_id=correlation_id or new_event_id(),
        symbol=symbol,
        bar_type=bar_type,
        ts=ts,
        open=bar["open"],
        high=bar["high"],
        low=bar["low"],
        close=bar["close"],
        volume=round(float(bar["volume"])),
        bid=_opt(bar.get("bid")),
        ask=_opt(bar.get("ask")),
        source=bar_source(source or bar.get("source")),
        replay=replay,
        adj_factor=_opt(bar.get("adj_factor")) or 1.0,
        split_factor=_opt(bar.get("split_factor")) or 1.0,
    )


def event_to_bar(event: MarketRawEvent) -> dict[str, Any]:
    """Bar-schema mapping of an event (the input FeatureState / alpha models expect)."""
    return {
        "symbol": event.symbol,
        "bar_type": event.bar_type,
        "ts": event.ts,
        "open": event.open,
        "high": event.high,
        "low": event.low,
        "close": event.close,
        "volume": event.volume,
        "bid": event.bid,
        "ask": event.ask,
        "source": event.source,
        "adj_factor": event.adj_factor,
        "split_factor": event.split_factor,
    }


def events_to_frame(events: Iterable[MarketRawEvent]) -> pl.DataFrame:
    """Bars frame (BAR_SCHEMA) of events, in the given order."""
    cols: dict[str, list] = {name: [] for name in BAR_SCHEMA.names()}
    for ev in events:
        for name, value in event_to_bar(ev).items():
            cols[name].append(value)
    return pl.DataFrame(cols, schema=BAR_SCHEMA)
