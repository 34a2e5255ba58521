"""Warming streaming state up from a symbol's recent history (pure: the reads are passed in,
e.g. ``awet_dagster.storage.bars.read_last_bars_many`` over a connection)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def histories_by_key(first: Mapping[tuple[str, str], datetime],
                     read_many: Callable[[Mapping[str, datetime], str, int], Mapping[str, list]],
                     limit: int) -> dict[tuple[str, str], list]:
    """{(symbol, bar_type): the history before its ts} for ``first`` ({(symbol, bar_type):
    ts}), with ONE ``read_many(wanted, bar_type, limit)`` call per bar type (e.g.
    ``read_last_bars_many`` over a connection). What every live batch pre-pass warms up with."""
    by_type: dict[str, dict[str, datetime]] = {}
    for (symbol, bar_type), ts in first.items():
        by_type.setdefault(bar_type, {})[symbol] = ts
    out: dict[tuple[str, str], list] = {}
    for bar_type, wanted in by_type.items():
        history = read_many(wanted, bar_type, limit)
        out.update({(symbol, bar_type): list(history.get(symbol, ())) for symbol in wanted})
    return out


@dataclass
class InMemoryBarHistory:
    """``last_bars_many`` and ``closes_between`` over ``bars`` ({symbol: [bar mapping]}): the
    reads of the in-memory stores (the twins of the PostgreSQL ones, for tests)."""

    bars: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def last_bars_many(self, wanted: Mapping[str, datetime], bar_type: str,
                       limit: int) -> dict[str, list[dict[str, Any]]]:
        out = {}
        for symbol, before in wanted.items():
            rows = sorted((b for b in self.bars.get(symbol, ()) if b.get("bar_type", bar_type) == bar_type
                           and b["ts"] < before), key=lambda b: b["ts"])
            out[symbol] = rows[-limit:] if limit > 0 else []
        return out

    def closes_between(self, symbol: str, bar_type: str, since: datetime, before: datetime) -> list[float]:
        rows = sorted((b for b in self.bars.get(symbol, ()) if b.get("bar_type", bar_type) == bar_type
                       and since <= b["ts"] < before), key=lambda b: b["ts"])
        return [float(b["close"]) for b in rows]
