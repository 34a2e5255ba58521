"""Dataset construction and TFT training on data with a planted signal."""
from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import torch

from tests._model_data import BASE, planted
from awet_dagster.config.schema import ModelConfig
from awet_dagster.features import fit_scaler
from awet_dagster.model.dataset import build_datasets, model_shape, origin_windows, prepare_frame
from awet_dagster.model.tft import TrainSettings, predict_quantiles, train_tft
from awet_dagster.evaluation.metrics import hit_rate

TINY = dict(hidden_size=8, attention_heads=1, dropout=0.0, batch_size=64, learning_rate=0.03)


def test_model_shape_per_bar_type():
    cfg = ModelConfig()
    assert model_shape(cfg, "daily") == (60, (1, 5, 10))
    assert model_shape(cfg, "minute") == (120, (30, 45, 60))


def test_prepare_frame_targets_are_forward_returns_on_the_decoder_row():
    d = planted(n=80)
    fr = prepare_frame(d.features, d.bars, d.spec)
    a = fr.filter(pl.col("symbol") == "AAA")
    close = d.bars.filter(pl.col("symbol") == "AAA")["close"].to_numpy()
    t = 10
    assert a["fwd_ret_3"][t] == pytest.approx(np.log(close[t + 3] / close[t]))
    # y on row t+1 is the forward return from origin t: the decoder row's label.
    assert a["y_3"][t + 1] == pytest.approx(a["fwd_ret_3"][t])
    assert a["origin_ts"][t + 1] == a["ts"][t]
    assert a["label_end_ts"][t + 1] == a["ts"][t + 3]
    assert a["time_idx"].to_list() == list(range(a.height))


def test_prepare_frame_drops_warmup_rows():
    d = planted(n=60)
    feats = d.features.with_columns(
        pl.when(pl.int_range(pl.len()).over("symbol") < 5).then(None).otherwise(pl.col("sig")).alias("sig")
    )
    fr = prepare_frame(feats, d.bars, d.spec)
    assert fr.group_by("symbol").len()["len"].to_list() == [55, 55, 55]
    assert fr["sig"].null_count() == 0


def test_dataset_batches_equal_the_flat_tensors_of_raw_windows():
    d = planted(n=150)
    fr = prepare_frame(d.features, d.bars, d.spec)
    data = build_datasets(fr, d.spec, val_start=BASE + dt.timedelta(days=100), end=BASE + dt.timedelta(days=140))
    x, y = next(iter(data.val.to_dataloader(batch_size=8, train=False)))
    sym = {0: "AAA", 1: "BBB", 2: "CCC"}
    origins = pl.DataFrame({
        "symbol": [sym[int(g)] for g in x["groups"][:, 0]],
        "time_idx": (x["decoder_time_idx"][:, 0] - 1).tolist(),
    })
    o = fr.join(origins, on=["symbol", "time_idx"]).select("symbol", "ts")
    keys, windows = origin_windows(fr, d.spec, o)
    t = data.preprocessing.to_tensors(windows)
    np.testing.assert_array_equal(t["encoder_cont"], x["encoder_cont"].numpy())
    known = [data.preprocessing.reals.index(k) for k in data.preprocessing.known_reals]
    np.testing.assert_array_equal(t["decoder_cont"][:, :, known], x["decoder_cont"][:, :, known].numpy())
    np.testing.assert_allclose(keys["fwd_ret_1"].to_numpy(), y[0][0][:, 0].numpy(), rtol=1e-6)


def test_normalisation_is_fitted_on_the_training_window_only():
    d = planted(n=150)
    fr = prepare_frame(d.features, d.bars, d.spec)
    val_start = BASE + dt.timedelta(days=100)
    data = build_datasets(fr, d.spec, val_start=val_start, end=BASE + dt.timedelta(days=140))
    want = fit_scaler(fr.filter(pl.col("ts") < val_start), d.spec.feature_columns)
    assert data.preprocessing.scaler == want
    # Train windows' labels end before the validation slice (purged).
    idx = data.train.decoded_index
    last = fr.join(pl.DataFrame({"symbol": idx["symbol"].astype(str).tolist(),
                                 "time_idx": idx["time_idx_first_prediction"].tolist()}), on=["symbol", "time_idx"])
    assert last["label_end_ts"].max() < val_start


def _oos_hit_rate(d, frame, model, test_start):
    o = frame.filter(pl.col("ts") >= test_start).select("symbol", "ts")
    keys, windows = origin_windows(frame, d.spec, o)
    q = predict_quantiles(model, windows)
    return hit_rate(q[:, 0, 1], keys["fwd_ret_1"].fill_null(np.nan).to_numpy())


def test_planted_signal_beats_shuffled_targets_out_of_sample():
    d = planted(n=400)
    fr = prepare_frame(d.features, d.bars, d.spec)
    val_start, test_start = BASE + dt.timedelta(days=250), BASE + dt.timedelta(days=310)
    settings = TrainSettings(max_epochs=8, early_stopping_patience=3, **TINY)
    real = train_tft(build_datasets(fr, d.spec, val_start=val_start, end=test_start), settings)
    rng = np.random.default_rng(1)
    shuffled_frame = fr.with_columns(
        [pl.Series(c, rng.permutation(fr[c].to_numpy())) for c in d.spec.targets]
    )
    shuffled = train_tft(build_datasets(shuffled_frame, d.spec, val_start=val_start, end=test_start), settings)
    hr_real = _oos_hit_rate(d, fr, real, test_start)
    hr_shuf = _oos_hit_rate(d, fr, shuffled, test_start)
    assert hr_real > 0.7, hr_real
    assert hr_real > hr_shuf + 0.15, (hr_real, hr_shuf)
    assert real.history and all("val_loss" in h for h in real.history)


def test_training_is_deterministic():
    d = planted(n=150)
    fr = prepare_frame(d.features, d.bars, d.spec)
    data = build_datasets(fr, d.spec, val_start=BASE + dt.timedelta(days=110), end=BASE + dt.timedelta(days=140))
    settings = TrainSettings(max_epochs=1, max_train_windows=150, **TINY)
    _, w = origin_windows(fr, d.spec)
    a = predict_quantiles(train_tft(data, settings), w[:32])
    b = predict_quantiles(train_tft(data, settings), w[:32])
    np.testing.assert_array_equal(a, b)
    assert np.all(np.diff(a, axis=-1) >= 0)  # q10 <= q50 <= q90
    assert a.shape == (32, 2, 3)
    assert torch.are_deterministic_algorithms_enabled()


def test_windows_kept_in_memory_train_exactly_like_windows_rebuilt_each_epoch(monkeypatch):
    """The fold's windows are built once (``CACHE_WINDOWS``) instead of every epoch: the same
    batches in the same order, so the same model, to the bit."""
    from awet_dagster.model import tft

    d = planted(n=150)
    fr = prepare_frame(d.features, d.bars, d.spec)
    data = build_datasets(fr, d.spec, val_start=BASE + dt.timedelta(days=110), end=BASE + dt.timedelta(days=140))
    settings = TrainSettings(max_epochs=2, max_train_windows=120, **TINY)
    _, w = origin_windows(fr, d.spec)
    loader, _ = tft._subset_loader(data.train, 120, 16, True, 1)
    assert isinstance(loader.dataset, tft._Materialized)
    cached = predict_quantiles(train_tft(data, settings), w[:32])
    monkeypatch.setattr(tft, "CACHE_WINDOWS", 0)
    loader, _ = tft._subset_loader(data.train, 120, 16, True, 1)
    assert not isinstance(loader.dataset, tft._Materialized)
    rebuilt = predict_quantiles(train_tft(data, settings), w[:32])
    np.testing.assert_array_equal(cached, rebuilt)
