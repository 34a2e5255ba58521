"""Walk-forward evaluation: a FRESH model per fold, trained on the fold's purged and
embargoed training window, predicting its out-of-sample window; the OOS predictions are
traded by the backtest next to two baselines (buy-and-hold, Lean alphas only).

Size (a little over 400 lines): the fold loop, its results and their frame/plot views belong together.

No best-fold selection anywhere: overall figures are the median (Sharpe) or the
aggregate over every fold, and the overfitting statistics (deflated Sharpe, PBO) are
reported beside the raw figures.
"""
from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl

from awet_dagster.evaluation import metrics as M
from awet_dagster.evaluation.splits import Fold, walk_forward_splits
from awet_dagster.features import FEATURE_COLUMNS
from awet_dagster.inference.quantiles import simple_return_quantiles

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict], None]
PREDICTION_COLUMNS = ("symbol", "ts", "model_version", "horizon", "q10", "q50", "q90")
STRATEGIES = ("tft", "alphas", "buy_hold")


@dataclass(frozen=True)
class FoldResult:
    fold: int
    train_start: datetime
    train_end: datetime  # last training origin
    test_start: datetime
    test_end: datetime  # last test bar
    n_train_windows: int
    n_test_windows: int
    metrics: dict[str, float]
    returns: dict[str, np.ndarray]  # strategy -> per-bar OOS portfolio returns
    predictions: pl.DataFrame
    train_seconds: float = 0.0
    history: tuple[dict, ...] = ()


@dataclass(frozen=True)
class WalkForwardResult:
    bar_type: str
    model_version: str
    data_hash: str
    folds: tuple[FoldResult, ...]
    overall: dict[str, float]
    min_folds: int = 6
    params: dict = field(default_factory=dict)

    def frame(self) -> pl.DataFrame:
        """One row per fold plus an `overall` row (fold = null): the
        `walk_forward_results` table layout."""
        rows = []
        for f in self.folds:
            rows.append(
                {
                    "model_version": self.model_version, "scope": "fold", "fold": f.fold,
                    "train_start": f.train_start, "train_end": f.train_end,
                    "test_start": f.test_start, "test_end": f.test_end,
                    "n_train_windows": f.n_train_windows, "n_test_windows": f.n_test_windows,
                    **{k: float(v) for k, v in f.metrics.items()},
                }
            )
        rows.append(
            {
                "model_version": self.model_version, "scope": "overall", "fold": None,
                "train_start": self.folds[0].train_start if self.folds else None,
                "train_end": self.folds[-1].train_end if self.folds else None,
                "test_start": self.folds[0].test_start if self.folds else None,
                "test_end": self.folds[-1].test_end if self.folds else None,
                "n_train_windows": sum(f.n_train_windows for f in self.folds),
                "n_test_windows": sum(f.n_test_windows for f in self.folds),
                **{k: float(v) for k, v in self.overall.items()},
            }
        )
        return pl.DataFrame(rows, infer_schema_length=None)

    def equity_png(self, fold: int) -> bytes:
        return equity_plot(self.folds[fold])

    @property
    def predictions(self) -> pl.DataFrame:
        return pl.concat([f.predictions for f in self.folds]) if self.folds else pl.DataFrame()


# --------------------------------------------------------------------------- backtest glue
def _returns_of(res) -> np.ndarray:
    """Per-bar portfolio returns from a BacktestResult (attribute names tolerated:
    returns / portfolio_returns / bar_returns; array, Series or frame)."""
    for name in ("returns", "portfolio_returns", "bar_returns"):
        r = getattr(res, name, None)
        if r is None:
            continue
        if isinstance(r, pl.DataFrame):
            for c in ("return", "returns", "portfolio_return", "ret"):
                if c in r.columns:
                    return r[c].cast(pl.Float64).to_numpy()
            floats = [c for c, t in r.schema.items() if t.is_float()]
            return r[floats[-1]].to_numpy()
        if isinstance(r, pl.Series):
            return r.cast(pl.Float64).to_numpy()
        return np.asarray(r, dtype=np.float64)
    raise TypeError(f"{type(res).__name__} has no per-bar returns")


def _trade_pnls(res) -> np.ndarray | None:
    t = getattr(res, "trades", None)
    if isinstance(t, pl.DataFrame) and t.height:
        for c in ("pnl", "realized_pnl", "net_pnl"):
            if c in t.columns:
                return t[c].cast(pl.Float64).to_numpy()
    return None


def _turnover_of(res) -> float:
    t = getattr(res, "turnover", None)
    if t is None:
        return float("nan")
    if isinstance(t, (int, float)):
        return float(t)
    if isinstance(t, pl.DataFrame):
        floats = [c for c, d in t.schema.items() if d.is_float()]
        return float(t[floats[-1]].mean()) if floats else float("nan")
    return float(np.nanmean(np.asarray(t, dtype=np.float64)))


def _strategy_metrics(prefix: str, res, bar_type: str, n_trials: int) -> dict[str, float]:
    r = _returns_of(res)
    pnls = _trade_pnls(res)
    out = {
        f"{prefix}sharpe": M.sharpe(r, bar_type),
        f"{prefix}total_return": float(np.prod(1 + r[np.isfinite(r)]) - 1) if len(r) else 0.0,
        f"{prefix}max_drawdown": M.max_drawdown(r),
        f"{prefix}win_rate": M.win_rate(pnls if pnls is not None else r),
        f"{prefix}turnover": _turnover_of(res),
        f"{prefix}dsr": M.deflated_sharpe_ratio(r, n_trials),
    }
    return out


def _all_alpha_signals(bars: pl.DataFrame) -> pl.DataFrame:
    from awet_dagster.alphas import EmaCrossAlpha, MacdAlpha, RsiAlpha, alpha_signals

    return pl.concat([alpha_signals(bars, m) for m in (RsiAlpha, EmaCrossAlpha, MacdAlpha)], how="vertical_relaxed")


def equity_plot(fold: FoldResult) -> bytes:
    """PNG of the compounded equity of each strategy over the fold's OOS window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=90)
    for name, r in fold.returns.items():
        r = np.nan_to_num(np.asarray(r, dtype=np.float64))
        ax.plot(np.cumprod(1 + r), label=f"{name} (SR {fold.metrics.get(_prefix(name) + 'sharpe', float('nan')):.2f})")
    ax.set_title(f"fold {fold.fold}: {fold.test_start:%Y-%m-%d %H:%M} .. {fold.test_end:%Y-%m-%d %H:%M}")
    ax.set_ylabel("equity (x initial)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _prefix(strategy: str) -> str:
    return "" if strategy == "tft" else f"{strategy}_"


# --------------------------------------------------------------------------- helpers
def data_hash(features: pl.DataFrame, bars: pl.DataFrame) -> str:
    """Content hash of the inputs (row hashes, order-independent), logged with the run."""
    h = hashlib.sha256()
    for df in (features.sort("symbol", "ts"), bars.select("symbol", "ts", "close").sort("symbol", "ts")):
        h.update(np.asarray(df.hash_rows(seed=0).to_numpy()).tobytes())
        h.update(",".join(df.columns).encode())
    return "sha256:" + h.hexdigest()[:16]


def _bar_type(features: pl.DataFrame, cfg) -> str:
    if "bar_type" in features.columns and features.height:
        bt = features["bar_type"].drop_nulls()
        if bt.len():
            return str(bt[0])
    return cfg.data.bar_type


def predictions_frame(keys: pl.DataFrame, q: np.ndarray, horizons: Sequence[int], model_version: str) -> pl.DataFrame:
    """(n, n_h, 3) forward LOG-return quantiles at origins `keys` -> long predictions frame of
    SIMPLE-return quantiles, exactly what the live inference service publishes for the same
    windows (`simple_return_quantiles`), so the backtest trades the numbers live trades."""
    q = simple_return_quantiles(q)
    parts = []
    for j, h in enumerate(horizons):
        parts.append(
            keys.select("symbol", "ts").with_columns(
                pl.lit(model_version).alias("model_version"),
                pl.lit(int(h), dtype=pl.Int64).alias("horizon"),
                pl.Series("q10", q[:, j, 0], dtype=pl.Float64),
                pl.Series("q50", q[:, j, 1], dtype=pl.Float64),
                pl.Series("q90", q[:, j, 2], dtype=pl.Float64),
            )
        )
    return pl.concat(parts).select(PREDICTION_COLUMNS) if parts else pl.DataFrame()


def _forecast_metrics(keys: pl.DataFrame, q: np.ndarray, horizons: Sequence[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for j, h in enumerate(horizons):
        y = keys[f"fwd_ret_{h}"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        out[f"hit_rate_h{h}"] = M.hit_rate(q[:, j, 1], y)
        cov = M.quantile_coverage(q[:, j, :], y)
        for k, name in enumerate(("q10", "q50", "q90")):
            out[f"coverage_{name}_h{h}"] = float(cov[k])
    h0 = horizons[0]
    out["hit_rate"] = out[f"hit_rate_h{h0}"]
    return out


# --------------------------------------------------------------------------- runner
def run_walk_forward(
    features: pl.DataFrame,
    bars: pl.DataFrame,
    cfg,
    progress: ProgressFn | None = None,
    *,
    alpha_signals: pl.DataFrame | None = None,
    feature_columns: Sequence[str] = FEATURE_COLUMNS,
    model_version: str = "candidate",
    train_overrides: dict | None = None,
    backtest: tuple[Callable, Callable] | None = None,
    run_baselines: bool = True,
) -> WalkForwardResult:
    """Walk-forward over `features` (compute_features output) and `bars`.

    `backtest` = (run_backtest, buy_and_hold) replaces `awet_dagster.backtest` (tests);
    `train_overrides` adjusts `TrainSettings` (e.g. tiny models in tests)."""
    from awet_dagster.model.dataset import build_datasets, origin_windows, prepare_frame, spec_from_config
    from awet_dagster.model.tft import TrainSettings, predict_quantiles, train_tft

    if backtest is None:
        from awet_dagster.backtest import buy_and_hold, run_backtest
    else:
        run_backtest, buy_and_hold = backtest
    emit = progress or (lambda _e: None)
    bar_type = _bar_type(features, cfg)
    spec = spec_from_config(cfg, bar_type, feature_columns)
    wf = cfg.walk_forward
    settings = TrainSettings.from_config(cfg.model, **(train_overrides or {}))
    val_fraction = float(cfg.model.val_fraction)
    n_trials = int(wf.n_trials)

    frame = prepare_frame(features, bars, spec)
    uts = frame["ts"].unique().sort()
    folds = walk_forward_splits(
        uts.len(), wf.folds, wf.scheme,
        train_size=wf.train_bars, test_size=wf.test_bars,
        horizon=spec.max_horizon, embargo=wf.embargo_bars,
    )
    if alpha_signals is None and run_baselines:
        alpha_signals = _all_alpha_signals(bars)
    dhash = data_hash(features.select("symbol", "ts", *feature_columns), bars)
    results = []
    for fold in folds:
        t0 = time.perf_counter()
        emit({"stage": "fold_start", "fold": fold.index, "folds": len(folds)})
        res = _run_fold(
            fold, frame, uts, spec, settings, val_fraction, bars, features, alpha_signals, cfg,
            run_backtest, buy_and_hold, bar_type, n_trials, model_version, run_baselines,
            build_datasets, origin_windows, train_tft, predict_quantiles,
            lambda e, k=fold.index: emit({**e, "fold": k}),
        )
        results.append(res)
        emit({"stage": "fold_done", "fold": fold.index, "folds": len(folds),
              "seconds": round(time.perf_counter() - t0, 2), **res.metrics})
        log.info("walk-forward fold %d/%d: sharpe=%.2f hit_rate=%.3f", fold.index + 1, len(folds),
                 res.metrics.get("sharpe", float("nan")), res.metrics.get("hit_rate", float("nan")))
    overall = _overall(results, spec.horizons, bar_type, n_trials)
    params = {
        "bar_type": bar_type, "lookback": spec.lookback, "horizons": list(spec.horizons),
        "folds": len(folds), "scheme": wf.scheme, "embargo_bars": wf.embargo_bars,
        "feature_columns": list(feature_columns), **{f"train.{k}": v for k, v in settings.__dict__.items()},
    }
    return WalkForwardResult(bar_type, model_version, dhash, tuple(results), overall, wf.min_folds, params)


def _run_fold(fold: Fold, frame, uts, spec, settings, val_fraction, bars, features, alpha_signals, cfg,
              run_backtest, buy_and_hold, bar_type, n_trials, model_version, run_baselines,
              build_datasets, origin_windows, train_tft, predict_quantiles, emit) -> FoldResult:
    train_origins = uts.gather(fold.train)
    n_val = int(len(fold.train) * val_fraction)
    val_start = uts[int(fold.train[len(fold.train) - n_val])] if n_val > spec.max_horizon + 1 else None
    test_start = uts[fold.test_start]
    test_last = uts[fold.test_end - 1]
    data = build_datasets(
        frame, spec, train_start=uts[fold.train_start], val_start=val_start,
        end=test_start, allowed_origins=train_origins,
    )
    trained = train_tft(data, settings, progress=emit)  # a fresh model for every fold
    origins = frame.filter(pl.col("ts").is_between(test_start, test_last)).select("symbol", "ts")
    keys, windows = origin_windows(frame, spec, origins)
    q = predict_quantiles(trained, windows)
    preds = predictions_frame(keys, q, spec.horizons, model_version)

    in_test = pl.col("ts").is_between(test_start, test_last)
    test_bars = bars.filter(in_test)
    test_features = features.filter(in_test)
    sig = alpha_signals.filter(in_test) if alpha_signals is not None and "ts" in alpha_signals.columns else alpha_signals
    metrics = _forecast_metrics(keys, q, spec.horizons)
    returns = {}
    bt = run_backtest(test_bars, test_features, preds, sig, cfg)
    returns["tft"] = _returns_of(bt)
    metrics.update(_strategy_metrics("", bt, bar_type, n_trials))
    if run_baselines:
        alphas = run_backtest(test_bars, test_features, None, sig, cfg)
        bh = buy_and_hold(test_bars, cfg)
        returns["alphas"], returns["buy_hold"] = _returns_of(alphas), _returns_of(bh)
        metrics.update(_strategy_metrics("alphas_", alphas, bar_type, n_trials))
        metrics.update(_strategy_metrics("buy_hold_", bh, bar_type, n_trials))
    metrics["train_seconds"] = trained.seconds
    metrics["epochs"] = float(len(trained.history))
    return FoldResult(
        fold.index, uts[fold.train_start], train_origins[-1], test_start, test_last,
        trained.n_train_windows, len(keys), metrics, returns, preds, trained.seconds, trained.history,
    )


def _overall(folds: Sequence[FoldResult], horizons: Sequence[int], bar_type: str, n_trials: int) -> dict[str, float]:
    if not folds:
        return {}
    out: dict[str, float] = {"n_folds": float(len(folds))}
    keys = set().union(*(f.metrics for f in folds))
    for k in sorted(keys):
        vals = np.asarray([f.metrics.get(k, np.nan) for f in folds], dtype=np.float64)
        out[k] = float(np.nanmedian(vals)) if np.isfinite(vals).any() else float("nan")
    for s in STRATEGIES:
        if all(s in f.returns for f in folds):
            r = np.concatenate([f.returns[s] for f in folds])
            p = _prefix(s)
            out[f"{p}sharpe_pooled"] = M.sharpe(r, bar_type)
            out[f"{p}dsr"] = M.deflated_sharpe_ratio(r, n_trials)
            out[f"{p}max_drawdown"] = M.max_drawdown(r)
    out["min_fold_sharpe"] = float(np.nanmin([f.metrics.get("sharpe", np.nan) for f in folds]))
    # PBO over the strategies' OOS returns, blocks ~ folds (CSCV needs an even count).
    strategies = [s for s in STRATEGIES if all(s in f.returns for f in folds)]
    if len(strategies) >= 2:
        n = min(len(f.returns[s]) for f in folds for s in strategies)
        mat = np.concatenate([np.column_stack([f.returns[s][:n] for s in strategies]) for f in folds])
        out["pbo"] = M.probability_of_backtest_overfitting(mat, n_splits=max(2, min(len(folds), 16)))
    else:
        out["pbo"] = float("nan")
    return out


# --------------------------------------------------------------------------- gate
@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    value: float
    threshold: float
    description: str


def evaluate_gate(
    result: WalkForwardResult, gate_cfg, champion_result: WalkForwardResult | None = None,
    min_folds: int | None = None,
) -> list[GateCheck]:
    """Promotion checks: median OOS Sharpe, OOS win rate, enough folds, and not worse
    than the champion on the folds both were evaluated on (median Sharpe)."""
    o = result.overall
    need = int(min_folds if min_folds is not None else result.min_folds)
    med = o.get("sharpe", float("nan"))
    wr = o.get("win_rate", float("nan"))
    checks = [
        GateCheck("median_oos_sharpe", bool(med >= gate_cfg.min_median_oos_sharpe), med,
                  gate_cfg.min_median_oos_sharpe, "median over folds of the OOS Sharpe (annualised, after costs)"),
        GateCheck("oos_win_rate", bool(wr >= gate_cfg.min_oos_win_rate), wr, gate_cfg.min_oos_win_rate,
                  "median over folds of the OOS trade win rate"),
        GateCheck("min_folds", len(result.folds) >= need, float(len(result.folds)), float(need),
                  "walk-forward folds evaluated"),
    ]
    if getattr(gate_cfg, "require_not_worse_than_champion", True):
        if champion_result is None:
            checks.append(GateCheck("not_worse_than_champion", True, med, float("nan"), "no champion yet"))
        else:
            mine = {(f.test_start, f.test_end): f.metrics.get("sharpe", np.nan) for f in result.folds}
            theirs = {(f.test_start, f.test_end): f.metrics.get("sharpe", np.nan) for f in champion_result.folds}
            common = sorted(set(mine) & set(theirs))
            if not common:
                checks.append(GateCheck("not_worse_than_champion", False, med, float("nan"),
                                        "champion was not evaluated on these folds: cannot compare"))
            else:
                a = float(np.nanmedian([mine[k] for k in common]))
                b = float(np.nanmedian([theirs[k] for k in common]))
                checks.append(GateCheck("not_worse_than_champion", bool(a >= b), a, b,
                                        f"median OOS Sharpe on {len(common)} common folds vs the champion's"))
    return checks
