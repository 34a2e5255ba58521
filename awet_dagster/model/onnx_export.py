"""ONNX export of a trained TFT, a torch/ONNX parity check, and the inference side.

The graph takes flat tensors (no dicts, no lengths: encoder/decoder lengths are fixed)
with a dynamic batch axis; scaling lives outside the graph in `Preprocessing`, saved as
JSON beside `model.onnx`, so the live loop loads ONE directory and needs neither torch
nor pytorch-forecasting (torch is imported only by `export_onnx`/`check_parity`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from awet_dagster.model.preprocessing import INPUT_NAMES, Preprocessing

MODEL_FILE = "model.onnx"
OPSET = 17

def export_onnx(trained, directory: Path | str, example_batch: int = 2) -> Path:
    """Write `model.onnx` + `preprocessing.json` into `directory`; returns the .onnx path."""
    import warnings

    import torch

    from awet_dagster.model.tft import FlatTFT

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    pre: Preprocessing = trained.preprocessing
    flat = FlatTFT(trained.model).eval()
    ex = pre.to_tensors(np.zeros((example_batch, pre.encoder_length, len(pre.feature_columns))))
    args = tuple(torch.from_numpy(ex[k]) for k in INPUT_NAMES)
    path = d / MODEL_FILE
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on python-int shape reads
        torch.onnx.export(
            flat, args, str(path), dynamo=False, opset_version=OPSET,
            input_names=list(INPUT_NAMES), output_names=["quantiles"],
            dynamic_axes={**{k: {0: "batch"} for k in INPUT_NAMES}, "quantiles": {0: "batch"}},
        )
    pre.save(d)
    return path


def _session(onnx_path: Path | str | bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _feeds(session, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    # The exporter drops inputs the graph never reads (e.g. the empty categorical
    # tensors of a model without categoricals): feed exactly what the graph declares.
    return {i.name: tensors[i.name] for i in session.get_inputs()}


def check_parity(trained, onnx_path: Path | str | bytes, batches: Iterable[np.ndarray]) -> float:
    """Max |ONNX Runtime - torch| over raw feature windows `batches` (each (n, L, F))."""
    from awet_dagster.model.tft import predict_quantiles

    sess = _session(onnx_path)
    worst = 0.0
    for w in batches:
        feeds = trained.preprocessing.to_tensors(w)
        got = sess.run(None, _feeds(sess, feeds))[0]
        want = predict_quantiles(trained, w)
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))))
    return worst


class OnnxPredictor:
    """Live-side model: `OnnxPredictor.load(dir).predict({symbol: window})`.

    A window is the last `encoder_length` feature rows of a symbol, oldest first, columns
    in `preprocessing.feature_columns` order (a 2-D array, or a polars/dict-of-columns
    frame with those columns). Symbols are stacked into micro-batches of `max_batch`."""

    def __init__(self, session, preprocessing: Preprocessing, max_batch: int = 256) -> None:
        self.session = session
        self.preprocessing = preprocessing
        self.max_batch = max_batch

    @classmethod
    def load(cls, directory: Path | str, max_batch: int = 256) -> OnnxPredictor:
        d = Path(directory)
        return cls(_session(d / MODEL_FILE), Preprocessing.load(d), max_batch)

    def _window(self, w) -> np.ndarray:
        pre = self.preprocessing
        if hasattr(w, "select") and hasattr(w, "columns"):  # polars frame
            w = w.select(list(pre.feature_columns)).to_numpy()
        arr = np.asarray(w, dtype=np.float64)
        if arr.shape[0] > pre.encoder_length:
            arr = arr[-pre.encoder_length :]
        return arr

    def predict_array(self, windows: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(windows), self.max_batch):
            feeds = self.preprocessing.to_tensors(windows[i : i + self.max_batch])
            out.append(self.session.run(None, _feeds(self.session, feeds))[0])
        return np.concatenate(out) if out else np.zeros((0, len(self.preprocessing.horizons), len(self.preprocessing.quantiles)), np.float32)

    def predict(self, windows: Mapping[str, object]) -> dict[str, dict[int, dict[float, float]]]:
        """{symbol: window} -> {symbol: {horizon: {quantile: forward log return}}}."""
        symbols = list(windows)
        if not symbols:
            return {}
        arr = np.stack([self._window(windows[s]) for s in symbols])
        q = self.predict_array(arr)
        pre = self.preprocessing
        return {
            s: {h: {qq: float(q[i, j, k]) for k, qq in enumerate(pre.quantiles)} for j, h in enumerate(pre.horizons)}
            for i, s in enumerate(symbols)
        }
