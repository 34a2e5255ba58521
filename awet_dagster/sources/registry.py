"""The `BarSource` interface and a name -> source registry.

Sources are registered as "module:attribute" strings and imported on first use, so
asking for the offline sample never imports alpaca-py, yfinance or praw.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any, Protocol, runtime_checkable

import polars as pl

from awet_dagster.sources.errors import SourceUnavailable, UnknownSource


@runtime_checkable
class BarSource(Protocol):
    """Anything that returns bars in the contract of `schema.BAR_SCHEMA`.

    `start`/`end`: dates are inclusive exchange dates, tz-aware datetimes a half-open
    UTC interval [start, end) on the bar start. `timeframe` is a bar_type
    ("minute" | "daily").
    """

    name: str

    def fetch(
        self,
        symbols: Sequence[str],
        start: date | datetime,
        end: date | datetime,
        timeframe: str,
    ) -> pl.DataFrame: ...


_REGISTRY: dict[str, str | Callable[..., BarSource]] = {
    "sample": "awet_dagster.sources.sample:SampleSource",
    "lean": "awet_dagster.sources.lean_folder:LeanFolderSource",
    "synthetic": "awet_dagster.sources.synthetic:SyntheticSource",
    "polygon": "awet_dagster.sources.polygon:PolygonSource",
    "alpaca": "awet_dagster.sources.alpaca:AlpacaSource",
    "yfinance": "awet_dagster.sources.yfinance_source:YFinanceSource",
}


def requested_symbols(symbols: Sequence[str], available: Sequence[str],
                      unknown: Callable[[list[str]], str]) -> list[str]:
    """``symbols`` upper-cased, each once, in order; none at all is a ValueError and any not in
    ``available`` a ``SourceUnavailable`` with ``unknown(sorted missing)`` (a source with a fixed
    list of symbols: a typo must not look like "no trading")."""
    wanted = list(dict.fromkeys(s.upper() for s in symbols))
    if not wanted:
        raise ValueError("symbols must not be empty")
    missing = sorted(set(wanted) - set(available))
    if missing:
        raise SourceUnavailable(unknown(missing))
    return wanted


def register_source(name: str, factory: str | Callable[..., BarSource]) -> None:
    """Add or replace a source: a callable or a lazy "module:attribute" path."""
    _REGISTRY[name] = factory


def available_sources() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_source(name: str, **kwargs: Any) -> BarSource:
    """Build the source registered as `name` with `kwargs` (credentials, settings)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownSource(
            f"unknown bar source {name!r}; available: {list(available_sources())}"
        ) from None
    if isinstance(factory, str):
        module_name, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module_name), attr)
    return factory(**kwargs)
