"""The model pipeline's steps as plain functions, so Dagster assets stay thin wrappers.

Training data is everything before `data.cutoff`; the live replay of the demo uses the bars
from the cutoff on, so the promoted model never saw them.
"""
from __future__ import annotations

import json
import math
from datetime import date, datetime
from types import SimpleNamespace

import numpy as np
import polars as pl

from awet_dagster.config import AwetConfig
from awet_dagster.features import FEATURE_COLUMNS, FEATURE_SET_VERSION
from awet_dagster.signals.calibration import PlattCalibrator, fit_platt
from awet_dagster.signals.tft import tft_view
from awet_dagster.sources.exchange_time import to_utc_bounds
from awet_dagster.storage.bars import read_bars
from awet_dagster.storage.features import read_features
from awet_dagster.sources.corporate_actions import forward_log_returns


def training_window(cfg: AwetConfig) -> tuple[datetime, datetime]:
    """[data.start, data.cutoff) in UTC: the research period (the replay starts at the cutoff)."""
    start, _ = to_utc_bounds(date.fromisoformat(cfg.data.start), date.fromisoformat(cfg.data.start))
    cutoff, _ = to_utc_bounds(date.fromisoformat(cfg.data.cutoff), date.fromisoformat(cfg.data.cutoff))
    return start, cutoff


def load_training_data(conn, cfg: AwetConfig, bar_type: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(features, bars) of the configured universe inside the training window, aligned."""
    start, cutoff = training_window(cfg)
    symbols = list(cfg.data.symbols if bar_type == "daily" else cfg.data.minute_symbols)
    bars = read_bars(conn, symbols, bar_type, start, cutoff)
    feats = read_features(conn, symbols, bar_type, list(FEATURE_COLUMNS), FEATURE_SET_VERSION, start, cutoff)
    if bars.height == 0 or feats.height == 0:
        raise ValueError(
            f"no {bar_type} bars/features between {start:%Y-%m-%d} and {cutoff:%Y-%m-%d} for {symbols}: "
            "materialize raw_bars and features first"
        )
    keys = feats.select("symbol", "ts")
    return feats, bars.join(keys, on=["symbol", "ts"], how="semi")


def train_final_model(features: pl.DataFrame, bars: pl.DataFrame, cfg: AwetConfig, progress=None):
    """The candidate: one model on the whole training window (validation = its last slice)."""
    from awet_dagster.model.dataset import build_datasets, prepare_frame, spec_from_config
    from awet_dagster.model.tft import TrainSettings, train_tft

    bar_type = str(bars["bar_type"][0])
    spec = spec_from_config(cfg, bar_type)
    frame = prepare_frame(features, bars, spec)
    uts = frame["ts"].unique().sort()
    val_start = uts[int(len(uts) * (1 - cfg.model.val_fraction))]
    data = build_datasets(frame, spec, train_start=uts[0], val_start=val_start, end=None)
    return train_tft(data, TrainSettings.from_config(cfg.model), progress=progress)


def held_out_windows(features: pl.DataFrame, bars: pl.DataFrame, cfg: AwetConfig, n: int = 64) -> np.ndarray:
    """Windows from the last validation slice, for the ONNX parity check."""
    from awet_dagster.model.dataset import origin_windows, prepare_frame, spec_from_config

    spec = spec_from_config(cfg, str(bars["bar_type"][0]))
    frame = prepare_frame(features, bars, spec)
    uts = frame["ts"].unique().sort()
    origins = frame.filter(pl.col("ts") >= uts[int(len(uts) * (1 - cfg.model.val_fraction))]).select("symbol", "ts")
    _, windows = origin_windows(frame, spec, origins.tail(n))
    return windows


def fit_calibrator_oos(wf_result, bars: pl.DataFrame) -> tuple[PlattCalibrator | None, int]:
    """Platt calibration on walk-forward OUT-OF-SAMPLE outcomes only: confidence = |TFT
    score| from (q10, q50, q90) at the shortest horizon, outcome = the realised forward
    return over that horizon had the predicted sign."""
    preds = pl.concat([f.predictions for f in wf_result.folds], how="vertical") if wf_result.folds else None
    if preds is None or preds.height == 0:
        return None, 0
    h = int(preds["horizon"].min())
    preds = preds.filter(pl.col("horizon") == h)
    closes = forward_log_returns(bars, h)
    joined = preds.join(closes, on=["symbol", "ts"], how="inner").drop_nulls("fwd")
    # The engine calibrates |ensemble score| into P(direction right); fit that mapping on
    # the TFT component's OOS calls (confidence = |score|, outcome = sign matched).
    scores = np.array([tft_view(a, b, c).score for a, b, c in joined.select("q10", "q50", "q90").iter_rows()])
    fwd = joined["fwd"].to_numpy()
    called = scores != 0
    confidence = np.abs(scores[called])
    outcomes = (np.sign(scores[called]) == np.sign(fwd[called])).astype(int)
    if len(set(outcomes.tolist())) < 2 or confidence.size < 50:
        return None, int(confidence.size)
    return fit_platt(confidence, outcomes), int(confidence.size)


def store_walk_forward(conn, run_id: str, wf_result, model_name: str) -> int:
    """One row per fold and strategy metrics in `walk_forward_results` (replaces the run's rows)."""
    rows = []
    for f in wf_result.folds:
        metrics = {k: v for k, v in f.metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        metrics.update(train_start=str(f.train_start), train_end=str(f.train_end),
                       test_start=str(f.test_start), test_end=str(f.test_end))
        rows.append((run_id, f.fold, model_name, json.dumps(metrics)))
    overall = {k: v for k, v in wf_result.overall.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    rows.append((run_id, -1, model_name, json.dumps({"overall": True, **overall})))
    with conn.transaction():
        conn.execute("DELETE FROM walk_forward_results WHERE run_id = %s", (run_id,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO walk_forward_results (run_id, fold, model_name, metrics) VALUES (%s, %s, %s, %s::jsonb)",
                rows,
            )
    return len(rows)


def stored_folds(conn, run_id: str):
    """A champion's walk-forward folds, as stored, shaped for `evaluate_gate`'s comparison."""
    rows = conn.execute(
        "SELECT fold, metrics FROM walk_forward_results WHERE run_id = %s AND fold >= 0 ORDER BY fold", (run_id,)
    ).fetchall()
    if not rows:
        return None
    folds = tuple(
        SimpleNamespace(
            fold=fold,
            test_start=datetime.fromisoformat(m["test_start"]),
            test_end=datetime.fromisoformat(m["test_end"]),
            metrics=m,
        )
        for fold, m in rows
    )
    return SimpleNamespace(folds=folds)


CALIBRATION_FILE = "calibration.json"


def save_calibration(directory, calibrator: PlattCalibrator | None) -> None:
    """Beside model.onnx: the live signal engine loads it with the model."""
    from pathlib import Path

    payload = {"method": "platt", "a": calibrator.a, "b": calibrator.b} if calibrator else {"method": "none"}
    (Path(directory) / CALIBRATION_FILE).write_text(json.dumps(payload, indent=2))


def load_calibration(directory) -> PlattCalibrator | None:
    from pathlib import Path

    path = Path(directory) / CALIBRATION_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return PlattCalibrator(data["a"], data["b"]) if data.get("method") == "platt" else None
