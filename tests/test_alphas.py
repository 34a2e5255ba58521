"""Lean alpha models: state machines by hand, signals from Lean's own published
indicator values, streaming == batch on real bars."""
from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from awet_dagster.alphas import (
    AlphaSignal,
    Direction,
    EmaCrossAlpha,
    MacdAlpha,
    RsiAlpha,
    RsiState,
    alpha_signals,
    ema_cross_decision,
    macd_decision,
    rsi_decision,
    signals_to_frame,
)
from awet_dagster.indicators import ema, macd
from awet_dagster.sources.sample import SampleSource

LEAN_DATA = Path(__file__).resolve().parent / "data" / "lean-testdata"  # Lean's vectors, in the repo
T0 = datetime(2020, 1, 2, 14, 30, tzinfo=timezone.utc)


def _bars(closes) -> list[dict]:
    return [
        {"symbol": "X", "ts": T0 + timedelta(days=i), "high": c, "low": c, "close": c}
        for i, c in enumerate(closes)
    ]


def _run(model, closes) -> list[AlphaSignal]:
    return [s for b in _bars(closes) for s in model.update(b)]


def _lean_csv(name: str) -> list[dict]:
    with open(LEAN_DATA / name, newline="") as fh:
        return list(csv.DictReader(fh))


def _num(text: str) -> float:
    return float(text) if text not in ("", "NaN") else np.nan


# --- RSI: hysteresis -------------------------------------------------------------------


def _emissions(values, start=RsiState.MIDDLE):
    state, out = start, []
    for v in values:
        state, d = rsi_decision(v, state)
        out.append(d)
    return out, state


def test_rsi_trips_once_and_holds_while_oscillating_between_65_and_75() -> None:
    out, state = _emissions([50, 71, 68, 74, 66, 72, 65.5, 75, 69])
    assert out == [None, Direction.DOWN] + [None] * 7
    assert state is RsiState.TRIPPED_HIGH
    # Back below 65 releases silently; a new trip above 70 emits again.
    out, state = _emissions([64, 71], start=state)
    assert out == [None, Direction.DOWN] and state is RsiState.TRIPPED_HIGH


def test_rsi_low_side_and_direct_flip() -> None:
    out, _ = _emissions([50, 29, 33, 25, 34.9, 36, 31, 29])
    assert out == [None, Direction.UP, None, None, None, None, None, Direction.UP]
    # TrippedHigh straight to TrippedLow emits the opposite view at once.
    out, state = _emissions([75, 20])
    assert out == [Direction.DOWN, Direction.UP] and state is RsiState.TRIPPED_LOW
    # Not-ready (NaN) readings change nothing.
    assert rsi_decision(np.nan, RsiState.TRIPPED_LOW) == (RsiState.TRIPPED_LOW, None)


def test_rsi_alpha_end_to_end_on_built_prices() -> None:
    # 20 rises -> RSI 100 at the first ready bar (index 14) -> one DOWN, not 6.
    # then 20 falls -> RSI drops below 30 -> one UP.
    closes = [100.0 + i for i in range(21)] + [120.0 - 2 * i for i in range(1, 21)]
    model = RsiAlpha("X", 14, "daily")
    got = _run(model, closes)
    assert [s.direction for s in got] == [Direction.DOWN, Direction.UP]
    assert got[0].ts == T0 + timedelta(days=14)
    assert got[0].period == timedelta(days=14) and got[0].alpha == "RsiAlphaModel(14,daily)"
    assert got[0].magnitude is None and got[0].symbol == "X"


def test_rsi_signals_match_those_from_leans_published_rsi() -> None:
    rows = _lean_csv("spy_with_indicators.txt")
    closes = [_num(r["Close"]) for r in rows]
    lean_rsi = [_num(r["RSI 14 Wilder"]) for r in rows]
    want, state = [], RsiState.MIDDLE
    for i, v in enumerate(lean_rsi):
        state, d = rsi_decision(v, state)
        if d is not None:
            want.append((i, d))
    model = RsiAlpha("SPY", 14, "daily")
    got = [(i, s.direction) for i, b in enumerate(_bars(closes)) for s in model.update(b)]
    assert len(want) >= 3
    assert got == want


# --- EMA cross ----------------------------------------------------------------------------


def test_ema_cross_first_ready_bar_only_sets_state() -> None:
    assert ema_cross_decision(np.nan, 1.0, None) == (None, None)
    assert ema_cross_decision(2.0, 1.0, None) == (True, None)
    assert ema_cross_decision(0.5, 1.0, True) == (False, Direction.DOWN)
    assert ema_cross_decision(2.0, 1.0, False) == (True, Direction.UP)
    assert ema_cross_decision(2.0, 1.0, True) == (True, None)
    # Lean: touching (fast == slow) leaves "over" without a signal.
    assert ema_cross_decision(1.0, 1.0, True) == (False, None)


def test_ema_cross_emits_on_each_cross_at_the_crossing_bar() -> None:
    closes = list(np.r_[np.linspace(100, 60, 50), np.linspace(60, 120, 40), np.linspace(120, 80, 40)])
    got = _run(EmaCrossAlpha("X", 12, 26, "minute"), closes)
    fast, slow = ema(closes, 12), ema(closes, 26)
    over = fast > slow
    crosses = [i for i in range(26, len(closes)) if over[i] != over[i - 1]]
    assert [s.ts for s in got] == [T0 + timedelta(days=i) for i in crosses]
    assert [s.direction for s in got] == [Direction.UP, Direction.DOWN]
    assert got[0].period == timedelta(minutes=12)
    # Starting in an up-trend: the first ready bar (fast > slow) emits nothing.
    assert _run(EmaCrossAlpha("X"), list(np.linspace(50, 100, 60))) == []


# --- MACD ------------------------------------------------------------------------------------


def test_macd_direction_changes_only() -> None:
    assert macd_decision(np.nan, 100.0, None) == (None, None)
    assert macd_decision(0.5, 100.0, None) == (Direction.FLAT, Direction.FLAT)  # first emits
    assert macd_decision(2.0, 100.0, Direction.FLAT) == (Direction.UP, Direction.UP)
    assert macd_decision(3.0, 100.0, Direction.UP) == (Direction.UP, None)
    assert macd_decision(-1.5, 100.0, Direction.UP) == (Direction.DOWN, Direction.DOWN)
    assert macd_decision(-1.0, 100.0, Direction.DOWN) == (Direction.FLAT, Direction.FLAT)  # boundary is FLAT
    assert macd_decision(1.0, 0.0, Direction.DOWN) == (Direction.DOWN, None)  # price 0 skipped


def test_macd_signals_match_those_from_leans_published_signal_line() -> None:
    rows = _lean_csv("spy_with_macd.txt")
    closes = np.array([_num(r["Close"]) for r in rows])
    lean_signal = np.array([_num(r["Signal"]) for r in rows])
    # The file publishes values only from some row on: run both decision chains from there.
    start = int(np.flatnonzero(~np.isnan(lean_signal))[0])
    ours = macd(closes, 12, 26, 9)[1]

    def chain(signal_line):
        out, prev = [], None
        for i in range(start, len(rows)):
            prev, d = macd_decision(signal_line[i], closes[i], prev)
            if d is not None:
                out.append((i, d))
        return out

    want = chain(lean_signal)
    assert len(want) >= 5 and {d for _, d in want} == {Direction.UP, Direction.DOWN, Direction.FLAT}
    assert chain(ours) == want
    # The streaming model emits the same changes once it has reached that row.
    model = MacdAlpha("SPY", bar_type="daily")
    got = [(i, s.direction) for i, b in enumerate(_bars(closes)) for s in model.update(b)]
    assert [g for g in got if g[0] > want[0][0]] == [w for w in want if w[0] > want[0][0]]
    # No two consecutive signals repeat a direction.
    assert all(a[1] != b[1] for a, b in zip(got, got[1:]))


# --- batch == streaming on real bars -------------------------------------------------------


@pytest.mark.parametrize("model_cls", [RsiAlpha, EmaCrossAlpha, MacdAlpha])
def test_batch_equals_streaming_on_real_daily_bars(model_cls) -> None:
    src = SampleSource()
    lo, hi = src.date_range("daily")
    bars = src.fetch(["SPY", "AAPL", "FOXA"], lo, hi + timedelta(days=1), "daily")
    batch = alpha_signals(bars, model_cls)
    streamed = []
    for sym in ("AAPL", "FOXA", "SPY"):
        model = model_cls(sym, bar_type="daily")
        for b in bars.filter(pl.col("symbol") == sym).sort("ts").iter_rows(named=True):
            streamed.extend(model.update(b))
    assert batch.height >= 10
    assert batch.equals(signals_to_frame(streamed))
    assert batch["symbol"].unique().sort().to_list() == ["AAPL", "SPY"]  # FOXA: 2 bars, never ready
    # EMA cross / MACD emit on direction change only (RSI may repeat: trip, release, trip).
    for _, g in batch.group_by("symbol") if model_cls is not RsiAlpha else ():
        d = g["direction"].to_list()
        assert all(a != b for a, b in zip(d, d[1:]))
