"""Lean's published indicator values (tests/data/lean-testdata) and the comparison rule.

A value matches when it is within half a unit of the last digit the file was written with
(the files are rounded to that), or one part in a million, whichever is larger. Where a
file's own rounding of its inputs leaves more (the MACD line of SPY x100 prices near 14000,
~1e-4), the floor is given with the reason.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "lean-testdata"


@dataclass(frozen=True)
class Mismatch:
    label: str
    row: int
    expected: str
    got: float


def _read(name: str) -> list[list[str]]:
    with open(DATA / name, newline="") as fh:
        return list(csv.reader(fh))[1:]


def _col(rows: list[list[str]], i: int) -> np.ndarray:
    return np.array([float(r[i]) if r[i] not in ("", "NaN") else np.nan for r in rows])


def tolerance(text: str, expected: float) -> float:
    decimals = len(text.split(".")[1]) if "." in text and "E" not in text.upper() else 0
    return max(0.51 * 10.0 ** (-decimals), 1e-6 * abs(expected), 1e-6)


def compare(label: str, got, rows: list[list[str]], col: int, floor: float = 0.0) -> tuple[int, list[Mismatch]]:
    got = np.asarray(got, dtype=float)
    if got.shape != (len(rows),):
        raise AssertionError(f"{label}: expected shape ({len(rows)},), got {got.shape}")
    n, bad = 0, []
    for i, r in enumerate(rows):
        text = r[col]
        if text in ("", "NaN"):
            continue
        n += 1
        exp = float(text)
        if not math.isfinite(got[i]) or abs(got[i] - exp) > max(floor, tolerance(text, exp)):
            bad.append(Mismatch(label, i, text, float(got[i])))
    return n, bad


def check(kind: str, fn: Callable) -> tuple[int, list[Mismatch]]:
    """(values compared, mismatches) of ``fn`` (the signature of awet_dagster.indicators.<kind>)."""
    results: list[tuple[int, list[Mismatch]]] = []
    if kind == "ema":
        rows = _read("spy_with_indicators.txt")
        results.append(compare("EMA14 spy_with_indicators", fn(_col(rows, 7), 14), rows, 2))
        rows = _read("spy_ema.csv")
        results.append(compare("EMA14 spy_ema", fn(_col(rows, 1), 14), rows, 2))
    elif kind == "rsi":
        rows = _read("spy_with_indicators.txt")
        results.append(compare("RSI14 Wilder", fn(_col(rows, 7), 14), rows, 5))
    elif kind == "macd":
        rows = _read("spy_with_macd.txt")
        m, s, h = fn(_col(rows, 4), 12, 26, 9)
        results += [compare("MACD", m, rows, 5), compare("MACD signal", s, rows, 6),
                    compare("MACD histogram", h, rows, 7)]
        rows = _read("spy_with_indicators.txt")  # inputs rounded to 2 decimals at ~14000: ~1e-4 left
        results.append(compare("MACD line spy_with_indicators", fn(_col(rows, 7), 12, 26, 9)[0], rows, 3,
                               floor=5e-4))
    elif kind == "atr":
        rows = _read("spy_atr_wilder.txt")
        results.append(compare("ATR14 Wilder", fn(_col(rows, 2), _col(rows, 3), _col(rows, 4), 14), rows, 5))
    elif kind == "bollinger":
        rows = _read("spy_bollinger_bands.txt")
        mid, up, lo = fn(_col(rows, 4), 20, 2.0)
        results += [compare("BB middle", mid, rows, 5), compare("BB upper", up, rows, 6),
                    compare("BB lower", lo, rows, 7)]
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return sum(n for n, _ in results), [m for _, bad in results for m in bad]
