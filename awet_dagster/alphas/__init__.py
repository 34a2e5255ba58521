"""Lean framework alpha models ported to Python: RSI, EMA cross, MACD.

Streaming models (`update(bar) -> list[AlphaSignal]`, emitting on state change only)
and a batch runner over a bar frame that produces the same signals."""
from awet_dagster.alphas.batch import alpha_signals
from awet_dagster.alphas.ema_cross import EmaCrossAlpha, ema_cross_decision
from awet_dagster.alphas.macd import MacdAlpha, macd_decision
from awet_dagster.alphas.rsi import RsiAlpha, RsiState, next_rsi_state, rsi_decision
from awet_dagster.alphas.signal import (
    SIGNAL_SCHEMA,
    AlphaSignal,
    AlphaSignalResult,
    Direction,
    signals_to_frame,
)

__all__ = [
    "SIGNAL_SCHEMA",
    "AlphaSignal",
    "AlphaSignalResult",
    "Direction",
    "EmaCrossAlpha",
    "MacdAlpha",
    "RsiAlpha",
    "RsiState",
    "alpha_signals",
    "ema_cross_decision",
    "macd_decision",
    "next_rsi_state",
    "rsi_decision",
    "signals_to_frame",
]
