"""Bar contract, offline sample, DST conversion, synthetic generator, sample builder."""
from __future__ import annotations

import subprocess
import sys
from datetime import date, datetime, time, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from awet_dagster.sources import get_source
from awet_dagster.sources.errors import SchemaError, SourceUnavailable, UnknownSource
from awet_dagster.sources.exchange_time import exchange_ms_to_utc, session_open_utc, to_utc_bounds
from awet_dagster.sources.lean import attach_quotes, parse_daily, parse_minute_quotes, parse_minute_trades
from awet_dagster.sources.sample import SampleSource
from awet_dagster.sources.schema import BAR_SCHEMA, ensure_schema, validate_bars
from awet_dagster.sources.synthetic import SyntheticSource, generate_bars, session_timestamps

REPO = Path(__file__).resolve().parents[1]
LEAN_DIR = REPO.parent / "shared" / "market-data" / "lean"
LEAN_SLICE = REPO / "tests" / "data" / "lean"  # a slice of the same bars, in the repo
SAMPLE_DIR = REPO / "awet_dagster" / "data" / "sample"
UTC = timezone.utc
NY = ZoneInfo("America/New_York")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def bar(**over) -> dict:
    row = {"symbol": "SPY", "bar_type": "minute", "ts": utc(2013, 10, 4, 13, 30), "open": 10.0,
           "high": 11.0, "low": 9.0, "close": 10.5, "volume": 100.0, "bid": 10.4, "ask": 10.6,
           "source": "test"}
    row.update(over)
    return row


def frame(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=BAR_SCHEMA)


# ---------------------------------------------------------------- DST / exchange time

def convert(day: date, hh: int, mm: int) -> datetime:
    df = pl.DataFrame({"day": [day], "ms": [(hh * 60 + mm) * 60_000]})
    return df.select(exchange_ms_to_utc(pl.col("day"), pl.col("ms")))[0, 0]


@pytest.mark.parametrize(
    ("day", "expected_hour"),
    [
        (date(2013, 3, 8), 14),  # Friday before the spring change: EST, UTC-5
        (date(2013, 3, 11), 13),  # Monday after 2013-03-10: EDT, UTC-4
        (date(2013, 11, 1), 13),  # Friday before the autumn change: EDT
        (date(2013, 11, 4), 14),  # Monday after 2013-11-03: EST
    ],
)
def test_open_minute_maps_to_right_utc_instant_around_dst(day, expected_hour):
    assert convert(day, 9, 30) == utc(day.year, day.month, day.day, expected_hour, 30)
    # Daily bars use the same 09:30 open.
    got = pl.select(session_open_utc(pl.lit(day, dtype=pl.Date)))[0, 0]
    assert got == utc(day.year, day.month, day.day, expected_hour, 30)


@pytest.mark.parametrize("day", [date(2013, 3, 10), date(2013, 11, 3)])
def test_conversion_matches_zoneinfo_on_the_change_days_themselves(day):
    # Every minute from 04:00 to 19:59 (Lean's extended session) on the DST Sunday.
    for minute in range(4 * 60, 20 * 60, 7):
        hh, mm = divmod(minute, 60)
        expected = datetime.combine(day, time(hh, mm), tzinfo=NY).astimezone(UTC)
        assert convert(day, hh, mm) == expected


def test_lean_minute_rows_convert_across_dst():
    trade = "34200000,1000000,1010000,990000,1005000,500\n57540000,1000000,1000000,1000000,1000000,1\n"
    summer = parse_minute_trades(trade, "spy", date(2013, 3, 11))
    winter = parse_minute_trades(trade, "spy", date(2013, 3, 8))
    assert summer["ts"].to_list() == [utc(2013, 3, 11, 13, 30), utc(2013, 3, 11, 19, 59)]
    assert winter["ts"].to_list() == [utc(2013, 3, 8, 14, 30), utc(2013, 3, 8, 20, 59)]
    assert summer["open"][0] == 100.0 and summer["symbol"][0] == "SPY"


def test_lean_daily_bars_around_both_dst_changes():
    daily = parse_daily(
        "20130308 00:00,1500000,1510000,1490000,1505000,10\n"
        "20130311 00:00,1500000,1510000,1490000,1505000,10\n"
        "20131101 00:00,1500000,1510000,1490000,1505000,10\n"
        "20131104 00:00,1500000,1510000,1490000,1505000,10",  # no trailing newline, like Lean
        "spy",
    )
    assert daily["ts"].to_list() == [
        utc(2013, 3, 8, 14, 30), utc(2013, 3, 11, 13, 30), utc(2013, 11, 1, 13, 30), utc(2013, 11, 4, 14, 30)
    ]
    assert daily["close"].to_list() == [150.5] * 4
    assert daily["bar_type"].unique().to_list() == ["daily"]


def test_quotes_join_on_minute_and_missing_quotes_stay_null():
    day = date(2013, 10, 7)
    trades = parse_minute_trades("34200000,10000,10000,10000,10000,1\n34260000,10000,10000,10000,10000,1\n", "x", day)
    quotes = parse_minute_quotes(
        "34200000,9000,9000,9000,9900,5,11000,11000,11000,10100,5\n"
        "34320000,9000,9000,9000,9800,5,11000,11000,11000,10200,5\n",  # a minute with no trade
        day,
    )
    joined = attach_quotes(trades, quotes)
    assert joined.height == 2  # the quote-only minute is not invented as a bar
    assert joined["bid"].to_list() == [0.99, None]
    assert joined["ask"].to_list() == [1.01, None]


def test_to_utc_bounds_dates_are_inclusive_exchange_days_and_naive_is_refused():
    lo, hi = to_utc_bounds(date(2013, 11, 4), date(2013, 11, 4))
    assert (lo, hi) == (utc(2013, 11, 4, 5), utc(2013, 11, 5, 5))
    with pytest.raises(ValueError, match="naive"):
        to_utc_bounds(datetime(2013, 1, 1), date(2013, 1, 2))
    with pytest.raises(ValueError, match="empty range"):
        to_utc_bounds(date(2013, 1, 2), date(2013, 1, 1))


# ---------------------------------------------------------------- schema / validation

@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({"low": 10.6}, "OHLC inconsistent"),  # low above open
        ({"high": 10.2}, "OHLC inconsistent"),  # high below close
        ({"open": 0.0, "low": 0.0}, "price <= 0"),
        ({"close": -1.0, "low": -1.0}, "price <= 0"),
        ({"volume": -5.0}, "volume < 0"),
        ({"close": None}, "null/NaN price"),
        ({"open": float("nan")}, "null/NaN price"),
        ({"volume": None}, "null/NaN volume"),
        ({"bar_type": "hourly"}, "unknown bar_type"),
        ({"ts": None}, "null ts"),
        ({"bid": 0.0}, "bid/ask <= 0"),
    ],
)
def test_validate_rejects_each_bad_kind_with_reason_and_keeps_good(bad, reason):
    good_row = bar(ts=utc(2013, 10, 4, 13, 31))
    good, rejected = validate_bars(frame(bar(**bad), good_row))
    assert good.height == 1 and good["ts"][0] == good_row["ts"]
    assert rejected.height == 1
    assert reason in rejected["reason"][0]
    assert good.schema == BAR_SCHEMA


def test_validate_rejects_later_duplicates_but_keeps_first_sound_copy():
    first = bar(close=10.5)
    broken_first = bar(low=99.0)  # fails OHLC: must not shadow the sound copy after it
    good, rejected = validate_bars(frame(broken_first, first, bar(close=10.7)))
    assert good.height == 1 and good["close"][0] == 10.5
    reasons = sorted(rejected["reason"].to_list())
    assert any("OHLC" in r for r in reasons) and any("duplicate" in r for r in reasons)


def test_validate_rejects_every_row_of_a_non_utc_frame():
    df = frame(bar(), bar(ts=utc(2013, 10, 4, 13, 31))).with_columns(
        pl.col("ts").dt.convert_time_zone("America/New_York")
    )
    good, rejected = validate_bars(df)
    assert good.height == 0 and rejected.height == 2
    assert rejected["reason"].str.contains("not UTC").all()


def test_validate_joins_several_reasons():
    _, rejected = validate_bars(frame(bar(volume=-1.0, low=10.9)))
    assert rejected["reason"][0].count(";") == 1


def test_ensure_schema_orders_casts_and_names_problems():
    df = pl.DataFrame(
        {"source": ["x"], "close": [2], "open": [1], "high": [3], "low": [1], "volume": [10],
         "ts": [utc(2020, 1, 2, 14, 30)], "bar_type": ["daily"], "symbol": ["A"], "extra": [1]}
    )
    out = ensure_schema(df)
    assert out.schema == BAR_SCHEMA  # int prices -> Float64, bid/ask added as nulls, extra dropped
    assert out["bid"].null_count() == 1
    with pytest.raises(SchemaError, match="'close'"):
        ensure_schema(df.drop("close"))
    with pytest.raises(SchemaError, match="'ts'"):
        ensure_schema(df.with_columns(pl.col("ts").dt.replace_time_zone(None)))
    with pytest.raises(SchemaError, match="'volume'"):
        ensure_schema(df.with_columns(pl.lit("lots").alias("volume")))


# ---------------------------------------------------------------- sample source

def test_sample_returns_valid_utc_frames_for_all_symbols():
    src = get_source("sample")
    for timeframe in ("daily", "minute"):
        symbols = src.symbols(timeframe)
        first, last = src.date_range(timeframe)
        df = src.fetch(symbols, first.date(), last.date(), timeframe)
        assert df.schema == BAR_SCHEMA
        assert set(df["symbol"].unique()) == set(symbols)
        good, rejected = validate_bars(df)
        assert rejected.height == 0 and good.height == df.height
        assert (df["bar_type"] == timeframe).all()
    assert {"SPY", "AAPL", "IBM", "BAC", "AIG", "QQQ"} <= set(src.symbols("daily"))
    assert src.symbols("minute") == ("AIG", "BAC", "IBM", "SPY")


def test_sample_daily_ts_is_session_open_and_minutes_include_extended_hours():
    src = SampleSource()
    daily = src.fetch(["spy"], date(2013, 11, 1), date(2013, 11, 4), "daily")
    assert daily["ts"].to_list() == [utc(2013, 11, 1, 13, 30), utc(2013, 11, 4, 14, 30)]
    assert daily["close"].to_list() == [176.14, 176.86]  # Lean rows 20131101, 20131104: close x10000
    minute = src.fetch(["SPY"], date(2013, 10, 7), date(2013, 10, 7), "minute")
    local = minute["ts"].dt.convert_time_zone("America/New_York").dt.time()
    assert local.min() < time(9, 30) and local.max() >= time(16, 0)
    assert minute.filter(pl.col("ts") == utc(2013, 10, 7, 13, 30))["bid"].is_not_null().all()


def test_sample_filters_by_half_open_datetime_range_and_refuses_unknown_symbols():
    src = SampleSource()
    df = src.fetch(["IBM"], utc(2013, 10, 7, 13, 30), utc(2013, 10, 7, 13, 35), "minute")
    assert df["ts"].min() >= utc(2013, 10, 7, 13, 30) and df["ts"].max() < utc(2013, 10, 7, 13, 35)
    assert 1 <= df.height <= 5
    with pytest.raises(SourceUnavailable, match="TSLA"):
        src.fetch(["TSLA"], date(2013, 10, 7), date(2013, 10, 7), "minute")
    with pytest.raises(ValueError, match="timeframe"):
        src.fetch(["IBM"], date(2013, 10, 7), date(2013, 10, 7), "hourly")


def test_sample_ranges_report_rows_and_bounds():
    ranges = SampleSource().ranges("minute")
    assert ranges["SPY"].first.date() == date(2013, 10, 4)
    assert ranges["SPY"].last.astimezone(NY).date() == date(2013, 10, 10)
    assert sum(r.rows for r in ranges.values()) == pl.read_parquet(SAMPLE_DIR / "minute.parquet").height


def test_unknown_source_names_the_choices():
    with pytest.raises(UnknownSource, match="sample"):
        get_source("bloomberg")


def test_shipped_sample_is_small():
    total = sum(p.stat().st_size for p in SAMPLE_DIR.glob("*.parquet"))
    assert 0 < total < 5_000_000


def _build_sample(lean_dir: Path, out: Path, *args: str) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "build_sample.py"), str(lean_dir), "--out", str(out),
                           *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sample_builder_on_the_lean_slice_gives_the_shipped_rows(tmp_path):
    """The slice of Lean's real bars under tests/data (AAPL daily, one SPY minute session):
    the builder is deterministic and gives exactly the shipped sample's rows for them."""
    args = ("--minute-symbols", "SPY", "--minute-first-day", "2013-10-07", "--minute-last-day", "2013-10-07")
    for out in (tmp_path / "a", tmp_path / "b"):
        _build_sample(LEAN_SLICE, out, *args)
    for name, symbol, when in (("daily.parquet", "AAPL", None), ("minute.parquet", "SPY", date(2013, 10, 7))):
        a, b = pl.read_parquet(tmp_path / "a" / name), pl.read_parquet(tmp_path / "b" / name)
        shipped = pl.read_parquet(SAMPLE_DIR / name).filter(pl.col("symbol") == symbol)
        if when is not None:
            shipped = shipped.filter(pl.col("ts").dt.convert_time_zone("America/New_York").dt.date() == when)
        assert a.equals(b) and a.height > 300 and a.equals(shipped), name
    assert (tmp_path / "a" / "PROVENANCE.md").read_text() == (tmp_path / "b" / "PROVENANCE.md").read_text()
    assert sorted(p.name for p in (tmp_path / "a" / "factor_files").iterdir()) == ["aapl.csv", "spy.csv"]


def test_sample_builder_on_the_whole_lean_folder_matches_shipped_files(tmp_path):
    """Where ../shared is beside the checkout: the full build equals the shipped files."""
    if not (LEAN_DIR / "equity" / "usa").is_dir():
        return  # the slice test above covers a clone without it; this is the full rebuild check
    _build_sample(LEAN_DIR, tmp_path / "full")
    for name in ("daily.parquet", "minute.parquet"):
        assert pl.read_parquet(tmp_path / "full" / name).equals(pl.read_parquet(SAMPLE_DIR / name)), name
    assert (tmp_path / "full" / "PROVENANCE.md").read_text() == (SAMPLE_DIR / "PROVENANCE.md").read_text()
    for f in (SAMPLE_DIR / "factor_files").iterdir():
        assert (tmp_path / "full" / "factor_files" / f.name).read_bytes() == f.read_bytes()


# ---------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_valid():
    a = SyntheticSource(seed=7).fetch(["AAA", "BBB"], date(2013, 11, 1), date(2013, 11, 5), "minute")
    b = SyntheticSource(seed=7).fetch(["AAA", "BBB"], date(2013, 11, 1), date(2013, 11, 5), "minute")
    c = SyntheticSource(seed=8).fetch(["AAA", "BBB"], date(2013, 11, 1), date(2013, 11, 5), "minute")
    assert a.equals(b) and not a.equals(c)
    good, rejected = validate_bars(a)
    assert rejected.height == 0 and good.height == 2 * 3 * 390  # 3 sessions x 390 minutes
    assert (a["bid"] < a["ask"]).all()
    # A symbol's path does not depend on which other symbols are asked for.
    alone = SyntheticSource(seed=7).fetch(["AAA"], date(2013, 11, 1), date(2013, 11, 5), "minute")
    assert alone.equals(a.filter(pl.col("symbol") == "AAA"))


def test_synthetic_sessions_follow_the_exchange_calendar():
    minutes = session_timestamps(date(2013, 11, 29), date(2013, 11, 29), "minute")  # early close
    assert minutes.min() == utc(2013, 11, 29, 14, 30) and minutes.max() == utc(2013, 11, 29, 17, 59)
    days = session_timestamps(date(2013, 3, 8), date(2013, 3, 12), "daily")
    assert days.to_list() == [utc(2013, 3, 8, 14, 30), utc(2013, 3, 11, 13, 30), utc(2013, 3, 12, 13, 30)]
    assert session_timestamps(date(2013, 12, 25), date(2013, 12, 25), "daily").len() == 0


def test_synthetic_million_bars_are_valid_and_volatility_clusters():
    import numpy as np

    ts = pl.Series(np.arange(1_000_000, dtype=np.int64) * 60_000_000).cast(pl.Datetime("us", "UTC"))
    df = generate_bars(["X"], ts, "minute", seed=1)  # its speed is measured in benchmarks/, not here
    _, rejected = validate_bars(df)
    assert rejected.height == 0
    r = np.diff(np.log(df["close"].to_numpy()))
    abs_r = np.abs(r)
    # GARCH clustering: |returns| autocorrelate while returns themselves barely do.
    assert np.corrcoef(abs_r[:-1], abs_r[1:])[0, 1] > 0.1
    assert abs(np.corrcoef(r[:-1], r[1:])[0, 1]) < 0.05
