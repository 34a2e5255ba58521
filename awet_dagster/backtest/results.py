"""What a backtest returns: frames for orders, fills, trades, decisions and equity."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

TS = pl.Datetime("us", "UTC")
ORDER_SCHEMA = {"ts": TS, "symbol": pl.Utf8, "client_order_id": pl.Utf8, "correlation_id": pl.Utf8,
                "intent": pl.Utf8, "side": pl.Utf8, "qty": pl.Float64, "status": pl.Utf8, "message": pl.Utf8}
FILL_SCHEMA = {"ts": TS, "symbol": pl.Utf8, "client_order_id": pl.Utf8, "correlation_id": pl.Utf8,
               "intent": pl.Utf8, "side": pl.Utf8, "qty": pl.Float64, "price": pl.Float64, "fee": pl.Float64}
TRADE_SCHEMA = {"correlation_id": pl.Utf8, "symbol": pl.Utf8, "side": pl.Utf8, "qty": pl.Float64,
                "entry_ts": TS, "entry_price": pl.Float64, "exit_ts": TS, "exit_price": pl.Float64,
                "exit_reason": pl.Utf8, "fees": pl.Float64, "pnl": pl.Float64, "return_pct": pl.Float64,
                "entry_client_order_id": pl.Utf8, "exit_client_order_id": pl.Utf8}
DECISION_SCHEMA = {"ts": TS, "symbol": pl.Utf8, "correlation_id": pl.Utf8, "approved": pl.Boolean,
                   "side": pl.Utf8, "qty": pl.Float64, "notional": pl.Float64, "cvar_95": pl.Float64,
                   "reasons": pl.List(pl.Utf8)}
EQUITY_SCHEMA = {"ts": TS, "equity": pl.Float64}


@dataclass(frozen=True)
class BacktestResult:
    orders: pl.DataFrame
    fills: pl.DataFrame
    trades: pl.DataFrame  # closed round trips, entry and exit linked by correlation_id
    equity: pl.DataFrame  # ts, equity (after every bar time)
    returns: np.ndarray  # per-bar-time portfolio returns, aligned with `equity` rows
    turnover: float  # traded notional / mean equity
    decisions: pl.DataFrame  # risk decisions (approved and rejected, with reasons)
    initial_equity: float
    signals_scored: int = 0
    signals_passed: int = 0
    audit: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    @property
    def final_equity(self) -> float:
        return float(self.equity["equity"][-1]) if self.equity.height else self.initial_equity

    @property
    def total_return(self) -> float:
        return self.final_equity / self.initial_equity - 1.0


def frame(rows: list[dict[str, Any]], schema: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def equity_returns(equity: list[float], initial: float) -> np.ndarray:
    values = np.asarray(equity, dtype=float)
    if values.size == 0:
        return values
    prev = np.concatenate([[initial], values[:-1]])
    return values / prev - 1.0
