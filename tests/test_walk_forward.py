"""Walk-forward splits (purge/embargo), metrics (annualisation, DSR, PBO), the runner
and the promotion gate."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from tests._model_data import planted
from awet_dagster.config.schema import AwetConfig, GateConfig, ModelConfig, WalkForwardConfig
from awet_dagster.evaluation import metrics as M
from awet_dagster.evaluation import evaluate_gate, run_walk_forward, walk_forward_splits
from awet_dagster.evaluation.walk_forward import PREDICTION_COLUMNS, WalkForwardResult


# --------------------------------------------------------------------------- splits
@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(60, 3000), folds=st.integers(1, 10), horizon=st.integers(0, 40),
    embargo=st.integers(0, 200), scheme=st.sampled_from(["rolling", "expanding"]),
    both_sides=st.booleans(), test_frac=st.floats(0.02, 0.15),
)
def test_no_train_label_window_overlaps_a_test_label_window(n, folds, horizon, embargo, scheme, both_sides, test_frac):
    test_size = max(1, int(n * test_frac))
    try:
        splits = walk_forward_splits(n, folds, scheme, test_size=test_size, horizon=horizon, embargo=embargo,
                                     train_after_test=both_sides)
    except ValueError:
        return  # the data cannot hold these folds: refused, never silently shortened
    assert len(splits) == folds
    for f in splits:
        tr = f.train
        assert len(tr) > 0
        # label windows [t, t+h] of train vs [s, s+h] of every test sample: disjoint
        test_lo, test_hi = f.test_start, f.test_end - 1 + horizon
        assert not np.any((tr <= test_hi) & (tr + horizon >= test_lo))
        # embargo after the test window
        assert not np.any((tr >= f.test_end) & (tr < f.test_end + embargo))
        assert np.all(np.diff(tr) > 0) and tr.min() >= 0 and tr.max() < n


def test_splits_layout_rolling_and_expanding():
    roll = walk_forward_splits(1000, 6, "rolling", train_size=200, test_size=100, horizon=5, embargo=180)
    assert len(roll) == 6
    assert [f.test_start for f in roll] == [400, 500, 600, 700, 800, 900]
    # purge (5) + embargo (180) bars separate the last training label from the test window
    assert all(len(f.train) == 195 and f.train[-1] == f.test_start - 186 for f in roll)
    assert all(f.train[-1] + 5 < f.test_start - 180 for f in roll)
    exp = walk_forward_splits(1000, 6, "expanding", test_size=100, horizon=5)
    assert [f.train[0] for f in exp] == [0] * 6 and len(exp[-1].train) == 900 - 5
    with pytest.raises(ValueError):
        walk_forward_splits(50, 6, "rolling", train_size=100, test_size=10)


# --------------------------------------------------------------------------- metrics
def test_sharpe_annualised_by_bar_frequency():
    r = np.random.default_rng(0).normal(0.001, 0.01, 5000)
    per_bar = r.mean() / r.std(ddof=1)
    assert M.sharpe(r, "daily") == pytest.approx(per_bar * math.sqrt(252))
    assert M.sharpe(r, "minute") == pytest.approx(per_bar * math.sqrt(252 * 390))
    assert M.sharpe(r, "minute") / M.sharpe(r, "daily") == pytest.approx(math.sqrt(390))
    with pytest.raises(ValueError):
        M.sharpe(r, "hourly")


def test_drawdown_win_rate_turnover_hit_rate_coverage():
    assert M.max_drawdown([0.1, -0.5, 0.2]) == pytest.approx(0.5)
    assert M.max_drawdown([0.01, 0.02]) == 0.0
    assert M.win_rate([1, -1, 2, 0, 3]) == pytest.approx(0.75)
    assert M.turnover([0, 1, 1, -1]) == pytest.approx(1.0)
    assert M.hit_rate([0.1, -0.2, 0.3, 0.0], [0.5, 0.1, 0.2, 1.0]) == pytest.approx(2 / 3)
    y = np.random.default_rng(1).normal(size=20000)
    q = np.tile(stats.norm.ppf([0.1, 0.5, 0.9]), (len(y), 1))
    np.testing.assert_allclose(M.quantile_coverage(q, y), [0.1, 0.5, 0.9], atol=0.015)


def test_deflated_sharpe_known_cases():
    # One trial, normal returns: DSR = PSR(0) = Phi(SR sqrt(n-1) / sqrt(1 + SR^2/2)).
    r = np.random.default_rng(2).normal(0.0005, 0.01, 1000)
    sr = M.sharpe_per_bar(r)
    sk, ku = stats.skew(r), stats.kurtosis(r, fisher=False)
    want = stats.norm.cdf(sr * math.sqrt(999) / math.sqrt(1 - sk * sr + (ku - 1) / 4 * sr * sr))
    assert M.deflated_sharpe_ratio(r, n_trials=1) == pytest.approx(want)
    # Bailey & Lopez de Prado's E[max SR]: ~ sqrt(V) * 1.54 for N = 10 (their eq. with gamma).
    z = (1 - M.EULER_GAMMA) * stats.norm.ppf(0.9) + M.EULER_GAMMA * stats.norm.ppf(1 - 1 / (10 * math.e))
    assert M.expected_max_sharpe(10, 0.25) == pytest.approx(0.5 * z)
    # More trials deflate more; a strong edge survives, no edge does not.
    dsrs = [M.deflated_sharpe_ratio(r, n) for n in (1, 10, 100, 1000)]
    assert dsrs == sorted(dsrs, reverse=True)
    strong = np.random.default_rng(3).normal(0.005, 0.01, 1000)
    assert M.deflated_sharpe_ratio(strong, 100) > 0.99
    assert M.deflated_sharpe_ratio(np.random.default_rng(4).normal(0, 0.01, 1000), 100) < 0.5


def test_pbo_known_cases():
    rng = np.random.default_rng(5)
    noise = rng.normal(0, 0.01, (1200, 12))
    # A configuration that is best in every block is never overfit.
    dominant = noise.copy()
    dominant[:, 3] += 0.01
    assert M.probability_of_backtest_overfitting(dominant, 8) == 0.0
    # Pure noise: the in-sample winner is a coin flip out of sample.
    pbos = [M.probability_of_backtest_overfitting(rng.normal(0, 0.01, (800, 10)), 8) for _ in range(8)]
    assert 0.3 < float(np.mean(pbos)) < 0.7
    # Anti-persistent performance (IS winner is the OOS loser) -> PBO = 1.
    flip = np.zeros((800, 2))
    flip[:, 0] = np.tile(np.r_[np.full(100, 0.01), np.full(100, -0.01)], 4) + rng.normal(0, 1e-3, 800)
    flip[:, 1] = -flip[:, 0]
    assert M.probability_of_backtest_overfitting(flip, 8) > 0.4


# --------------------------------------------------------------------------- runner
@dataclass(frozen=True)
class _StandInResult:
    returns: np.ndarray
    trades: pl.DataFrame
    turnover: float


def _stand_in_backtest(bars, features, predictions, alpha_signals, cfg, calibrator=None):
    """Minimal private stand-in for awet_dagster.backtest.run_backtest: long/short the
    sign of q50 (first horizon) per symbol, equal weight, 5 bps per position change."""
    nxt = bars.sort("symbol", "ts").with_columns(
        (pl.col("close").shift(-1) / pl.col("close") - 1).over("symbol").fill_null(0.0).alias("r")
    )
    if predictions is None:
        pos = nxt.with_columns(pl.lit(1.0).alias("pos"))  # "alphas": always long
    else:
        h0 = predictions["horizon"].min()
        p = predictions.filter(pl.col("horizon") == h0).select("symbol", "ts", pl.col("q50").sign().alias("pos"))
        pos = nxt.join(p, on=["symbol", "ts"], how="left").with_columns(pl.col("pos").fill_null(0.0))
    pos = pos.with_columns((pl.col("pos") - pl.col("pos").shift(1).over("symbol").fill_null(0.0)).abs().alias("dp"))
    per = pos.group_by("ts").agg(
        (pl.col("pos") * pl.col("r") - pl.col("dp") * 5e-4).mean().alias("ret"), pl.col("dp").mean().alias("to")
    ).sort("ts")
    trades = pos.select((pl.col("pos") * pl.col("r")).alias("pnl"))
    return _StandInResult(per["ret"].to_numpy(), trades, float(per["to"].mean()))


def _stand_in_buy_and_hold(bars, cfg):
    return _stand_in_backtest(bars, None, None, None, cfg)


def _cfg(**wf) -> AwetConfig:
    return AwetConfig(
        model=ModelConfig(lookback=16, horizons=(1, 3), hidden_size=8, attention_heads=1, dropout=0.0,
                          max_epochs=2, batch_size=32, learning_rate=0.03, early_stopping_patience=1,
                          max_train_windows=200),
        walk_forward=WalkForwardConfig(folds=6, min_folds=6, embargo_bars=5, **wf),
    )


@pytest.fixture(scope="module")
def wf_result() -> WalkForwardResult:
    d = planted(n=420, beta=0.01, noise=0.004)
    events = []
    res = run_walk_forward(
        d.features, d.bars, _cfg(test_bars=30, train_bars=180), progress=events.append,
        feature_columns=d.spec.feature_columns, backtest=(_stand_in_backtest, _stand_in_buy_and_hold),
        alpha_signals=pl.DataFrame(), model_version="test",
    )
    assert [e["fold"] for e in events if e["stage"] == "fold_done"] == list(range(6))
    assert any(e["stage"] == "train_epoch" for e in events)
    return res


def test_walk_forward_trains_a_model_per_fold_and_reports_all_folds(wf_result):
    res = wf_result
    assert len(res.folds) == 6
    for a, b in zip(res.folds, res.folds[1:]):
        assert a.test_end < b.test_start
    for f in res.folds:
        assert f.train_end < f.test_start  # purged: training origins before the test window
        assert f.n_test_windows == 3 * 30 and f.n_train_windows == 200
        assert tuple(f.predictions.columns) == PREDICTION_COLUMNS
        assert f.predictions["ts"].min() >= f.test_start
        assert 0.0 <= f.metrics["hit_rate"] <= 1.0 and f.metrics["epochs"] >= 1
        # Learning the planted signal is test_model's job; folds here are too tiny to be
        # reliable (measured: a 2-epoch TFT sometimes stays on its mean plateau).
    # Overall = median over ALL folds (no best-fold selection).
    sharpes = [f.metrics["sharpe"] for f in res.folds]
    assert res.overall["sharpe"] == pytest.approx(float(np.median(sharpes)))
    assert res.overall["min_fold_sharpe"] == pytest.approx(min(sharpes))
    for k in ("dsr", "pbo", "alphas_sharpe", "buy_hold_sharpe", "coverage_q50_h1"):
        assert k in res.overall
    frame = res.frame()
    assert frame.height == 7 and frame["scope"].to_list() == ["fold"] * 6 + ["overall"]
    assert {"sharpe", "win_rate", "max_drawdown", "turnover", "hit_rate", "dsr"} <= set(frame.columns)
    png = res.equity_png(0)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_checks(wf_result):
    med = wf_result.overall["sharpe"]
    gate = GateConfig(min_median_oos_sharpe=med, min_oos_win_rate=0.0)
    checks = {c.name: c for c in evaluate_gate(wf_result, gate)}
    assert set(checks) == {"median_oos_sharpe", "oos_win_rate", "min_folds", "not_worse_than_champion"}
    assert checks["median_oos_sharpe"].passed and checks["min_folds"].passed and checks["oos_win_rate"].passed
    assert checks["median_oos_sharpe"].value == med and checks["median_oos_sharpe"].threshold == med
    assert checks["not_worse_than_champion"].passed  # no champion yet
    strict = GateConfig(min_median_oos_sharpe=med + 1e-9)
    assert not {c.name: c for c in evaluate_gate(wf_result, strict)}["median_oos_sharpe"].passed
    assert not {c.name: c for c in evaluate_gate(wf_result, gate, min_folds=7)}["min_folds"].passed
    # Champion on the same folds: better champion -> fail, equal -> pass.
    better = WalkForwardResult(
        wf_result.bar_type, "champ", wf_result.data_hash,
        tuple(type(f)(**{**f.__dict__, "metrics": {**f.metrics, "sharpe": f.metrics["sharpe"] + 1}}) for f in wf_result.folds),
        wf_result.overall,
    )
    assert not {c.name: c for c in evaluate_gate(wf_result, gate, better)}["not_worse_than_champion"].passed
    assert {c.name: c for c in evaluate_gate(wf_result, gate, wf_result)}["not_worse_than_champion"].passed


def test_predictions_frame_carries_the_simple_returns_live_inference_publishes():
    """Backtest and live must score the same numbers: the frame holds exactly what
    `to_quantiles` (the live inference service's mapping) makes of the model's log returns."""
    from awet_dagster.evaluation.walk_forward import predictions_frame
    from awet_dagster.inference import to_quantiles

    keys = pl.DataFrame({"symbol": ["A", "B"], "ts": [datetime(2024, 1, 2, tzinfo=UTC)] * 2})
    log_q = np.array([[[-0.02, 0.01, 0.05]], [[0.03, -0.01, 0.02]]])  # B's heads are crossed
    frame = predictions_frame(keys, log_q, [1], "v1")
    for row, q in zip(frame.iter_rows(named=True), log_q):
        assert (row["q10"], row["q50"], row["q90"]) == to_quantiles(dict(zip((0.1, 0.5, 0.9), q[0])))
    assert frame["q50"][0] == pytest.approx(np.expm1(0.01)) and frame["q10"][1] == pytest.approx(np.expm1(-0.01))
