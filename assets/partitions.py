"""Partitioning of the bar pipelines.

Daily bars: one partition per symbol (its whole configured history), so the main job loads
every symbol in one single-run backfill. Minute bars: exchange day × symbol, so the UI can
backfill any date range × symbol set.
"""
from datetime import date, datetime, timedelta
from typing import Iterable

from dagster import (
    DailyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    PartitionsDefinition,
    StaticPartitionsDefinition,
)

from awet_dagster.config import AwetConfig
from awet_dagster.sources.exchange_time import to_utc_bounds
from awet_dagster.storage.bars import PartitionWindow


def bar_partitions(bar_type: str, cfg: AwetConfig) -> PartitionsDefinition:
    if bar_type == "daily":
        return StaticPartitionsDefinition(list(cfg.data.symbols))
    return MultiPartitionsDefinition(
        {
            "date": DailyPartitionsDefinition(start_date=cfg.data.minute_start, timezone="America/New_York"),
            "symbol": StaticPartitionsDefinition(list(cfg.data.minute_symbols)),
        }
    )


def windows_for(bar_type: str, partition_keys: Iterable[str], cfg: AwetConfig) -> list[PartitionWindow]:
    """The (symbols, [start, end)) window each partition key owns, in UTC."""
    keys = list(partition_keys)
    if not keys:
        raise ValueError(f"no {bar_type} partitions selected: launch with a partition key or range")
    out = []
    for key in keys:
        if bar_type == "daily":
            start, end = to_utc_bounds(date.fromisoformat(cfg.data.start), date.fromisoformat(cfg.data.end))
            out.append(PartitionWindow((key,), "daily", start, end))
        else:
            dims = key.keys_by_dimension if isinstance(key, MultiPartitionKey) else _split(key)
            day = date.fromisoformat(dims["date"])
            start, end = to_utc_bounds(day, day)
            out.append(PartitionWindow((dims["symbol"],), "minute", start, end))
    return out


def _split(key: str) -> dict[str, str]:
    # MultiPartitionKey string form is "<date>|<symbol>" (dimensions sorted by name).
    date_part, symbol = str(key).split("|")
    return {"date": date_part, "symbol": symbol}


def warmup_start(window: PartitionWindow, bar_type: str, bars_needed: int) -> datetime:
    """How far back to read history so indicators are warm at the window start."""
    if bar_type == "daily":
        return window.start - timedelta(days=int(bars_needed * 1.6) + 10)
    # ~16 h of pre/post/regular minutes per session day; go back enough sessions.
    return window.start - timedelta(days=max(4, bars_needed // 300 + 4))
