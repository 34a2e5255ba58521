"""Performance and overfitting statistics on per-bar returns.

Sharpe is annualised by the true bar frequency: 252 sessions a year for daily bars,
252 * 390 for regular-session minute bars. The deflated Sharpe ratio and the
probability of backtest overfitting follow Bailey & Lopez de Prado (2014, "The
Deflated Sharpe Ratio"; 2017, "The Probability of Backtest Overfitting").
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

BARS_PER_YEAR = {"daily": 252, "minute": 252 * 390}
EULER_GAMMA = 0.5772156649015329


def periods_per_year(bar_type: str) -> int:
    try:
        return BARS_PER_YEAR[bar_type]
    except KeyError:
        raise ValueError(f"unknown bar_type {bar_type!r}") from None


def _clean(returns) -> np.ndarray:
    r = np.asarray(returns, dtype=np.float64).ravel()
    return r[np.isfinite(r)]


def sharpe_per_bar(returns) -> float:
    r = _clean(returns)
    if len(r) < 2:
        return float("nan")
    sd = r.std(ddof=1)
    return float(r.mean() / sd) if sd > 0 else 0.0


def sharpe(returns, bar_type: str) -> float:
    """Annualised Sharpe (risk-free 0): mean/std per bar * sqrt(bars per year)."""
    return sharpe_per_bar(returns) * math.sqrt(periods_per_year(bar_type))


def win_rate(trade_pnls) -> float:
    """Fraction of closed trades with positive P&L (bars with non-zero return if that is
    all a caller has)."""
    p = _clean(trade_pnls)
    p = p[p != 0]
    return float(np.mean(p > 0)) if len(p) else float("nan")


def max_drawdown(returns) -> float:
    """Largest peak-to-trough loss of the compounded equity curve, as a positive fraction."""
    r = _clean(returns)
    if not len(r):
        return 0.0
    eq = np.cumprod(1.0 + r)
    peak = np.maximum.accumulate(np.concatenate([[1.0], eq]))[1:]
    return float(np.max(1.0 - eq / peak))


def turnover(positions) -> float:
    """Mean absolute change of the position (weights) per bar."""
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if len(p) < 2:
        return 0.0
    return float(np.mean(np.sum(np.abs(np.diff(p, axis=0)), axis=1)))


def hit_rate(q50, realised) -> float:
    """Fraction of predictions whose q50 sign matches the realised return's sign
    (zeros on either side are skipped)."""
    a, b = np.asarray(q50, dtype=np.float64), np.asarray(realised, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b) & (a != 0) & (b != 0)
    return float(np.mean(np.sign(a[ok]) == np.sign(b[ok]))) if ok.any() else float("nan")


def quantile_coverage(quantile_preds: np.ndarray, realised) -> np.ndarray:
    """Per quantile column, the fraction of realised returns at or below the prediction
    (a calibrated q10/q50/q90 gives about 0.1/0.5/0.9)."""
    q = np.asarray(quantile_preds, dtype=np.float64)
    y = np.asarray(realised, dtype=np.float64)
    ok = np.isfinite(y) & np.all(np.isfinite(q), axis=1)
    if not ok.any():
        return np.full(q.shape[1], np.nan)
    return np.mean(y[ok, None] <= q[ok], axis=0)


# --------------------------------------------------------------------------- DSR
def probabilistic_sharpe_ratio(sr: float, sr_benchmark: float, n: int, skew: float, kurtosis: float) -> float:
    """P(true SR > benchmark) for a per-bar Sharpe `sr` over `n` bars; `kurtosis` is
    Pearson's (3 for a normal)."""
    if n < 2 or not math.isfinite(sr):
        return float("nan")
    var = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr * sr
    if var <= 0:
        return float("nan")
    return float(stats.norm.cdf((sr - sr_benchmark) * math.sqrt(n - 1) / math.sqrt(var)))


def expected_max_sharpe(n_trials: int, sr_variance: float) -> float:
    """E[max SR] of `n_trials` unskilled trials whose Sharpe estimates have variance
    `sr_variance` (per bar): the deflation benchmark SR0. 0 for a single trial."""
    if n_trials <= 1 or sr_variance <= 0:
        return 0.0
    z1 = stats.norm.ppf(1.0 - 1.0 / n_trials)
    z2 = stats.norm.ppf(1.0 - 1.0 / (n_trials * math.e))
    return float(math.sqrt(sr_variance) * ((1.0 - EULER_GAMMA) * z1 + EULER_GAMMA * z2))


def deflated_sharpe_ratio(returns, n_trials: int, sr_variance: float | None = None) -> float:
    """DSR of per-bar `returns`: the PSR against the expected maximum Sharpe of
    `n_trials` trials. `sr_variance` is the variance of the trials' per-bar Sharpes;
    when unknown, the estimation variance of this Sharpe, (1 + SR^2/2)/(n-1), is used."""
    r = _clean(returns)
    n = len(r)
    if n < 3 or r.std() == 0:
        return float("nan")
    sr = sharpe_per_bar(r)
    skew = float(stats.skew(r))
    kurt = float(stats.kurtosis(r, fisher=False))
    if sr_variance is None:
        sr_variance = (1.0 + 0.5 * sr * sr) / (n - 1)
    return probabilistic_sharpe_ratio(sr, expected_max_sharpe(n_trials, sr_variance), n, skew, kurt)


# --------------------------------------------------------------------------- PBO
def probability_of_backtest_overfitting(returns_matrix, n_splits: int = 8) -> float:
    """CSCV: rows = time (bars or folds), columns = configurations/strategies.

    Rows are cut into `n_splits` blocks; for every half/half combination the best
    in-sample column (by Sharpe) is ranked out of sample. PBO is the fraction of
    combinations where that rank is at or below the median (logit <= 0)."""
    m = np.asarray(returns_matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] < 2:
        raise ValueError("need a (time, configurations) matrix with >= 2 configurations")
    n_splits = min(n_splits - n_splits % 2, m.shape[0] - m.shape[0] % 2)
    if n_splits < 2:
        return float("nan")
    blocks = np.array_split(np.arange(m.shape[0]), n_splits)
    n_cfg = m.shape[1]
    logits = []
    for combo in itertools.combinations(range(n_splits), n_splits // 2):
        is_rows = np.concatenate([blocks[i] for i in combo])
        oos_rows = np.concatenate([blocks[i] for i in range(n_splits) if i not in combo])
        is_perf = _col_sharpe(m[is_rows])
        oos_perf = _col_sharpe(m[oos_rows])
        best = int(np.argmax(is_perf))
        # Relative rank in (0, 1): 1 = best out of sample.
        rank = stats.rankdata(oos_perf)[best] / (n_cfg + 1)
        logits.append(math.log(rank / (1.0 - rank)))
    return float(np.mean(np.asarray(logits) <= 0))


def _col_sharpe(m: np.ndarray) -> np.ndarray:
    mu = np.nanmean(m, axis=0)
    sd = np.nanstd(m, axis=0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(sd > 0, mu / sd, 0.0)
    return np.nan_to_num(out)


def summarise(returns, bar_type: str, *, trade_pnls=None, positions=None) -> dict[str, float]:
    r = _clean(returns)
    return {
        "sharpe": sharpe(r, bar_type),
        "total_return": float(np.prod(1.0 + r) - 1.0) if len(r) else 0.0,
        "max_drawdown": max_drawdown(r),
        "win_rate": win_rate(trade_pnls if trade_pnls is not None else r),
        "turnover": turnover(positions) if positions is not None else float("nan"),
        "n_bars": float(len(r)),
    }


__all__: Sequence[str] = (
    "BARS_PER_YEAR", "deflated_sharpe_ratio", "expected_max_sharpe", "hit_rate", "max_drawdown",
    "periods_per_year", "probabilistic_sharpe_ratio", "probability_of_backtest_overfitting",
    "quantile_coverage", "sharpe", "sharpe_per_bar", "summarise", "turnover", "win_rate",
)
