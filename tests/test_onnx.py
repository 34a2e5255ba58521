"""ONNX export: torch/ONNX Runtime parity, tamper detection, the live-side predictor."""
from __future__ import annotations

import datetime as dt

import numpy as np
import onnx
import polars as pl
import pytest
from onnx import numpy_helper

from tests._model_data import BASE, planted
from awet_dagster.model.dataset import build_datasets, origin_windows, prepare_frame
from awet_dagster.model.onnx_export import MODEL_FILE, OnnxPredictor, check_parity, export_onnx
from awet_dagster.model.preprocessing import Preprocessing
from awet_dagster.model.tft import TrainSettings, predict_quantiles, train_tft


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = planted(n=200)
    fr = prepare_frame(d.features, d.bars, d.spec)
    test_start = BASE + dt.timedelta(days=170)
    data = build_datasets(fr, d.spec, val_start=BASE + dt.timedelta(days=140), end=test_start)
    trained = train_tft(data, TrainSettings(hidden_size=8, attention_heads=1, max_epochs=1, batch_size=64))
    out = tmp_path_factory.mktemp("onnx")
    path = export_onnx(trained, out)
    keys, windows = origin_windows(fr, d.spec, fr.filter(pl.col("ts") >= test_start).select("symbol", "ts"))
    return trained, path, keys, windows


def test_parity_on_held_out_windows(exported):
    trained, path, _, w = exported
    assert len(w) >= 64
    diff = check_parity(trained, path, [w[:1], w[:7], w[:64]])
    assert diff <= 1e-4, diff


def test_tampered_graph_fails_parity(exported, tmp_path):
    trained, path, _, w = exported
    model = onnx.load(str(path))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    init = max(floats, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    # Random noise (a constant shift can vanish behind a normalisation layer).
    arr += np.random.default_rng(0).normal(0.0, 0.1, arr.shape).astype(arr.dtype)
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    bad = tmp_path / MODEL_FILE
    onnx.save(model, str(bad))
    assert check_parity(trained, bad, [w[:16]]) > 1e-4


def test_predictor_reproduces_torch_with_micro_batches(exported):
    trained, path, keys, w = exported
    pred = OnnxPredictor.load(path.parent, max_batch=2)  # 5 windows -> 3 micro-batches
    idx = [0, 1, 2, 40, 41]
    names = [f"S{i}" for i in idx]
    out = pred.predict({n: w[i] for n, i in zip(names, idx)})
    want = predict_quantiles(trained, w[idx])
    pre = trained.preprocessing
    for k, n in enumerate(names):
        got = np.array([[out[n][h][q] for q in pre.quantiles] for h in pre.horizons])
        np.testing.assert_allclose(got, want[k], atol=1e-5)
    # A polars frame of feature rows (longer than the lookback) works as a window too.
    frame = pl.DataFrame(np.vstack([w[0][:3], w[0]]), schema=list(pre.feature_columns), orient="row")
    got = pred.predict({"X": frame})["X"]
    assert got[pre.horizons[0]][0.5] == pytest.approx(float(want[0, 0, 1]), abs=1e-5)


def test_preprocessing_round_trip_and_shape_check(exported):
    trained, path, _, w = exported
    pre = Preprocessing.load(path.parent)
    assert pre == trained.preprocessing
    assert pre.quantiles == (0.1, 0.5, 0.9) and pre.bar_type == "daily"
    with pytest.raises(ValueError):
        pre.to_tensors(w[:, :-1])
