"""Feature normalisation: mean/std fitted on a training window, applied anywhere.

Fit on training rows only (the model code chooses the window); fitting on the
full history would leak future statistics into the past.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from awet_dagster.features.spec import FEATURE_SET_VERSION


@dataclass(frozen=True)
class Scaler:
    columns: tuple[str, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    feature_set_version: str = FEATURE_SET_VERSION

    def transform(self, df: pl.DataFrame) -> pl.DataFrame:
        """(x - mean) / std for the fitted columns; other columns are left as they are.
        Nulls stay null."""
        return df.with_columns(
            ((pl.col(c) - m) / s).alias(c) for c, m, s in zip(self.columns, self.means, self.stds, strict=True)
        )

    def transform_row(self, row: dict[str, float]) -> dict[str, float]:
        """The same for one streaming feature dict (returns a new dict)."""
        out = dict(row)
        for c, m, s in zip(self.columns, self.means, self.stds, strict=True):
            out[c] = (row[c] - m) / s
        return out

    def to_dict(self) -> dict:
        return {
            "columns": list(self.columns),
            "means": list(self.means),
            "stds": list(self.stds),
            "feature_set_version": self.feature_set_version,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        return cls(
            columns=tuple(d["columns"]),
            means=tuple(float(x) for x in d["means"]),
            stds=tuple(float(x) for x in d["stds"]),
            feature_set_version=d["feature_set_version"],
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Scaler:
        return cls.from_dict(json.loads(text))


def fit_scaler(features: pl.DataFrame, columns: Sequence[str]) -> Scaler:
    """Mean and population std per column, ignoring nulls and NaNs (warm-up rows).

    A column with no spread (or no values) gets std 1 so transform never divides by 0."""
    means, stds = [], []
    for c in columns:
        s = features[c].cast(pl.Float64).fill_nan(None).drop_nulls()
        m = s.mean() if s.len() else 0.0
        sd = s.std(ddof=0) if s.len() else 0.0
        means.append(float(m) if m is not None else 0.0)
        stds.append(float(sd) if sd is not None and math.isfinite(sd) and sd > 0 else 1.0)
    return Scaler(tuple(columns), tuple(means), tuple(stds))
