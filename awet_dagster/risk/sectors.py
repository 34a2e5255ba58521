"""A small static sector map for the sample symbols (sector exposure cap).

Deliberately tiny and explicit: a wrong sector silently loosens a cap, so unknown
symbols map to "unknown" (one shared bucket, capped like any sector) rather than a guess.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

UNKNOWN_SECTOR = "unknown"

SECTOR_MAP: Mapping[str, str] = MappingProxyType({
    # broad-market / country ETFs
    "SPY": "etf", "QQQ": "etf", "IWM": "etf", "EEM": "etf",
    # commodity ETFs
    "USO": "commodity_etf", "BNO": "commodity_etf",
    # technology / communication
    "AAPL": "tech", "GOOG": "tech", "GOOGL": "tech", "FB": "tech", "IBM": "tech",
    # financials
    "BAC": "financials", "AIG": "financials",
    "WMI": "financials",  # Washington Mutual in the Lean data (1998-2009)
    "WM": "industrials",  # Waste Management
    # media
    "FOXA": "media", "NWSA": "media",
})


def sector_of(symbol: str, sector_map: Mapping[str, str] = SECTOR_MAP) -> str:
    return sector_map.get(symbol.upper(), UNKNOWN_SECTOR)
