"""The alpha output contract: a small immutable signal, like Lean's price Insight."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import IntEnum

import polars as pl

BAR_DURATION: dict[str, timedelta] = {"minute": timedelta(minutes=1), "daily": timedelta(days=1)}


class Direction(IntEnum):
    DOWN = -1
    FLAT = 0
    UP = 1


@dataclass(frozen=True)
class AlphaSignal:
    """A directional view on `symbol`, emitted when an alpha model changes its mind.

    `ts` is the start of the bar whose close produced the signal (so it is known at
    that bar's close); `period` is how long the view is meant to hold (Lean: bar
    length x the model's period). Lean's RSI/EMA-cross/MACD models set neither
    magnitude nor confidence, so they are None here too."""

    symbol: str
    ts: datetime
    alpha: str
    direction: Direction
    period: timedelta
    magnitude: float | None = None
    confidence: float | None = None


AlphaSignalResult = AlphaSignal  # name used by callers that think in "results"

SIGNAL_SCHEMA = pl.Schema(
    {
        "symbol": pl.Utf8,
        "ts": pl.Datetime("us", "UTC"),
        "alpha": pl.Utf8,
        "direction": pl.Int8,
        "period": pl.Duration("us"),
        "magnitude": pl.Float64,
        "confidence": pl.Float64,
    }
)


def signals_to_frame(signals: list[AlphaSignal]) -> pl.DataFrame:
    """Signals as a polars frame (direction as -1/0/1), in the given order."""
    return pl.DataFrame(
        {
            "symbol": [s.symbol for s in signals],
            "ts": [s.ts for s in signals],
            "alpha": [s.alpha for s in signals],
            "direction": [int(s.direction) for s in signals],
            "period": [s.period for s in signals],
            "magnitude": [s.magnitude for s in signals],
            "confidence": [s.confidence for s in signals],
        },
        schema=SIGNAL_SCHEMA,
    )


def bar_duration(bar_type: str) -> timedelta:
    try:
        return BAR_DURATION[bar_type]
    except KeyError:
        raise ValueError(f"unknown bar_type {bar_type!r}; expected one of {sorted(BAR_DURATION)}") from None
