"""Model test data and helpers, shared by the model, registry and live tests.

- ``planted``: synthetic data with a PLANTED predictable signal. `sig` at bar t predicts the
  log return from t to t+1 (coefficient `beta` per unit of `sig`, plus noise); `noise`
  predicts nothing. Bars carry the schema columns the model code reads (symbol, bar_type,
  ts, OHLCV).
- ``walk_forward_result``: a small ``WalkForwardResult`` to log a training run with.
- ``register_sample_champion``: a small REAL champion for live tests: a TFT trained on daily
  bars with the real feature set (the columns the live features service emits), exported to
  ONNX, logged + registered in the config's MLflow store and promoted the production way.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from awet_dagster.model.dataset import DatasetSpec

FEATURES = ("sig", "noise")
BASE = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Synthetic:
    bars: pl.DataFrame
    features: pl.DataFrame
    spec: DatasetSpec


def planted(n: int = 400, symbols=("AAA", "BBB", "CCC"), beta: float = 0.01, noise: float = 0.003,
            lookback: int = 16, horizons=(1, 3), seed: int = 0) -> Synthetic:
    rng = np.random.default_rng(seed)
    bars, feats = [], []
    ts = [BASE + dt.timedelta(days=i) for i in range(n)]
    for s in symbols:
        sig = rng.normal(size=n)
        ret = np.zeros(n)
        ret[1:] = beta * sig[:-1] + noise * rng.normal(size=n - 1)
        close = 100 * np.exp(np.cumsum(ret))
        bars.append(pl.DataFrame({
            "symbol": [s] * n, "bar_type": ["daily"] * n, "ts": ts, "open": close, "high": close * 1.001,
            "low": close * 0.999, "close": close, "volume": np.full(n, 1e6),
        }))
        feats.append(pl.DataFrame({"symbol": [s] * n, "bar_type": ["daily"] * n, "ts": ts,
                                   "sig": sig, "noise": rng.normal(size=n)}))
    spec = DatasetSpec("daily", lookback, tuple(horizons), feature_columns=FEATURES)
    return Synthetic(pl.concat(bars), pl.concat(feats), spec)


def walk_forward_result(n_folds: int = 2, sharpe: float = 1.3):
    """A WalkForwardResult of ``n_folds`` folds whose overall (median OOS) Sharpe is ``sharpe``."""
    from awet_dagster.evaluation.walk_forward import FoldResult, WalkForwardResult

    folds = tuple(
        FoldResult(
            k, BASE, BASE + dt.timedelta(days=10 * k + 5), BASE + dt.timedelta(days=10 * k + 6),
            BASE + dt.timedelta(days=10 * k + 9), 100, 30,
            {"sharpe": 0.8 + k, "hit_rate": 0.6, "win_rate": 0.5, "dsr": float("nan")},
            {"tft": np.random.default_rng(k).normal(0, 0.01, 30)},
            pl.DataFrame(), 1.0, ({"epoch": 0, "train_loss": 0.1, "val_loss": 0.2},),
        )
        for k in range(n_folds)
    )
    return WalkForwardResult("daily", "candidate", "sha256:test", folds, {"sharpe": sharpe, "n_folds": float(n_folds)},
                             params={"lookback": 16, "horizons": [1, 3]})


def register_sample_champion(cfg, conn, bars: pl.DataFrame, workdir: Path, *, lookback: int = 8,
                             horizons: Sequence[int] = (1,), oos_sharpe: float = 1.3, val_days: int = 120,
                             calibrator=None):
    """Train a tiny TFT on ``bars`` (daily, schema columns) with the real feature set, export it
    to ONNX, log + register it in ``cfg``'s MLflow store and promote it with
    ``promotion.promote`` (audited through ``conn``; writes the champion metrics textfile).
    ``oos_sharpe`` is logged as the run's walk-forward Sharpe; ``calibrator`` (a
    PlattCalibrator) is saved beside the model as its calibration. Returns the champion
    ModelRef. About 15 s on 2 cores (mostly imports and the MLflow store's creation)."""
    from awet_dagster.features.batch import compute_features
    from awet_dagster.model import promotion
    from awet_dagster.model.registry import ModelRegistry
    from awet_dagster.model.dataset import build_datasets, prepare_frame
    from awet_dagster.model.onnx_export import export_onnx
    from awet_dagster.model.tft import TrainSettings, train_tft

    spec = DatasetSpec("daily", lookback, tuple(horizons))  # every feature column, as in production
    frame = prepare_frame(compute_features(bars), bars, spec)
    end = frame["ts"].max()
    data = build_datasets(frame, spec, val_start=end - dt.timedelta(days=val_days), end=end)
    trained = train_tft(data, TrainSettings(hidden_size=8, attention_heads=1, max_epochs=1, max_train_windows=200))
    export_onnx(trained, workdir / "export")
    if calibrator is not None:
        from awet_dagster.model.pipeline import save_calibration

        save_calibration(workdir / "export", calibrator)
    registry = ModelRegistry(cfg)
    run_id, uri = registry.log_training_run(walk_forward_result(1, oos_sharpe), workdir / "export")
    version = registry.register_version(run_id, uri)
    return promotion.promote(cfg, registry, conn, version.version, actor="test", reason="live test champion")
