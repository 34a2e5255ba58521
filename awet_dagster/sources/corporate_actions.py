"""Corporate actions: split- and dividend-adjusted prices beside the raw ones.

Every bar keeps the RAW prices a broker trades at (``open``..``close``, ``bid``/``ask``,
``volume``) and carries two factors to today's basis:

- ``adj_factor``: raw price x adj_factor = the split- and dividend-adjusted price (Lean's
  "adjusted" normalisation: price factor x split factor);
- ``split_factor``: splits only; raw volume / split_factor = adjusted volume, and a change of
  it between two bars of a symbol is a split an open position goes through (quantity x
  ratio, price / ratio: ``split_ratio``).

Research (features, the model, walk-forward backtests) and the signal engine see adjusted
series (``adjusted_frame`` / ``adjusted_bar``); orders, fills and positions stay raw.

Lean factor files (``<symbol>.csv``, rows ``yyyyMMdd,price factor,split factor,reference
price``): a raw price on a date is adjusted with the factors of the first row dated on or
after it (the last row, 20501231, carries 1, 1).
"""
from __future__ import annotations

import bisect
import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from awet_dagster.sources.exchange_time import EXCHANGE_TZ
from awet_dagster.sources.schema import FACTOR_COLUMNS


@dataclass(frozen=True)
class FactorRow:
    day: date
    price_factor: float
    split_factor: float


class FactorFile:
    """One symbol's factor rows, sorted by date."""

    def __init__(self, rows: Iterable[FactorRow]) -> None:
        self.rows = sorted(rows, key=lambda r: r.day)
        if not self.rows:
            raise ValueError("a factor file needs at least one row")
        self._days = [r.day for r in self.rows]

    @classmethod
    def parse(cls, text: str, name: str = "factor file") -> FactorFile:
        rows = []
        for n, rec in enumerate(csv.reader(io.StringIO(text)), 1):
            if not rec or not rec[0].strip():
                continue
            try:
                day = datetime.strptime(rec[0].strip(), "%Y%m%d").date()
                pf, sf = float(rec[1]), float(rec[2])
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{name} line {n}: expected yyyyMMdd,price factor,split factor,...: {rec}") from exc
            if pf <= 0 or sf <= 0:
                raise ValueError(f"{name} line {n}: factors must be > 0: {rec}")
            rows.append(FactorRow(day, pf, sf))
        return cls(rows)

    @classmethod
    def read(cls, path: Path) -> FactorFile:
        return cls.parse(path.read_text(), str(path))

    def factors(self, day: date) -> tuple[float, float]:
        """(adj_factor, split_factor) of a raw price on ``day``: the first row on or after it."""
        i = bisect.bisect_left(self._days, day)
        if i >= len(self.rows):
            return 1.0, 1.0  # after the file's last row: today's basis
        r = self.rows[i]
        return r.price_factor * r.split_factor, r.split_factor


def read_factor_files(folder: Path, symbols: Iterable[str]) -> dict[str, FactorFile]:
    """Factor files of ``symbols`` found in ``folder`` (``<symbol lower>.csv``); missing: none."""
    out = {}
    for symbol in symbols:
        path = folder / f"{symbol.lower()}.csv"
        if path.is_file():
            out[symbol.upper()] = FactorFile.read(path)
    return out


def attach_factors(bars: pl.DataFrame, files: Mapping[str, FactorFile]) -> pl.DataFrame:
    """``bars`` with ``adj_factor`` / ``split_factor`` from each symbol's factor file (1, 1 for a
    symbol without one), by the bar's exchange date."""
    if bars.height == 0:
        return bars.with_columns(pl.lit(1.0).alias("adj_factor"), pl.lit(1.0).alias("split_factor"))
    days = bars.select(pl.col("symbol"), pl.col("ts").dt.convert_time_zone(EXCHANGE_TZ).dt.date().alias("day"))
    keys = days.unique().to_dicts()
    adj, split = [], []
    for k in keys:
        f = files.get(k["symbol"])
        a, s = f.factors(k["day"]) if f is not None else (1.0, 1.0)
        adj.append(a)
        split.append(s)
    table = pl.DataFrame({"symbol": [k["symbol"] for k in keys], "day": [k["day"] for k in keys],
                          "adj_factor": adj, "split_factor": split},
                         schema={"symbol": pl.Utf8, "day": pl.Date, "adj_factor": pl.Float64,
                                 "split_factor": pl.Float64})
    joined = pl.concat([bars.drop([c for c in FACTOR_COLUMNS if c in bars.columns]), days.select("day")],
                       how="horizontal").join(table, on=["symbol", "day"], how="left", maintain_order="left")
    return joined.drop("day")


PRICE_FIELDS = ("open", "high", "low", "close", "bid", "ask")


def adjusted_frame(bars: pl.DataFrame) -> pl.DataFrame:
    """Prices x adj_factor, volume / split_factor, the factors then 1.0 (so adjusting twice
    changes nothing). A frame without factors is returned as is."""
    if "adj_factor" not in bars.columns and "split_factor" not in bars.columns:
        return bars
    a = pl.col("adj_factor").fill_null(1.0) if "adj_factor" in bars.columns else pl.lit(1.0)
    s = pl.col("split_factor").fill_null(1.0) if "split_factor" in bars.columns else pl.lit(1.0)
    cols = [(pl.col(c) * a).alias(c) for c in PRICE_FIELDS if c in bars.columns]
    if "volume" in bars.columns:
        cols.append((pl.col("volume") / s).alias("volume"))
    cols += [pl.lit(1.0, dtype=pl.Float64).alias(c) for c in FACTOR_COLUMNS if c in bars.columns]
    return bars.with_columns(cols)



def forward_log_returns(bars: pl.DataFrame, horizon: int) -> pl.DataFrame:
    """(symbol, ts, fwd): log(close[t + horizon bars] / close[t]) per symbol on adjusted
    prices (null where the horizon runs past the data): the outcome both calibrators (TFT and
    alpha-only) are fitted on."""
    return (adjusted_frame(bars).sort("symbol", "ts")
            .with_columns((pl.col("close").shift(-horizon).over("symbol") / pl.col("close")).log().alias("fwd"))
            .select("symbol", "ts", "fwd"))

def adjusted_bar(bar: Mapping[str, Any]) -> Mapping[str, Any]:
    """One bar (a mapping of the bar schema) on the adjusted basis, its factors then 1.0
    (idempotent); the bar itself when it is unadjusted."""
    a = bar.get("adj_factor") or 1.0
    s = bar.get("split_factor") or 1.0
    if a == 1.0 and s == 1.0:
        return bar
    out = dict(bar)
    for c in PRICE_FIELDS:
        if out.get(c) is not None:
            out[c] = out[c] * a
    if out.get("volume") is not None:
        out["volume"] = out["volume"] / s
    out["adj_factor"] = out["split_factor"] = 1.0
    return out


def adjusted_close(bar: Mapping[str, Any]) -> float:
    return float(bar["close"]) * float(bar.get("adj_factor") or 1.0)


class SplitWatch:
    """The split factor of each symbol's last bar: ``observe`` returns the split ratio when a
    bar's factor differs from the one before (None otherwise, and for a symbol's first bar).
    The one place the simulator, the backtest and the live ledgers learn of a split."""

    def __init__(self) -> None:
        self._factor: dict[str, float] = {}

    def observe(self, symbol: str, split_factor: float | None) -> float | None:
        factor = float(split_factor or 1.0)
        ratio = split_ratio(self._factor.get(symbol), factor)
        self._factor[symbol] = factor
        return ratio


def split_ratio(previous_split_factor: float | None, split_factor: float | None) -> float | None:
    """New shares per old share when the split factor changed between two bars of a symbol,
    else None. raw(t) x split(t) is on today's basis for every t, so q shares at raw price p
    before become q x ratio shares at p / ratio after, ratio = new / old split factor
    (AAPL 2020-08-31: 0.25 -> 1.0, 4 new shares per share)."""
    if not previous_split_factor or not split_factor:
        return None
    ratio = split_factor / previous_split_factor
    if abs(ratio - 1.0) < 1e-9:
        return None
    return ratio
