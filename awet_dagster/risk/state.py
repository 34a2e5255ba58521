"""Persistent risk state: the kill switch and the daily equity anchors.

The kill switch must survive a restart (a crash loop must not re-arm trading), so it
lives behind `RiskStateStore`; the live loop backs it with PostgreSQL's risk_state table,
the backtest and tests with `InMemoryRiskStateStore`. Only an explicit operator call
(`RiskEngine.reset_kill_switch`) clears it: nothing in the core clears it on its own.
"""
from __future__ import annotations

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


class InMemoryRiskStateStore:
    def __init__(self) -> None:
        self._kill = KillSwitchState()
        self._anchors: dict[date, float] = {}

    def get_kill_switch(self) -> KillSwitchState:
        return self._kill

    def set_kill_switch(self, state: KillSwitchState) -> None:
        self._kill = state

    def get_daily_anchor(self, session: date) -> float | None:
        return self._anchors.get(session)

    def set_daily_anchor(self, session: date, equity: float) -> None:
        self._anchors[session] = float(equity)
