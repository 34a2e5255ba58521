"""Walk-forward evaluation, trading metrics, overfitting statistics and the promotion gate."""
from awet_dagster.evaluation.metrics import (
    BARS_PER_YEAR,
    deflated_sharpe_ratio,
    hit_rate,
    max_drawdown,
    periods_per_year,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    quantile_coverage,
    sharpe,
    turnover,
    win_rate,
)
from awet_dagster.evaluation.splits import Fold, walk_forward_splits
from awet_dagster.evaluation.walk_forward import (
    FoldResult,
    GateCheck,
    WalkForwardResult,
    equity_plot,
    evaluate_gate,
    predictions_frame,
    run_walk_forward,
)

__all__ = [
    "BARS_PER_YEAR", "Fold", "FoldResult", "GateCheck", "WalkForwardResult", "deflated_sharpe_ratio",
    "equity_plot", "evaluate_gate", "hit_rate", "max_drawdown", "periods_per_year", "predictions_frame",
    "probabilistic_sharpe_ratio", "probability_of_backtest_overfitting", "quantile_coverage",
    "run_walk_forward", "sharpe", "turnover", "walk_forward_splits", "win_rate",
]
