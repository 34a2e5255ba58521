"""Batch feature computation over many symbols at once (training, backfills).

Layout of the work, chosen for exact parity with `FeatureState` and for speed:
- rows are sorted by (symbol, ts) once; every window feature is then computed over
  the whole concatenated array in a few vectorised passes, and the first rows of
  each symbol (whose windows would reach into the previous symbol) are masked —
  a window never mixes symbols;
- the recursive indicators (Lean EMA / Wilder) run per symbol through the batch
  indicator functions (a C-level IIR filter), since a recursion cannot be masked;
- returns, spread, calendar and the optional pass-through columns are polars
  expressions (`.over("symbol")` where they look back).
Missing values are null in the output (warm-up, absent quotes or Reddit data).
"""
from __future__ import annotations

import numpy as np
import polars as pl

from awet_dagster.features import spec as S
from awet_dagster.indicators import atr, ema, macd, rsi
from awet_dagster.sources.corporate_actions import adjusted_frame
from awet_dagster.indicators._arrays import rolling_mean, rolling_std

_KEYS = ("symbol", "bar_type", "ts")


def compute_features(bars: pl.DataFrame) -> pl.DataFrame:
    """Features for every bar of every symbol in `bars` (bar schema, any row order).

    Returns `symbol, bar_type, ts` + `FEATURE_COLUMNS` (Float64), sorted by symbol, ts.
    Each symbol is computed from its own rows only, so the result for a symbol does
    not depend on which other symbols are in the frame. One bar_type per symbol is
    expected (mixing minute and daily bars of a symbol would interleave them).
    Bars carrying corporate-action factors are adjusted first: features see no split crash."""
    frame = _prepare(adjusted_frame(bars))
    n = frame.height
    close = frame["close"].to_numpy()
    pos = _position_in_symbol(frame["symbol"])
    cols: dict[str, np.ndarray] = {}

    # --- windows over the concatenated array, masked at symbol starts ----------
    logc = np.log(close)
    r1 = np.full(n, np.nan)
    r1[1:] = logc[1:] - logc[:-1]
    r1[pos < 1] = np.nan  # the first bar of a symbol has no previous close
    for w in S.RV_WINDOWS:
        # A NaN return at a symbol start poisons exactly the windows that contain it.
        cols[f"rv_{w}"] = rolling_std(r1, w, ddof=0)

    sma = {w: _masked(rolling_mean(close, w), pos, w - 1) for w in {*S.SMA_WINDOWS, S.REGIME_FAST, S.REGIME_SLOW}}
    for w in S.SMA_WINDOWS:
        cols[f"sma_{w}_ratio"] = sma[w] / close - 1.0

    mid = sma[S.BB_PERIOD]
    sd = _masked(rolling_std(close, S.BB_PERIOD, ddof=0, mean=mid), pos, S.BB_PERIOD - 1)
    upper, lower = mid + S.BB_K * sd, mid - S.BB_K * sd
    flat = sd <= S.FLAT_STD_REL * np.abs(mid)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["bb_pct_b"] = np.where(flat, 0.5, (close - lower) / (upper - lower))
    cols["bb_width"] = (upper - lower) / mid

    vol = frame["volume"].to_numpy()
    vmean = _masked(rolling_mean(vol, S.VOLUME_Z_WINDOW), pos, S.VOLUME_Z_WINDOW - 1)
    vsd = rolling_std(vol, S.VOLUME_Z_WINDOW, ddof=0, mean=vmean)
    vflat = vsd <= S.FLAT_STD_REL * np.abs(vmean)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["volume_z_20"] = np.where(vflat, 0.0, (vol - vmean) / vsd)
    cols["volume_z_20"][np.isnan(vmean)] = np.nan

    cols["regime_sma20_sma50"] = sma[S.REGIME_FAST] / sma[S.REGIME_SLOW] - 1.0
    cols["regime_close_sma20"] = close / sma[S.REGIME_FAST] - 1.0

    # --- recursions, per symbol -------------------------------------------------
    for w in S.EMA_WINDOWS:
        cols[f"ema_{w}_ratio"] = np.empty(n)
    for name in ("rsi_14", "macd_norm", "macd_hist_norm", "atr_14_norm"):
        cols[name] = np.empty(n)
    high, low = frame["high"].to_numpy(), frame["low"].to_numpy()
    for a, b in _symbol_slices(pos):
        c = close[a:b]
        for w in S.EMA_WINDOWS:
            cols[f"ema_{w}_ratio"][a:b] = ema(c, w) / c - 1.0
        cols["rsi_14"][a:b] = rsi(c, S.RSI_PERIOD)
        line, _, hist = macd(c, S.MACD_FAST, S.MACD_SLOW, S.MACD_SIGNAL)
        cols["macd_norm"][a:b] = line / c
        cols["macd_hist_norm"][a:b] = hist / c
        cols["atr_14_norm"][a:b] = atr(high[a:b], low[a:b], c, S.ATR_PERIOD) / c

    # --- polars expressions -----------------------------------------------------
    logc_expr = pl.col("close").log()
    local = pl.col("ts").dt.convert_time_zone(S.CALENDAR_TZ)
    bid, ask = pl.col("bid"), pl.col("ask")
    mid_q = (bid + ask) / 2.0
    exprs = {
        **{f"ret_{h}": (logc_expr - logc_expr.shift(h)).over("symbol") for h in S.RET_HORIZONS},
        "spread_bps": pl.when(mid_q > 0).then((ask - bid) / mid_q * 1e4).otherwise(None),
        "minute_of_day": (local.dt.hour().cast(pl.Int32) * 60 + local.dt.minute().cast(pl.Int32)).cast(pl.Float64),
        "day_of_week": (local.dt.weekday().cast(pl.Int32) - 1).cast(pl.Float64),
        **{c: pl.col(c).cast(pl.Float64) for c in S.OPTIONAL_INPUTS},
    }
    out = frame.with_columns(
        **{k: pl.Series(k, v, dtype=pl.Float64).fill_nan(None) for k, v in cols.items()},
        **exprs,
    )
    return out.select(*_KEYS, *S.FEATURE_COLUMNS)


def _prepare(bars: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in ("symbol", "ts", "high", "low", "close", "volume") if c not in bars.columns]
    if missing:
        raise ValueError(f"bars lack column(s) {missing}")
    extra = [
        pl.lit(None, dtype=pl.Float64).alias(c)
        for c in ("bid", "ask", *S.OPTIONAL_INPUTS)
        if c not in bars.columns
    ]
    if "bar_type" not in bars.columns:
        extra.append(pl.lit(None, dtype=pl.Utf8).alias("bar_type"))
    frame = bars.with_columns(extra) if extra else bars
    # Float64 and no chunk boundaries: to_numpy() below is then zero-copy.
    frame = frame.with_columns(pl.col("high", "low", "close", "volume").cast(pl.Float64))
    return frame.sort("symbol", "ts").rechunk()


def _position_in_symbol(symbol: pl.Series) -> np.ndarray:
    """0, 1, 2, ... within each run of equal symbols (the frame is sorted by symbol)."""
    n = symbol.len()
    starts = np.zeros(n, dtype=bool)
    if n:
        starts[0] = True
        starts[1:] = (symbol.slice(1) != symbol.slice(0, n - 1)).to_numpy()
    idx = np.arange(n)
    return idx - np.maximum.accumulate(np.where(starts, idx, 0))


def _symbol_slices(pos: np.ndarray) -> list[tuple[int, int]]:
    starts = np.flatnonzero(pos == 0).tolist()
    return list(zip(starts, [*starts[1:], pos.shape[0]], strict=True))


def _masked(values: np.ndarray, pos: np.ndarray, warmup: int) -> np.ndarray:
    values[pos < warmup] = np.nan
    return values
