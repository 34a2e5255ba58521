"""Consumer lag from offsets: pure arithmetic, unit-tested exactly.

lag(partition) = max(0, end_offset - committed_offset)

- ``end_offset`` is the partition's high watermark (the offset the next produced message gets).
- A partition the group never committed (no entry, ``None`` or a negative librdkafka sentinel
  such as OFFSET_INVALID = -1001) lags by the whole retained partition:
  ``end_offset - low_offset`` (``low_offset`` defaults to 0).
- Clamped at 0: some brokers (the embedded tansu, see docs/embedded-infra notes) report a high
  watermark below the true end offset, so a committed offset above it is possible and must
  not produce a negative lag.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TopicPartition = tuple[str, int]


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    end_offset: int
    committed: int | None  # None: the group has no valid commit on this partition
    lag: int


def partition_lag(end_offset: int, committed: int | None, low_offset: int = 0) -> int:
    """Lag of one partition, never negative (see module docstring)."""
    if end_offset < 0:  # unknown watermark: nothing measurable
        return 0
    if committed is None or committed < 0:
        return max(0, end_offset - max(0, low_offset))
    return max(0, end_offset - committed)


def compute_lags(
    end_offsets: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int | None],
    low_offsets: Mapping[TopicPartition, int] | None = None,
) -> dict[TopicPartition, int]:
    """{(topic, partition): lag} for every partition in ``end_offsets``.

    Partitions only present in ``committed`` (the topic shrank or metadata is partial) are
    ignored: without an end offset there is nothing to measure.
    """
    lows = low_offsets or {}
    return {tp: partition_lag(end, committed.get(tp), lows.get(tp, 0)) for tp, end in end_offsets.items()}


def group_lags(
    group: str,
    end_offsets: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int | None],
    low_offsets: Mapping[TopicPartition, int] | None = None,
) -> list[PartitionLag]:
    """Same as ``compute_lags`` but as sorted ``PartitionLag`` records of one group."""
    lags = compute_lags(end_offsets, committed, low_offsets)
    out = []
    for (topic, part) in sorted(lags):
        c = committed.get((topic, part))
        out.append(PartitionLag(group, topic, part, end_offsets[(topic, part)],
                                c if c is not None and c >= 0 else None, lags[(topic, part)]))
    return out


def total_lag(lags: Iterable[PartitionLag]) -> dict[tuple[str, str], int]:
    """{(group, topic): summed lag} (what the ConsumerLag alerts compare)."""
    out: dict[tuple[str, str], int] = {}
    for lag in lags:
        out[(lag.group, lag.topic)] = out.get((lag.group, lag.topic), 0) + lag.lag
    return out
