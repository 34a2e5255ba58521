"""Features + bars -> pytorch-forecasting `TimeSeriesDataSet`s for one training window.

Layout (why it looks like this):
- One row per (symbol, bar). `time_idx` is the bar's position within its symbol (bars,
  not clock time: overnight gaps are not missing data).
- The forecast origin is the last encoder bar T. The decoder is ONE step (row T+1) and
  carries one target per horizon h: `y_h` on row T+1 = log(close[T+h] / close[T]), i.e.
  the forward return *from the origin*. Several targets on one decoder step give exact
  per-horizon quantiles (summing per-bar quantiles along a path would not).
- The target is NOT an encoder input: on the encoder rows its value would contain closes
  after T (a leak). The model sees the features (unknown reals, encoder only) and the
  relative time index (the only known real). Calendar features are already in the
  feature set (`minute_of_day`, `day_of_week`) as encoder inputs; an absolute `time_idx`
  is deliberately not an input: it does not exist live and is out of range out of sample.
- Features are standardised with `features.fit_scaler` on the training rows only; the
  dataset's own scalers are identity, so one `Scaler` (saved in `Preprocessing`) does it
  both in research and live. Targets use a fixed `TorchNormalizer` per horizon fitted on
  the training windows' targets only.
- Windows are chosen by their decoder row: train windows have label end < validation
  start, validation windows start at/after it and end before the test window (purging).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import polars as pl

from awet_dagster.features import FEATURE_COLUMNS, FEATURE_SET_VERSION, Scaler, fit_scaler
from awet_dagster.features.spec import is_required
from awet_dagster.model.preprocessing import RELATIVE_TIME_IDX, Preprocessing
from awet_dagster.sources.corporate_actions import adjusted_frame

TIME_IDX = "time_idx"
GROUP = "symbol"

# Per-bar-type defaults (lookback, horizons) used when the config leaves them at the
# daily defaults: a minute model looks back two hours and predicts 30-60 minutes.
BAR_TYPE_DEFAULTS: dict[str, tuple[int, tuple[int, ...]]] = {
    "daily": (60, (1, 5, 10)),
    "minute": (120, (30, 45, 60)),
}


def model_shape(model_cfg, bar_type: str) -> tuple[int, tuple[int, ...]]:
    """(lookback, horizons) for `bar_type`: `model.minute_lookback/minute_horizons` for
    minute bars, `model.lookback/horizons` for daily bars."""
    if bar_type == "minute":
        return (
            int(getattr(model_cfg, "minute_lookback", BAR_TYPE_DEFAULTS["minute"][0])),
            tuple(getattr(model_cfg, "minute_horizons", BAR_TYPE_DEFAULTS["minute"][1])),
        )
    return int(model_cfg.lookback), tuple(model_cfg.horizons)


def target_names(horizons: Sequence[int]) -> tuple[str, ...]:
    return tuple(f"y_{h}" for h in horizons)


def fwd_names(horizons: Sequence[int]) -> tuple[str, ...]:
    return tuple(f"fwd_ret_{h}" for h in horizons)


@dataclass(frozen=True)
class DatasetSpec:
    bar_type: str
    lookback: int
    horizons: tuple[int, ...]
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    feature_columns: tuple[str, ...] = FEATURE_COLUMNS

    @property
    def max_horizon(self) -> int:
        return max(self.horizons)

    @property
    def targets(self) -> tuple[str, ...]:
        return target_names(self.horizons)


def spec_from_config(cfg, bar_type: str, feature_columns: Sequence[str] = FEATURE_COLUMNS) -> DatasetSpec:
    lookback, horizons = model_shape(cfg.model, bar_type)
    return DatasetSpec(bar_type, lookback, tuple(horizons), tuple(cfg.model.quantiles), tuple(feature_columns))


def prepare_frame(features: pl.DataFrame, bars: pl.DataFrame, spec: DatasetSpec) -> pl.DataFrame:
    """One frame for every later slice: `symbol, ts, close, time_idx, <features>`,
    `fwd_ret_h` (origin-aligned forward log returns), `y_h` (the same, shifted onto the
    decoder row), `origin_ts` and `label_end_ts` of the window whose decoder is the row.

    Leading warm-up rows (a required feature missing) are dropped per symbol before
    `time_idx` is assigned, so windows never hold warm-up nulls."""
    # Targets on the split/dividend-adjusted close, as the features: a split is not a return.
    closes = adjusted_frame(bars).select(GROUP, "ts", pl.col("close").cast(pl.Float64))
    f = features.select(GROUP, "ts", *spec.feature_columns).join(closes, on=[GROUP, "ts"], how="inner")
    f = f.sort(GROUP, "ts")
    logc = pl.col("close").log()
    f = f.with_columns(
        [(logc.shift(-h) - logc).over(GROUP).alias(n) for h, n in zip(spec.horizons, fwd_names(spec.horizons))]
    ).with_columns(
        *[pl.col(n).shift(1).over(GROUP).alias(y) for n, y in zip(fwd_names(spec.horizons), spec.targets)],
        pl.col("ts").shift(1).over(GROUP).alias("origin_ts"),
        pl.col("ts").shift(-(spec.max_horizon - 1)).over(GROUP).alias("label_end_ts"),
    )
    required = [c for c in spec.feature_columns if is_required(c)]
    if required:
        ok = pl.all_horizontal([pl.col(c).is_not_null() & pl.col(c).is_not_nan() for c in required])
        # Drop leading rows until every required feature is present (cum_max keeps
        # everything after the first complete row, so time_idx stays contiguous).
        f = f.filter(ok.cast(pl.Int8).cum_max().over(GROUP) == 1)
    return f.with_columns(pl.int_range(pl.len()).over(GROUP).cast(pl.Int64).alias(TIME_IDX))


def _to_pandas(frame: pl.DataFrame, spec: DatasetSpec, scaler: Scaler) -> pd.DataFrame:
    scaled = scaler.transform(frame.select(GROUP, TIME_IDX, *spec.feature_columns, *spec.targets))
    scaled = scaled.with_columns(
        [pl.col(c).cast(pl.Float64).fill_nan(None).fill_null(0.0) for c in (*spec.feature_columns, *spec.targets)]
    )
    pdf = scaled.to_pandas()
    pdf[GROUP] = pdf[GROUP].astype(str)
    return pdf


def _window_keys(frame: pl.DataFrame, mask: pl.Expr) -> pd.MultiIndex:
    sel = frame.filter(mask).select(GROUP, TIME_IDX)
    return pd.MultiIndex.from_arrays([sel[GROUP].to_list(), sel[TIME_IDX].to_list()])


def _restrict(ds, keys: pd.MultiIndex):
    """Keep the windows whose decoder row (symbol, time_idx) is in `keys`."""

    def keep(index: pd.DataFrame) -> np.ndarray:
        k = pd.MultiIndex.from_arrays([index[GROUP].astype(str), index["time_idx_first_prediction"]])
        return k.isin(keys)

    return ds.filter(keep)


@dataclass(frozen=True)
class FoldData:
    train: object  # TimeSeriesDataSet
    val: object | None  # TimeSeriesDataSet, or None when the window is too short
    preprocessing: Preprocessing


def _ts(x: datetime | None, default: datetime) -> datetime:
    return default if x is None else x


def build_datasets(
    frame: pl.DataFrame,
    spec: DatasetSpec,
    *,
    train_start: datetime | None = None,
    val_start: datetime | None = None,
    end: datetime | None = None,
    allowed_origins: pl.Series | None = None,
) -> FoldData:
    """Datasets for one training window [train_start, end) of `prepare_frame` output.

    Train windows: origin >= train_start and label end < val_start (purged);
    validation windows: origin >= val_start and label end < end. `val_start=None` means
    no validation slice. `allowed_origins` (optional set of origin timestamps) further
    limits train windows, e.g. to the origins a walk-forward fold allows."""
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data.encoders import MultiNormalizer, TorchNormalizer

    lo = _ts(train_start, frame["ts"].min())
    hi = end
    inner_end = val_start if val_start is not None else end
    rows = frame.filter(pl.col("ts") >= lo)
    if hi is not None:
        rows = rows.filter(pl.col("ts") < hi)
    label_ok = pl.col("label_end_ts").is_not_null() & pl.col("origin_ts").is_not_null()
    train_mask = label_ok & (pl.col("origin_ts") >= lo)
    if inner_end is not None:
        train_mask = train_mask & (pl.col("label_end_ts") < inner_end)
    if allowed_origins is not None:
        train_mask = train_mask & pl.col("origin_ts").is_in(allowed_origins.implode())
    # The encoder needs `lookback` earlier rows of the same symbol in this slice.
    enough = pl.col(TIME_IDX) - pl.col(TIME_IDX).min().over(GROUP) >= spec.lookback
    train_rows = rows.filter(train_mask & enough)
    if train_rows.height == 0:
        raise ValueError("no training windows in this window (too short for lookback + horizon)")

    # Normalisation from training data only: feature rows up to the validation start,
    # target values of the training windows.
    fit_rows = rows if inner_end is None else rows.filter(pl.col("ts") < inner_end)
    scaler = fit_scaler(fit_rows, spec.feature_columns)
    normalizers = []
    for t in spec.targets:
        y = train_rows[t].to_pandas()
        normalizers.append(TorchNormalizer(method="standard", center=True).fit(y))
    target = list(spec.targets) if len(spec.targets) > 1 else spec.targets[0]
    target_normalizer = MultiNormalizer(normalizers) if len(normalizers) > 1 else normalizers[0]

    pdf = _to_pandas(rows, spec, scaler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = TimeSeriesDataSet(
            pdf,
            time_idx=TIME_IDX,
            target=target,
            group_ids=[GROUP],
            max_encoder_length=spec.lookback,
            min_encoder_length=spec.lookback,
            max_prediction_length=1,
            min_prediction_length=1,
            time_varying_known_reals=[],
            time_varying_unknown_reals=list(spec.feature_columns),
            add_relative_time_idx=True,
            add_target_scales=False,
            add_encoder_length=False,
            target_normalizer=target_normalizer,
            scalers={c: None for c in (*spec.feature_columns, RELATIVE_TIME_IDX)},
            allow_missing_timesteps=False,
        )
        train = _restrict(full, _window_keys(rows, train_mask & enough))
        val = None
        if val_start is not None:
            vmask = label_ok & (pl.col("origin_ts") >= val_start) & enough
            if hi is not None:
                vmask = vmask & (pl.col("label_end_ts") < hi)
            keys = _window_keys(rows, vmask)
            if len(keys):
                val = _restrict(full, keys)
    pre = Preprocessing(
        bar_type=spec.bar_type,
        feature_columns=tuple(spec.feature_columns),
        feature_set_version=FEATURE_SET_VERSION,
        scaler=scaler,
        reals=tuple(full.reals),
        known_reals=tuple(full.time_varying_known_reals),
        encoder_length=spec.lookback,
        decoder_length=1,
        horizons=tuple(spec.horizons),
        quantiles=tuple(spec.quantiles),
        target_names=tuple(spec.targets),
        target_centers=tuple(float(n.center_) for n in normalizers),
        target_scales=tuple(float(n.scale_) for n in normalizers),
        n_categoricals=len(full.flat_categoricals),
    )
    return FoldData(train, val, pre)


def origin_windows(
    frame: pl.DataFrame, spec: DatasetSpec, origins: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, np.ndarray]:
    """Raw feature windows ending at each origin row: (keys frame `symbol, ts,
    fwd_ret_h...`, array (n, lookback, n_features)), in `feature_columns` order.

    `origins` (columns `symbol, ts`) selects the origin bars; default: every row with a
    full lookback. This is how out-of-sample windows are fed to the torch model and to
    `OnnxPredictor`, exactly as the live loop would (features only, no future rows)."""
    f = frame.sort(GROUP, "ts")
    ok = f.filter(pl.col(TIME_IDX) - pl.col(TIME_IDX).min().over(GROUP) >= spec.lookback - 1)
    if origins is not None:
        ok = ok.join(origins.select(GROUP, "ts"), on=[GROUP, "ts"], how="semi")
    ok = ok.with_row_index("_k")
    values = f.select(*spec.feature_columns).cast(pl.Float64).fill_null(np.nan).to_numpy()
    # Row position of each origin in `f`: frame is sorted, so position = offset + idx.
    starts = f.with_row_index("_pos").group_by(GROUP).agg(pl.col("_pos").min().alias("_s"), pl.col(TIME_IDX).min().alias("_t0"))
    pos = ok.join(starts, on=GROUP).sort("_k").select(pl.col("_s") + pl.col(TIME_IDX) - pl.col("_t0"))
    end = pos.to_series().to_numpy()
    idx = end[:, None] + np.arange(-spec.lookback + 1, 1)[None, :]
    windows = values[idx] if len(end) else np.zeros((0, spec.lookback, len(spec.feature_columns)))
    keys = ok.select(GROUP, "ts", *fwd_names(spec.horizons))
    return keys, windows
