"""Risk engine, portfolio accounting and persistent risk state (pure core)."""
from awet_dagster.risk.cvar import CvarResult, ReturnHistory, historical_cvar
from awet_dagster.risk.engine import RiskEngine, RiskOutcome, session_of
from awet_dagster.risk.portfolio import Fill, Portfolio, Position
from awet_dagster.risk.sectors import SECTOR_MAP, UNKNOWN_SECTOR, sector_of
from awet_dagster.risk.state import InMemoryRiskStateStore, KillSwitchState, RiskStateStore
from awet_dagster.risk.throttle import OrderThrottle

__all__ = [
    "SECTOR_MAP",
    "UNKNOWN_SECTOR",
    "CvarResult",
    "Fill",
    "InMemoryRiskStateStore",
    "KillSwitchState",
    "OrderThrottle",
    "Portfolio",
    "Position",
    "ReturnHistory",
    "RiskEngine",
    "RiskOutcome",
    "RiskStateStore",
    "historical_cvar",
    "sector_of",
    "session_of",
]
