"""The one artifact the live loop needs beside the .onnx: how to turn feature rows into
the model's flat input tensors and what the outputs mean.

Everything here is numpy + json (no torch), so the inference side stays light. The same
`to_tensors` feeds the torch model during research and the ONNX graph live, which is what
makes the torch/ONNX parity check meaningful end to end.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from awet_dagster.features import Scaler

PREPROCESSING_FILE = "preprocessing.json"
RELATIVE_TIME_IDX = "relative_time_idx"
# Input names of the exported graph, in order (see onnx_export.FlatTFT).
INPUT_NAMES = ("encoder_cat", "encoder_cont", "decoder_cat", "decoder_cont", "target_scale")


@dataclass(frozen=True)
class Preprocessing:
    bar_type: str
    feature_columns: tuple[str, ...]  # raw feature order of a window's columns
    feature_set_version: str
    scaler: Scaler  # fitted on the training window only
    reals: tuple[str, ...]  # column order of encoder_cont / decoder_cont (dataset.reals)
    known_reals: tuple[str, ...]  # the reals the decoder sees
    encoder_length: int
    decoder_length: int
    horizons: tuple[int, ...]
    quantiles: tuple[float, ...]
    target_names: tuple[str, ...]
    # Target normaliser (fitted on the training window): y = y_norm * scale + center.
    target_centers: tuple[float, ...]
    target_scales: tuple[float, ...]
    n_categoricals: int = 0
    model_version: str | None = None

    # ------------------------------------------------------------------ tensors
    def to_tensors(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """(batch, encoder_length, n_features) raw feature rows, oldest first, columns in
        `feature_columns` order -> the graph's inputs (float32 / int64 numpy arrays).

        Missing values (NaN: absent quotes, Reddit data) become 0 after scaling, i.e. the
        training mean - the same fill the dataset used."""
        w = np.asarray(windows, dtype=np.float64)
        if w.ndim != 3 or w.shape[1:] != (self.encoder_length, len(self.feature_columns)):
            raise ValueError(
                f"windows must be (batch, {self.encoder_length}, {len(self.feature_columns)}), got {w.shape}"
            )
        b, enc, dec = w.shape[0], self.encoder_length, self.decoder_length
        means = np.asarray(self.scaler.means)
        stds = np.asarray(self.scaler.stds)
        col = {c: i for i, c in enumerate(self.feature_columns)}
        idx = [col[c] for c in self.scaler.columns]
        scaled = w.copy()
        scaled[:, :, idx] = (w[:, :, idx] - means) / stds
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0)

        enc_cont = np.zeros((b, enc, len(self.reals)), dtype=np.float32)
        # Unknown reals are not fed to the decoder (the model ignores those columns), so
        # zeros there give the same output as the dataset's true future values.
        dec_cont = np.zeros((b, dec, len(self.reals)), dtype=np.float32)
        rel = np.arange(-enc, dec, dtype=np.float32) / enc
        for j, name in enumerate(self.reals):
            if name == RELATIVE_TIME_IDX:
                enc_cont[:, :, j] = rel[:enc]
                dec_cont[:, :, j] = rel[enc:]
            else:
                enc_cont[:, :, j] = scaled[:, :, col[name]]
        ts = np.empty((b, len(self.target_names), 2), dtype=np.float32)
        ts[:, :, 0] = self.target_centers
        ts[:, :, 1] = self.target_scales
        return {
            "encoder_cat": np.zeros((b, enc, self.n_categoricals), dtype=np.int64),
            "encoder_cont": enc_cont,
            "decoder_cat": np.zeros((b, dec, self.n_categoricals), dtype=np.int64),
            "decoder_cont": dec_cont,
            "target_scale": ts,
        }

    # ------------------------------------------------------------------ json
    def to_dict(self) -> dict:
        d = asdict(self)
        d["scaler"] = self.scaler.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        d = dict(d)
        d["scaler"] = Scaler.from_dict(d["scaler"])
        for k in ("feature_columns", "reals", "known_reals", "target_names"):
            d[k] = tuple(d[k])
        d["horizons"] = tuple(int(h) for h in d["horizons"])
        for k in ("quantiles", "target_centers", "target_scales"):
            d[k] = tuple(float(x) for x in d[k])
        return cls(**d)

    def save(self, directory: Path | str) -> Path:
        path = Path(directory) / PREPROCESSING_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, directory: Path | str) -> Preprocessing:
        return cls.from_dict(json.loads((Path(directory) / PREPROCESSING_FILE).read_text()))
