"""Event-driven backtest over the live core (signals -> risk -> execution -> exits)."""
from awet_dagster.backtest.results import BacktestResult
from awet_dagster.backtest.runner import buy_and_hold, correlation_id_for, run_backtest

__all__ = ["BacktestResult", "buy_and_hold", "correlation_id_for", "run_backtest"]
