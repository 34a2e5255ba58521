"""Walk-forward wall time on the shipped sample data, against one training of the candidate.

    python benchmarks/walk_forward.py [--quick] [--no-doc]

What ``make run`` does in its walk_forward asset, without Dagster or the database: the
sample source's daily bars of the configured universe before ``data.cutoff``, the batch
features, then ``run_walk_forward`` with the demo profile's model settings (configs/dev.yaml:
``AWET_ENV=dev``) - a fresh TFT per fold, its OOS predictions traded by the live loop's
signal/risk/exit code next to the buy-and-hold and Lean-alphas baselines. Per fold: training
time, and the rest (OOS windows, prediction, the three backtests).

Baseline, same run, same data and settings: ONE training of the candidate on the whole
training window (``train_final_model``, what the candidate asset does after the
walk-forward). The ratio says what honest out-of-sample evaluation costs in units of
training the model once.

``--quick``: 3 symbols and one epoch per fold (under a minute on 2 cores). The last line
printed is ``walk_forward_s=<total> folds=<n> ratio_vs_one_training=<x>``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine_info, machine_table, md_table, update_markdown_section  # noqa: E402

SECTION = "walk_forward"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 symbols, 1 epoch per fold (< 60 s)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = ap.parse_args(argv)
    wall0 = time.perf_counter()

    import polars as pl

    from awet_dagster.config import load_config
    from awet_dagster.evaluation.walk_forward import run_walk_forward
    from awet_dagster.features import compute_features
    from awet_dagster.model.pipeline import train_final_model, training_window
    from awet_dagster.sources.sample import SampleSource

    env = {"AWET_ENV": "dev", "AWET_HOME": tempfile.mkdtemp(prefix="awet-bench-wf-")}
    if args.quick:
        env.update({"AWET__DATA__SYMBOLS": "[SPY, IBM, AAPL]", "AWET__MODEL__MAX_EPOCHS": "1"})
    cfg = load_config(environ={**{k: v for k, v in os.environ.items() if k == "PATH"}, **env})
    start, cutoff = training_window(cfg)
    bars = SampleSource().fetch(list(cfg.data.symbols), date.fromisoformat(cfg.data.start),
                                date.fromisoformat(cfg.data.cutoff), "daily")
    bars = bars.filter(pl.col("ts") < cutoff)
    features = compute_features(bars)

    folds: list[dict] = []

    def progress(e: dict) -> None:
        if e.get("stage") == "fold_done":
            folds.append(e)
            print(f"fold {e['fold'] + 1}/{e['folds']}: {e['seconds']:.1f} s "
                  f"(train {e['train_seconds']:.1f} s, {int(e['epochs'])} epoch(s)), sharpe {e['sharpe']:.2f}",
                  flush=True)

    t0 = time.perf_counter()
    wf = run_walk_forward(features, bars, cfg, progress)
    wf_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained = train_final_model(features, bars, cfg)
    one_s = time.perf_counter() - t0
    ratio = wf_s / one_s

    rows = [[f["fold"] + 1, f"{f['seconds']:.1f}", f"{f['train_seconds']:.1f}",
             f"{f['seconds'] - f['train_seconds']:.1f}", int(f["epochs"]), f"{f['sharpe']:.2f}",
             f"{f['hit_rate']:.3f}"] for f in folds]
    m = cfg.model
    body = "\n".join([
        "## Walk-forward on the sample data (`benchmarks/walk_forward.py`)",
        "",
        f"{'`--quick`' if args.quick else 'Full'} run: {len(cfg.data.symbols)} symbols "
        f"({', '.join(cfg.data.symbols)}), daily bars {bars['ts'].min():%Y-%m-%d}..{bars['ts'].max():%Y-%m-%d} "
        f"({bars.height:,} bars, the sample source before `data.cutoff`); the demo profile's model "
        f"(hidden {m.hidden_size}, {m.attention_heads} heads, lookback {m.lookback}, horizons {list(m.horizons)}, "
        f"<= {m.max_epochs} epoch(s), <= {m.max_train_windows} sampled windows per fold, batch {m.batch_size}); "
        f"{len(wf.folds)} folds, {cfg.walk_forward.scheme}, embargo {cfg.walk_forward.embargo_bars} bars; "
        "each fold trades its OOS predictions with the live loop's signal/risk/exit code beside the "
        "buy-and-hold and Lean-alphas baselines.",
        "",
        md_table(["fold", "seconds", "train s", "predict + 3 backtests s", "epochs", "OOS Sharpe", "hit rate"], rows),
        "",
        f"Walk-forward total: **{wf_s:.1f} s**. Baseline (same run): one training of the candidate on the whole "
        f"window, {trained.n_train_windows:,} windows, {len(trained.history)} epoch(s): {one_s:.1f} s "
        f"({trained.samples_per_second:,.0f} samples/s). Walk-forward / one training = **{ratio:.1f}x**. "
        f"Median OOS Sharpe {wf.overall.get('sharpe', float('nan')):.2f} (the gate wants >= "
        f"{cfg.gate.min_median_oos_sharpe}).",
        "",
        machine_table(machine_info(["torch", "lightning", "pytorch-forecasting", "polars"])),
    ])
    if not args.no_doc:
        update_markdown_section(SECTION, body)
    print(body)
    print(f"total {time.perf_counter() - wall0:.1f}s")
    print(f"walk_forward_s={wf_s:.1f} folds={len(wf.folds)} ratio_vs_one_training={ratio:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
