"""Feature and indicator speed: batch features for 1M bars, indicators vs TA-Lib, and
streaming feature updates per second.

    python benchmarks/features.py [--quick] [--no-doc]

- batch: `compute_features` on 1M synthetic minute bars (100 symbols x 10k bars,
  geometric random walks with quotes), best of --repeat runs; peak memory is the
  tracemalloc peak of one extra run (Python + numpy allocations; polars' Rust
  buffers are not traced) and the process peak RSS (ru_maxrss) after all runs.
- indicators: EMA(14), RSI(14), MACD(12,26,9) on one 1M-row series, ours vs
  TA-Lib's C implementation, best of --repeat runs each; ratio = ours / TA-Lib.
  Ours are numba kernels: they are called once before timing (JIT warmed up); the
  one-off cost is reported separately ("jit"): first call in a fresh process with an
  empty numba cache (compile) and with the cache filled (load), in subprocesses.
- streaming: `FeatureState.update` over prebuilt bar dicts of one symbol (all
  features per update), updates per second over the whole pass.
Goals: batch <= 1.5 s on 2 cores, indicators <= 3x TA-Lib, streaming >= 100k/s.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import talib  # noqa: E402

from awet_dagster.features import FEATURE_COLUMNS, FEATURE_SET_VERSION, FeatureState, compute_features  # noqa: E402
from awet_dagster.indicators import ema, macd, rsi  # noqa: E402
from benchmarks._common import machine_info, machine_table, md_table, update_markdown_section  # noqa: E402

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)


def synthetic_bars(symbols: int, bars_per_symbol: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    n = symbols * bars_per_symbol
    steps = rng.normal(0.0, 1e-3, (symbols, bars_per_symbol))
    close = (rng.uniform(10, 500, (symbols, 1)) * np.exp(np.cumsum(steps, axis=1))).ravel()
    wiggle = np.abs(rng.normal(0.0, 5e-4, n)) * close
    half_spread = close * rng.uniform(1e-5, 5e-4, n)
    ts = np.datetime64(T0.replace(tzinfo=None), "us") + np.tile(
        np.arange(bars_per_symbol) * np.timedelta64(60_000_000, "us"), symbols
    )
    return pl.DataFrame(
        {
            "symbol": np.repeat([f"S{i:03d}" for i in range(symbols)], bars_per_symbol),
            "bar_type": "minute",
            "ts": pl.Series(ts).dt.replace_time_zone("UTC"),
            "open": close + rng.normal(0, 1e-4, n) * close,
            "high": close + wiggle,
            "low": close - wiggle,
            "close": close,
            "volume": rng.gamma(2.0, 500.0, n).round(),
            "bid": close - half_spread,
            "ask": close + half_spread,
            "source": "synthetic",
        }
    )


def best_of(fn, repeat: int) -> float:
    fn()  # warm caches / lazy imports
    times = []
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_batch(repeat: int) -> dict:
    bars = synthetic_bars(100, 10_000)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = best_of(lambda: compute_features(bars), repeat)
    tracemalloc.start()
    out = compute_features(bars)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert out.height == bars.height
    return {
        "rows": bars.height,
        "symbols": 100,
        "features": len(FEATURE_COLUMNS),
        "seconds": seconds,
        "rows_per_s": bars.height / seconds,
        "tracemalloc_peak_mib": peak / 2**20,
        "peak_rss_mib": rss_after / 1024,
        "rss_growth_mib": (rss_after - rss_before) / 1024,
        "input_mib": bars.estimated_size() / 2**20,
    }


def bench_indicators(repeat: int) -> list[dict]:
    rng = np.random.default_rng(1)
    x = 100.0 * np.exp(np.cumsum(rng.normal(0, 1e-3, 1_000_000)))
    cases = [
        ("EMA(14)", lambda: ema(x, 14), lambda: talib.EMA(x, 14)),
        ("RSI(14)", lambda: rsi(x, 14), lambda: talib.RSI(x, 14)),
        ("MACD(12,26,9)", lambda: macd(x, 12, 26, 9), lambda: talib.MACD(x, 12, 26, 9)),
    ]
    # Same answers first (TA-Lib's EMA/RSI/MACD use the same seeding after warm-up).
    np.testing.assert_allclose(ema(x, 14)[13:], talib.EMA(x, 14)[13:], rtol=1e-9)
    rows = []
    for name, ours, theirs in cases:
        a, b = best_of(ours, repeat), best_of(theirs, repeat)
        rows.append({"indicator": name, "ours_ms": a * 1e3, "talib_ms": b * 1e3, "ratio": a / b})
    return rows


_JIT_PROBE = """
import json, time
import numpy as np
t0 = time.perf_counter()
from awet_dagster.indicators import ema, macd, rsi
t1 = time.perf_counter()
x = np.linspace(1.0, 2.0, 100)
out = {"import_s": t1 - t0}
for name, fn in (("ema", lambda: ema(x, 14)), ("rsi", lambda: rsi(x, 14)), ("macd", lambda: macd(x, 12, 26, 9))):
    t = time.perf_counter()
    fn()
    out[name] = time.perf_counter() - t
print(json.dumps(out))
"""


def bench_jit() -> dict:
    """First-call cost of the numba kernels: compile (empty cache), then load (cache filled)."""
    repo = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": repo}
        runs = []
        for _ in range(2):
            proc = subprocess.run([sys.executable, "-c", _JIT_PROBE], env=env, cwd=repo, capture_output=True,
                                  text=True, timeout=300, check=True)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {"compile": runs[0], "cached": runs[1]}


def bench_streaming(n: int) -> dict:
    bars = synthetic_bars(1, n, seed=2).to_dicts()
    state = FeatureState("S000")
    update = state.update
    gc.collect()
    t = time.perf_counter()
    for b in bars:
        update(b)
    seconds = time.perf_counter() - t
    return {"updates": n, "seconds": seconds, "updates_per_s": n / seconds, "us_per_update": seconds / n * 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and streamed bars (< 60 s)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    ap.add_argument("--repeat", type=int, default=None)
    args = ap.parse_args(argv)
    repeat = args.repeat or (2 if args.quick else 5)
    stream_n = 50_000 if args.quick else 300_000
    info = machine_info(["numpy", "numba", "polars", "scipy", "ta-lib"])

    batch = bench_batch(repeat)
    print(
        f"batch: {batch['rows']:,} rows / {batch['symbols']} symbols / {batch['features']} features "
        f"in {batch['seconds']:.3f} s ({batch['rows_per_s']:,.0f} rows/s); "
        f"tracemalloc peak {batch['tracemalloc_peak_mib']:.0f} MiB, peak RSS {batch['peak_rss_mib']:.0f} MiB"
    )
    ind = bench_indicators(repeat)
    for r in ind:
        print(f"{r['indicator']}: ours {r['ours_ms']:.2f} ms, TA-Lib {r['talib_ms']:.2f} ms, ratio {r['ratio']:.2f}x")
    jit = bench_jit()
    print("jit first call (s): compile " + ", ".join(f"{k} {jit['compile'][k]:.2f}" for k in ("ema", "rsi", "macd"))
          + " | cached " + ", ".join(f"{k} {jit['cached'][k]:.3f}" for k in ("ema", "rsi", "macd")))
    stream = bench_streaming(stream_n)
    print(f"streaming: {stream['updates_per_s']:,.0f} updates/s ({stream['us_per_update']:.2f} us/update)")

    if not args.no_doc:
        body = (
            "## Features and indicators (`benchmarks/features.py`)\n\n"
            f"Run: `python benchmarks/features.py{' --quick' if args.quick else ''}` "
            f"(best of {repeat}); feature set `{FEATURE_SET_VERSION}`.\n\n"
            + machine_table(info)
            + "\n**Batch** `compute_features`, synthetic minute bars with quotes "
            "(goal <= 1.5 s on 2 cores):\n\n"
            + md_table(
                ["rows", "symbols", "features", "seconds", "rows/s", "tracemalloc peak", "peak RSS", "input frame"],
                [[
                    f"{batch['rows']:,}", batch["symbols"], batch["features"], f"{batch['seconds']:.3f}",
                    f"{batch['rows_per_s']:,.0f}", f"{batch['tracemalloc_peak_mib']:.0f} MiB",
                    f"{batch['peak_rss_mib']:.0f} MiB", f"{batch['input_mib']:.0f} MiB",
                ]],
            )
            + "\n**Indicators** on 1M rows vs TA-Lib (goal <= 3x). Ours are numba-compiled kernels "
            "(`awet_dagster/indicators/_kernels.py`), timed with the JIT warmed up (each is called once "
            "before timing); the one-off first-call cost is below.\n\n"
            + md_table(
                ["indicator", "ours (ms)", "TA-Lib (ms)", "ours / TA-Lib"],
                [[r["indicator"], f"{r['ours_ms']:.2f}", f"{r['talib_ms']:.2f}", f"{r['ratio']:.2f}x"] for r in ind],
            )
            + "\n**JIT** first call per kernel in a fresh process (seconds): with an empty numba cache "
            "(compile) and with the cache filled by that run (load; includes numba's one-time start-up, "
            "paid by the first kernel called):\n\n"
            + md_table(
                ["", "EMA", "RSI", "MACD", "import awet_dagster.indicators"],
                [[label, *(f"{jit[key][k]:.3f}" for k in ("ema", "rsi", "macd")), f"{jit[key]['import_s']:.3f}"]
                 for label, key in (("compile (empty cache)", "compile"), ("load (cache filled)", "cached"))],
            )
            + "\n**Streaming** `FeatureState.update`, one symbol, all features per update "
            "(goal >= 100k/s):\n\n"
            + md_table(
                ["updates", "updates/s", "us/update"],
                [[f"{stream['updates']:,}", f"{stream['updates_per_s']:,.0f}", f"{stream['us_per_update']:.2f}"]],
            )
        )
        update_markdown_section("features", body)
    ratios = ", ".join(f"{r['indicator']} {r['ratio']:.2f}x" for r in ind)
    print(
        f"HEADLINE batch 1M bars {batch['seconds']:.3f} s (goal 1.5) | vs TA-Lib: {ratios} (goal 3x) | "
        f"streaming {stream['updates_per_s']:,.0f}/s (goal 100k)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
