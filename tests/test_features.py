"""Features: batch == streaming, no look-ahead, declared warm-up, symbol isolation, scaler."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from awet_dagster.features import (
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    FEATURES,
    MAX_WARMUP,
    FeatureState,
    compute_features,
    fit_scaler,
)
from awet_dagster.features import spec as feature_spec
from awet_dagster.sources.sample import SampleSource

NON_NULLABLE = [f for f in FEATURES if not f.nullable]


def _bars(timeframe: str, symbols: list[str]) -> pl.DataFrame:
    src = SampleSource()
    lo, hi = src.date_range(timeframe)
    return src.fetch(symbols, lo, hi + (hi - lo), timeframe)


@pytest.fixture(scope="module")
def daily() -> pl.DataFrame:
    return _bars("daily", ["SPY", "AAPL", "IBM"])


@pytest.fixture(scope="module")
def minute() -> pl.DataFrame:
    return _bars("minute", ["SPY", "BAC"])


def _stream_features(bars: pl.DataFrame, symbol: str) -> pl.DataFrame:
    state = FeatureState(symbol)
    rows = [state.update(b) for b in bars.filter(pl.col("symbol") == symbol).sort("ts").iter_rows(named=True)]
    assert all(r is not None for r in rows)
    return pl.DataFrame(rows, schema={c: pl.Float64 for c in FEATURE_COLUMNS}, orient="row")


def _assert_frames_close(batch: pl.DataFrame, stream: pl.DataFrame, tol: float = 1e-9) -> None:
    for c in FEATURE_COLUMNS:
        a = batch[c].fill_null(np.nan).to_numpy()
        b = stream[c].fill_null(np.nan).to_numpy()
        miss = np.isnan(a) != np.isnan(b)
        assert not miss.any(), f"{c}: missing-ness differs at rows {np.flatnonzero(miss)[:5]}"
        ok = ~np.isnan(a)
        err = np.abs(a[ok] - b[ok]) / np.maximum(1.0, np.abs(a[ok]))
        assert err.max(initial=0.0) <= tol, f"{c}: max error {err.max()}"


# --- the spec --------------------------------------------------------------------------


def test_spec_is_defined_once_and_versioned() -> None:
    assert len(FEATURE_COLUMNS) >= 15 and len(set(FEATURE_COLUMNS)) == len(FEATURE_COLUMNS)
    assert FEATURE_SET_VERSION.startswith("fs1-") and len(FEATURE_SET_VERSION) == 16
    assert FEATURE_SET_VERSION == feature_spec._version()
    assert MAX_WARMUP == max(f.warmup for f in FEATURES) == 49
    # The version is derived from the spec: changing a warm-up changes it.
    changed = (*FEATURES[:-1], feature_spec.FeatureSpec("x", ("close",), 1, "x"))
    original = feature_spec.FEATURES
    try:
        feature_spec.FEATURES = changed
        assert feature_spec._version() != FEATURE_SET_VERSION
    finally:
        feature_spec.FEATURES = original


def test_core_does_not_import_dagster_or_kafka() -> None:
    code = (
        "import sys, awet_dagster.features, awet_dagster.indicators, awet_dagster.alphas;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('dagster','confluent_kafka')];"
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


# --- parity ----------------------------------------------------------------------------


def test_batch_equals_streaming_on_real_daily_bars(daily: pl.DataFrame) -> None:
    feats = compute_features(daily)
    assert feats.columns == ["symbol", "bar_type", "ts", *FEATURE_COLUMNS]
    for sym in ("SPY", "AAPL", "IBM"):
        batch = feats.filter(pl.col("symbol") == sym)
        assert batch.height > 5000
        _assert_frames_close(batch, _stream_features(daily, sym))


def test_batch_equals_streaming_on_real_minute_bars_with_quotes(minute: pl.DataFrame) -> None:
    feats = compute_features(minute)
    for sym in ("SPY", "BAC"):
        batch = feats.filter(pl.col("symbol") == sym)
        assert batch["spread_bps"].drop_nulls().len() > 0.9 * batch.height  # quotes present
        _assert_frames_close(batch, _stream_features(minute, sym))


def test_streaming_ignores_stale_bars(daily: pl.DataFrame) -> None:
    rows = list(daily.filter(pl.col("symbol") == "SPY").head(30).iter_rows(named=True))
    state = FeatureState("SPY")
    for r in rows[:20]:
        state.update(r)
    assert state.update(rows[19]) is None and state.update(rows[5]) is None
    assert state.bars_seen == 20
    fresh = FeatureState("SPY")
    want = [fresh.update(r) for r in rows][20:]
    got = [state.update(r) for r in rows[20:]]
    assert [list(g) for g in got] == [list(w) for w in want]
    np.testing.assert_equal([list(g.values()) for g in got], [list(w.values()) for w in want])  # NaN == NaN


# --- point-in-time -----------------------------------------------------------------------


def _perturb_after(bars: pl.DataFrame, t: datetime, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    after = pl.col("ts") > t
    factor = pl.Series(rng.uniform(0.5, 1.5, bars.height))
    return bars.with_columns(
        *(pl.when(after).then(pl.col(c) * factor).otherwise(pl.col(c)).alias(c)
          for c in ("open", "high", "low", "close", "bid", "ask")),
        pl.when(after).then(pl.col("volume") * factor * 3).otherwise(pl.col("volume")).alias("volume"),
    )


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 4062), st.integers(0, 2**32 - 1))
def test_no_feature_at_or_before_t_sees_later_bars(minute: pl.DataFrame, cut: int, seed: int) -> None:
    spy = minute.filter(pl.col("symbol") == "SPY").sort("ts")
    t = spy["ts"][min(cut, spy.height - 1)]
    base = compute_features(minute)
    moved = compute_features(_perturb_after(minute, t, seed))
    upto = pl.col("ts") <= t
    before, after = base.filter(upto), moved.filter(upto)
    assert before.height > 0
    # Bit-for-bit: a causal computation cannot move at all.
    assert before.equals(after)
    # ...and the perturbation was real: later rows did change.
    later = pl.col("ts") > t
    if base.filter(later).height > 60:
        assert not base.filter(later).equals(moved.filter(later))


# --- warm-up and isolation ----------------------------------------------------------------


def test_no_missing_value_after_the_declared_warmup(daily: pl.DataFrame) -> None:
    feats = compute_features(daily).with_columns(pl.int_range(pl.len()).over("symbol").alias("_i"))
    for f in NON_NULLABLE:
        col = pl.col(f.name)
        missing = col.is_null() | col.is_nan()
        assert feats.filter((pl.col("_i") >= f.warmup) & missing).height == 0, f.name
        if f.warmup:  # the declared warm-up is tight: the bar before it is still missing
            assert feats.filter((pl.col("_i") == f.warmup - 1) & ~missing).height == 0, f.name


def test_symbols_computed_together_equal_each_alone(daily: pl.DataFrame) -> None:
    together = compute_features(daily)
    for sym in ("SPY", "AAPL", "IBM"):
        alone = compute_features(daily.filter(pl.col("symbol") == sym))
        assert together.filter(pl.col("symbol") == sym).equals(alone)
    # Input order must not matter either.
    assert compute_features(daily.sample(fraction=1.0, shuffle=True, seed=1)).equals(together)


def test_short_histories_are_missing_not_wrong() -> None:
    bars = _bars("daily", ["FOXA", "GOOAV", "SPY"])  # 2 and 5 bars
    feats = compute_features(bars)
    foxa = feats.filter(pl.col("symbol") == "FOXA")
    assert foxa.height == 2
    assert foxa["rsi_14"].null_count() == 2 and foxa["ret_1"].null_count() == 1
    spy = feats.filter(pl.col("symbol") == "SPY")
    assert spy.equals(compute_features(bars.filter(pl.col("symbol") == "SPY")))


# --- individual definitions ---------------------------------------------------------------


def _frame(closes, ts=None, **extra) -> pl.DataFrame:
    n = len(closes)
    ts = ts or [datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)] * n
    return pl.DataFrame(
        {
            "symbol": ["X"] * n,
            "bar_type": ["minute"] * n,
            "ts": ts,
            "open": closes,
            "high": closes,
            "low": closes,
            "close": closes,
            "volume": [100.0] * n,
            **extra,
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def test_calendar_spread_returns_and_passthrough_by_hand() -> None:
    ts = [
        datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc),  # Tue 09:30 EST
        datetime(2024, 7, 1, 13, 31, tzinfo=timezone.utc),  # Mon 09:31 EDT
        datetime(2024, 7, 6, 3, 0, tzinfo=timezone.utc),  # Fri 23:00 EDT (Sat in UTC)
    ]
    bars = _frame(
        [100.0, 110.0, 99.0],
        ts=ts,
        bid=[99.0, None, 98.0],
        ask=[101.0, None, 100.0],
        reddit_mentions=[3.0, None, 0.0],
        reddit_sentiment=[0.5, None, -0.2],
    )
    f = compute_features(bars)
    assert f["minute_of_day"].to_list() == [570.0, 571.0, 1380.0]
    assert f["day_of_week"].to_list() == [1.0, 0.0, 4.0]
    assert f["spread_bps"].to_list()[0] == pytest.approx(200.0)
    assert f["spread_bps"][1] is None
    assert f["ret_1"].to_list()[1:] == pytest.approx([np.log(1.1), np.log(0.9)])
    assert f["reddit_mentions"].to_list() == [3.0, None, 0.0]
    state = FeatureState("X")
    rows = [state.update(r) for r in bars.iter_rows(named=True)]
    assert [r["minute_of_day"] for r in rows] == [570.0, 571.0, 1380.0]
    assert [r["day_of_week"] for r in rows] == [1.0, 0.0, 4.0]
    assert rows[0]["spread_bps"] == pytest.approx(200.0) and np.isnan(rows[1]["spread_bps"])
    # Without the optional columns the features exist and are null.
    assert compute_features(bars.drop("bid", "ask", "reddit_mentions", "reddit_sentiment"))[
        "reddit_sentiment"
    ].null_count() == 3


def test_flat_prices_give_defined_features() -> None:
    n = 80
    ts = [datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc).replace(minute=0) for _ in range(n)]
    ts = [ts[0] + i * (datetime(2024, 1, 1, 0, 1) - datetime(2024, 1, 1, 0, 0)) for i in range(n)]
    f = compute_features(_frame([50.0] * n, ts=ts)).row(n - 1, named=True)
    assert f["bb_pct_b"] == 0.5 and f["bb_width"] == 0.0 and f["volume_z_20"] == 0.0
    assert f["rsi_14"] == 100.0 and f["rv_5"] == 0.0 and f["ret_15"] == 0.0


def test_realized_vol_is_population_std_of_log_returns(daily: pl.DataFrame) -> None:
    spy = daily.filter(pl.col("symbol") == "SPY").sort("ts")
    f = compute_features(spy)
    r = np.diff(np.log(spy["close"].to_numpy()))
    assert f["rv_15"][100] == pytest.approx(np.std(r[100 - 15 : 100], ddof=0), rel=1e-12)
    assert f["sma_20_ratio"][100] == pytest.approx(
        spy["close"][81:101].mean() / spy["close"][100] - 1.0, rel=1e-12
    )


# --- scaler ---------------------------------------------------------------------------------


def test_scaler_fits_on_training_rows_and_round_trips(daily: pl.DataFrame) -> None:
    feats = compute_features(daily)
    cut = datetime(2015, 1, 1, tzinfo=timezone.utc)
    train = feats.filter(pl.col("ts") < cut)
    cols = ["rsi_14", "ret_5", "volume_z_20", "reddit_mentions"]
    scaler = fit_scaler(train, cols)
    z = scaler.transform(train)
    assert z["rsi_14"].mean() == pytest.approx(0.0, abs=1e-9)
    assert z["rsi_14"].std(ddof=0) == pytest.approx(1.0, rel=1e-9)
    assert scaler.stds[cols.index("reddit_mentions")] == 1.0  # all null: no division by 0
    # Fitted on training rows only: differs from a fit that saw the test period.
    assert fit_scaler(feats, cols).means != scaler.means
    again = type(scaler).from_json(json.dumps(json.loads(scaler.to_json())))
    assert again == scaler and again.feature_set_version == FEATURE_SET_VERSION
    row = _stream_features(daily, "SPY").row(4000, named=True)
    assert scaler.transform_row(row)["rsi_14"] == pytest.approx((row["rsi_14"] - scaler.means[0]) / scaler.stds[0])
