"""Market-data sources behind one interface (`BarSource`), and the bar contract.

Vendor clients are imported lazily through `get_source`, so importing this package
stays cheap and works without alpaca-py / yfinance / praw being importable.
"""
from awet_dagster.sources.errors import (
    AuthenticationFailed,
    MissingCredentials,
    NoData,
    RateLimited,
    SchemaError,
    SourceError,
    SourceUnavailable,
    UnknownSource,
)
from awet_dagster.sources.registry import BarSource, available_sources, get_source, register_source
from awet_dagster.sources.schema import BAR_SCHEMA, ensure_schema, validate_bars

__all__ = [
    "BAR_SCHEMA",
    "AuthenticationFailed",
    "BarSource",
    "MissingCredentials",
    "NoData",
    "RateLimited",
    "SchemaError",
    "SourceError",
    "SourceUnavailable",
    "UnknownSource",
    "available_sources",
    "ensure_schema",
    "get_source",
    "register_source",
    "validate_bars",
]
