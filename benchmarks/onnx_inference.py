"""TFT inference latency, ONNX Runtime vs torch eager, and training throughput.

    python benchmarks/onnx_inference.py [--quick] [--no-doc] [--device cpu|cuda]

- model: the configured TFT (`ModelConfig` defaults: hidden 16, 2 heads) in the minute
  shape (lookback 120, horizons 30/45/60, 23 features), trained briefly on real
  `compute_features` output of synthetic minute bars (training also gives throughput);
- inference: the same flat tensors through torch eager (`FlatTFT`, no_grad, eval) and
  through ONNX Runtime (CPUExecutionProvider), batch 1, 64 and 512, measured in the same
  run, alternating; scaling (`Preprocessing.to_tensors`) is outside both timings;
- training: samples/s over the training epochs (no validation), on --device (cuda when
  the lead runs it on a GPU machine).
Goal: ONNX batch-1 p50 <= 2 ms and >= 4x faster than torch eager.
The last line printed is `batch1_p50_ms=<onnx> torch_over_onnx=<ratio>`.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from benchmarks._common import machine_info, machine_table, md_table, percentile, update_markdown_section  # noqa: E402

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def _bars(symbols: int, n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    close = (rng.uniform(20, 300, (symbols, 1)) * np.exp(np.cumsum(rng.normal(0, 1e-3, (symbols, n)), axis=1))).ravel()
    wig = np.abs(rng.normal(0, 5e-4, close.size)) * close
    base = np.datetime64(T0.replace(tzinfo=None), "us") + np.arange(n) * np.timedelta64(60_000_000, "us")
    return pl.DataFrame({
        "symbol": np.repeat([f"S{i:02d}" for i in range(symbols)], n), "bar_type": "minute",
        "ts": pl.Series(np.tile(base, symbols)).dt.replace_time_zone("UTC"),
        "open": close, "high": close + wig, "low": close - wig, "close": close,
        "volume": rng.gamma(2.0, 500.0, close.size).round(),
    })


def _time(fn, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer windows and iterations (< 60 s)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="training device")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    import onnxruntime as ort
    import torch

    from awet_dagster.config.schema import ModelConfig
    from awet_dagster.features import compute_features
    from awet_dagster.model.dataset import DatasetSpec, build_datasets, model_shape, prepare_frame
    from awet_dagster.model.onnx_export import _feeds, check_parity, export_onnx
    from awet_dagster.model.preprocessing import INPUT_NAMES
    from awet_dagster.model.tft import FlatTFT, TrainSettings, train_tft

    info = machine_info(["torch", "onnxruntime", "onnx", "pytorch-forecasting", "lightning"])
    info["torch threads"] = str(torch.get_num_threads())
    mcfg = ModelConfig()
    lookback, horizons = model_shape(mcfg, "minute")
    symbols, n = (3, 700) if args.quick else (8, 2400)
    bars = _bars(symbols, n)
    feats = compute_features(bars)
    from awet_dagster.features import FEATURE_COLUMNS

    spec = DatasetSpec("minute", lookback, tuple(horizons), tuple(mcfg.quantiles), FEATURE_COLUMNS)
    frame = prepare_frame(feats, bars, spec)
    data = build_datasets(frame, spec)  # no validation slice: pure training throughput
    max_windows = 512 if args.quick else 8192
    epochs = 1 if args.quick else 2
    accel = "gpu" if args.device == "cuda" else "cpu"
    settings = TrainSettings.from_config(mcfg, max_epochs=epochs, max_train_windows=max_windows, accelerator=accel)
    trained = train_tft(data, settings)
    train_sps = trained.samples_per_second
    n_params = sum(p.numel() for p in trained.model.parameters())

    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(trained, tmp)
        from awet_dagster.model.dataset import origin_windows

        _, windows = origin_windows(frame, spec)
        rng = np.random.default_rng(0)
        pick = windows[rng.choice(len(windows), size=512, replace=len(windows) < 512)]
        parity = check_parity(trained, path, [pick[:1], pick[:64]])
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        flat = FlatTFT(trained.model).eval()
        rows = []
        iters = {1: 100, 64: 10, 512: 3} if args.quick else {1: 500, 64: 40, 512: 8}
        p50_1 = ratio_1 = float("nan")
        for b in (1, 64, 512):
            feeds = trained.preprocessing.to_tensors(pick[:b])
            ort_in = _feeds(sess, feeds)
            th_in = tuple(torch.from_numpy(feeds[k]) for k in INPUT_NAMES)

            def run_onnx():
                sess.run(None, ort_in)

            def run_torch():
                with torch.no_grad():
                    flat(*th_in)

            run_onnx(), run_torch()  # warm-up
            t_onnx, t_torch = [], []
            for _ in range(iters[b]):  # alternate so load changes hit both equally
                t_onnx += _time(run_onnx, 1)
                t_torch += _time(run_torch, 1)
            po, pt = percentile(t_onnx, 50), percentile(t_torch, 50)
            rows.append([b, f"{po:.3f}", f"{percentile(t_onnx, 99):.3f}", f"{pt:.3f}", f"{percentile(t_torch, 99):.3f}",
                         f"{pt / po:.1f}x", f"{b / po * 1e3:,.0f}"])
            if b == 1:
                p50_1, ratio_1 = po, pt / po
    wall = time.perf_counter() - t_start
    body = (
        "## TFT inference: ONNX Runtime vs torch eager, training throughput (`benchmarks/onnx_inference.py`)\n\n"
        f"Mode: {'quick' if args.quick else 'full'}; wall time {wall:.0f} s. Model: TFT hidden {mcfg.hidden_size}, "
        f"{mcfg.attention_heads} heads, {n_params:,} parameters, lookback {lookback}, horizons {list(horizons)}, "
        f"{len(FEATURE_COLUMNS)} features, quantiles {list(mcfg.quantiles)}; ONNX opset 17 (dynamo=False), "
        f"CPUExecutionProvider; parity max |onnx - torch| = {parity:.2e}. "
        "Latency excludes scaling (`Preprocessing.to_tensors`); runs alternate ONNX/torch.\n\n"
        + md_table(["batch", "ONNX p50 ms", "ONNX p99 ms", "torch p50 ms", "torch p99 ms", "torch/ONNX (p50)", "ONNX windows/s"], rows)
        + f"\nTraining throughput ({args.device}): **{train_sps:,.0f} samples/s** "
        f"({trained.n_train_windows} windows x {len(trained.history)} epoch(s), batch {mcfg.batch_size}, "
        f"{trained.seconds:.1f} s).\n\n"
        f"Goal: ONNX batch-1 p50 <= 2 ms (measured {p50_1:.2f} ms: {'met' if p50_1 <= 2 else 'NOT met'}) and "
        f">= 4x faster than torch (measured {ratio_1:.1f}x: {'met' if ratio_1 >= 4 else 'NOT met'}).\n\n"
        "Machine:\n\n" + machine_table(info)
    )
    print(body)
    if not args.no_doc:
        update_markdown_section("onnx_inference", body)
    print(f"batch1_p50_ms={p50_1:.3f} torch_over_onnx={ratio_1:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
