"""The offline sample source: real Lean bars shipped inside the package.

Works with no network and no credentials, so demos, tests and CI always have real
prices (see `awet_dagster/data/sample/PROVENANCE.md` for what is in it). The parquet files
hold Lean's raw prices; each fetch attaches the split/dividend factors of the shipped Lean
factor files (`factor_files/<symbol>.csv`) so consumers can adjust (corporate_actions.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from importlib import resources
from pathlib import Path

import polars as pl

from awet_dagster.sources.corporate_actions import attach_factors, read_factor_files
from awet_dagster.sources.errors import SourceError, SourceUnavailable
from awet_dagster.sources.exchange_time import to_utc_bounds
from awet_dagster.sources.registry import requested_symbols
from awet_dagster.sources.schema import BAR_TYPES, ensure_schema, validate_bars

FILES = {"daily": "daily.parquet", "minute": "minute.parquet"}


def default_sample_dir() -> Path:
    # The package is installed from a checkout or a wheel (never a zip), so the
    # resource is a real directory we can hand to polars.
    return Path(str(resources.files("awet_dagster") / "data" / "sample"))


@dataclass(frozen=True)
class SampleRange:
    symbol: str
    rows: int
    first: datetime
    last: datetime


class SampleSource:
    """`BarSource` over the shipped parquet files."""

    name = "sample"

    def __init__(self, data_dir: Path | str | None = None) -> None:
        self._dir = Path(data_dir) if data_dir is not None else default_sample_dir()

    def _path(self, timeframe: str) -> Path:
        if timeframe not in BAR_TYPES:
            raise ValueError(f"timeframe must be one of {BAR_TYPES}, got {timeframe!r}")
        path = self._dir / FILES[timeframe]
        if not path.is_file():
            raise SourceUnavailable(
                f"sample file {path} is missing; rebuild it with scripts/build_sample.py"
            )
        return path

    def symbols(self, timeframe: str) -> tuple[str, ...]:
        frame = pl.scan_parquet(self._path(timeframe)).select(pl.col("symbol").unique()).collect()
        return tuple(sorted(frame["symbol"].to_list()))

    def ranges(self, timeframe: str) -> dict[str, SampleRange]:
        """Per symbol: row count and first/last bar start (UTC)."""
        frame = (
            pl.scan_parquet(self._path(timeframe))
            .group_by("symbol")
            .agg(pl.len().alias("rows"), pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"))
            .sort("symbol")
            .collect()
        )
        return {r["symbol"]: SampleRange(**r) for r in frame.iter_rows(named=True)}

    def date_range(self, timeframe: str) -> tuple[datetime, datetime]:
        """First and last bar start (UTC) over all symbols of `timeframe`."""
        frame = pl.scan_parquet(self._path(timeframe)).select(
            pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last")
        ).collect()
        return frame["first"][0], frame["last"][0]

    def fetch(
        self,
        symbols: Sequence[str],
        start: date | datetime,
        end: date | datetime,
        timeframe: str,
    ) -> pl.DataFrame:
        """Bars of `symbols` with start in [start, end) (dates: inclusive exchange dates).

        An unknown symbol raises `SourceUnavailable` (the sample is a fixed list, a typo
        should not look like "no trading"); a known symbol with no bars in range simply
        contributes no rows.
        """
        available = self.symbols(timeframe)
        wanted = requested_symbols(
            symbols, available, lambda unknown: f"sample has no {timeframe} bars for {unknown}; "
                                                f"available: {list(available)}")
        lo, hi = to_utc_bounds(start, end)
        frame = (
            pl.scan_parquet(self._path(timeframe))
            .filter(pl.col("symbol").is_in(wanted) & (pl.col("ts") >= lo) & (pl.col("ts") < hi))
            .sort("symbol", "ts")
            .collect()
        )
        frame = attach_factors(frame, read_factor_files(self._dir / "factor_files", wanted))
        good, rejected = validate_bars(ensure_schema(frame))
        if rejected.height:
            # The builder validated these rows; a rejection now means the file is corrupt.
            raise SourceError(
                f"shipped sample {timeframe} data failed validation: "
                f"{rejected.height} row(s), first reason {rejected['reason'][0]!r}"
            )
        return good
