"""Persistent risk state: the kill switch, the daily equity anchors and, in event-time order,
the last bar time risk handed over per bar type (so a restart does not wait for the clocks of
times it handled before).

The kill switch must survive a restart (a crash loop must not re-arm trading), so it
lives behind `RiskStateStore`; the live loop backs it with PostgreSQL's risk_state table,
the backtest and tests with `InMemoryRiskStateStore`. Only an explicit operator call
(`RiskEngine.reset_kill_switch`) clears it: nothing in the core clears it on its own.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class KillSwitchState:
    tripped: bool = False
    reason: str | None = None
    tripped_at: datetime | None = None
    reset_by: str | None = None  # operator who last reset it
    reset_at: datetime | None = None
    reset_reason: str | None = None


@runtime_checkable
class RiskStateStore(Protocol):
    def get_kill_switch(self) -> KillSwitchState: ...

    def set_kill_switch(self, state: KillSwitchState) -> None: ...

    def get_daily_anchor(self, session: date) -> float | None:
        """Equity at the start of `session` (exchange date), None if not recorded yet."""
        ...

    def set_daily_anchor(self, session: date, equity: float) -> None: ...

    def get_released(self) -> dict[str, datetime]:
        """{bar type: the last bar time whose signals were all handed over} (event-time order)."""
        ...

    def set_released(self, released: Mapping[str, datetime]) -> None: ...


class InMemoryRiskStateStore:
    def __init__(self) -> None:
        self._kill = KillSwitchState()
        self._anchors: dict[date, float] = {}
        self._released: dict[str, datetime] = {}

    def get_kill_switch(self) -> KillSwitchState:
        return self._kill

    def set_kill_switch(self, state: KillSwitchState) -> None:
        self._kill = state

    def get_daily_anchor(self, session: date) -> float | None:
        return self._anchors.get(session)

    def set_daily_anchor(self, session: date, equity: float) -> None:
        self._anchors[session] = float(equity)

    def get_released(self) -> dict[str, datetime]:
        return dict(self._released)

    def set_released(self, released: Mapping[str, datetime]) -> None:
        self._released = dict(released)


class CachedRiskStateStore:
    """A ``RiskStateStore`` read through a cache: anchors are immutable once set; the kill
    switch is re-read after ``ttl_s`` (an operator's ``awet kill-switch trip`` is seen within
    that, without a query per bar). Writes go straight through. ``inner``: returns the store
    to use (a fresh one per call: a live connection may have been reopened)."""

    def __init__(self, inner: Callable[[], RiskStateStore], ttl_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._inner = inner
        self._ttl = ttl_s
        self._clock = clock
        self._kill: tuple[float, KillSwitchState] | None = None
        self._anchors: dict[date, float] = {}

    def get_kill_switch(self) -> KillSwitchState:
        now = self._clock()
        if self._kill is None or now - self._kill[0] >= self._ttl:
            self._kill = (now, self._inner().get_kill_switch())
        return self._kill[1]

    def set_kill_switch(self, state: KillSwitchState) -> None:
        self._inner().set_kill_switch(state)
        self._kill = (self._clock(), state)

    def get_daily_anchor(self, session: date) -> float | None:
        value = self._anchors.get(session)
        if value is None:
            value = self._inner().get_daily_anchor(session)
            if value is not None:
                self._anchors[session] = value
        return value

    def set_daily_anchor(self, session: date, equity: float) -> None:
        self._inner().set_daily_anchor(session, equity)
        self._anchors[session] = float(equity)

    def get_released(self) -> dict[str, datetime]:  # read once, at start: not cached
        return self._inner().get_released()

    def set_released(self, released: Mapping[str, datetime]) -> None:
        self._inner().set_released(released)
