"""`data.source: lean`: bars from any folder in Lean's equity layout (issue #17, item 6).

Every test builds its own tiny Lean folder in tmp_path (zips of Lean-format CSVs and a
factor file with a split): nothing here reads ../shared.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import uuid
import zipfile
from datetime import date, datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from awet_dagster.sources import available_sources, get_source
from awet_dagster.sources.errors import MissingCredentials, SourceError, SourceUnavailable
from awet_dagster.sources.lean_folder import LeanFolderSource
from awet_dagster.sources.settings import source_kwargs

REPO = Path(__file__).resolve().parents[1]
UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ms(hh: int, mm: int) -> int:
    return (hh * 60 + mm) * 60_000


def px(dollars: float) -> int:
    return round(dollars * 10_000)


def write_zip(path: Path, rows: list[str], member: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member or path.with_suffix(".csv").name, "\n".join(rows) + "\n")


def daily_row(day: str, o: float, h: float, lo: float, c: float, v: int) -> str:
    return f"{day} 00:00,{px(o)},{px(h)},{px(lo)},{px(c)},{v}"


def trade_row(t: int, o: float, h: float, lo: float, c: float, v: int) -> str:
    return f"{t},{px(o)},{px(h)},{px(lo)},{px(c)},{v}"


def quote_row(t: int, bid: float, ask: float) -> str:
    return f"{t},{px(bid)},{px(bid)},{px(bid)},{px(bid)},100,{px(ask)},{px(ask)},{px(ask)},{px(ask)},200"


def make_lean(root: Path) -> Path:
    """A Lean data folder (holding equity/usa) with:

    - daily SPY and IBM, 2021-03-11/12 (EST) and 2021-03-15 (EDT); IBM's 03-12 row is broken
      (high < low);
    - minute SPY 2013-10-07 (EDT, trades + quotes; the 15:59 trade has no quote, the 09:32
      quote no trade) and 2013-11-04 (EST, trades only, one post-market minute);
    - factor file of SPY with a 2:1 split after 2021-03-12; none for IBM.
    """
    eq = root / "equity" / "usa"
    write_zip(eq / "daily" / "spy.zip", [
        daily_row("20210311", 392.0, 395.0, 391.0, 393.5, 1000),
        daily_row("20210312", 392.5, 394.0, 390.0, 394.0, 1100),
        daily_row("20210315", 394.5, 396.5, 392.0, 396.0, 1200),
    ])
    write_zip(eq / "daily" / "ibm.zip", [
        daily_row("20210311", 125.0, 126.0, 124.0, 125.5, 500),
        daily_row("20210312", 125.5, 120.0, 127.0, 126.0, 600),  # high < low: rejected
        daily_row("20210315", 126.0, 128.0, 125.0, 127.0, 700),
    ])
    spy = eq / "minute" / "spy"
    write_zip(spy / "20131007_trade.zip", [
        trade_row(ms(9, 30), 169.0, 169.2, 168.9, 169.1, 5000),
        trade_row(ms(9, 31), 169.1, 169.3, 169.0, 169.2, 4000),
        trade_row(ms(15, 59), 168.0, 168.1, 167.9, 168.05, 9000),
    ], "20131007_spy_minute_trade.csv")
    write_zip(spy / "20131007_quote.zip", [
        quote_row(ms(9, 30), 169.09, 169.11),
        quote_row(ms(9, 31), 169.19, 169.21),
        quote_row(ms(9, 32), 169.29, 169.31),  # no trade in that minute: not a bar
    ], "20131007_spy_minute_quote.csv")
    write_zip(spy / "20131104_trade.zip", [
        trade_row(ms(9, 30), 176.0, 176.2, 175.9, 176.1, 3000),
        trade_row(ms(19, 59), 176.5, 176.5, 176.5, 176.5, 10),  # 00:59 UTC the next day
    ], "20131104_spy_minute_trade.csv")
    factors = eq / "factor_files"
    factors.mkdir(parents=True)
    (factors / "spy.csv").write_text("20210312,0.9,0.5,394\n20501231,1,1,0\n")
    return root


@pytest.fixture
def lean_root(tmp_path: Path) -> Path:
    return make_lean(tmp_path / "lean")


# ---------------------------------------------------------------- the source


def test_lean_is_registered_and_reads_daily_with_dst_and_prices(lean_root):
    assert "lean" in available_sources()
    src = get_source("lean", lean_root=str(lean_root))
    assert isinstance(src, LeanFolderSource) and src.name == "lean"
    bars = src.fetch(["spy"], date(2021, 3, 11), date(2021, 3, 15), "daily")
    # 09:30 New York: 14:30 UTC under EST, 13:30 UTC once DST started (2021-03-14).
    assert bars["ts"].to_list() == [utc(2021, 3, 11, 14, 30), utc(2021, 3, 12, 14, 30), utc(2021, 3, 15, 13, 30)]
    assert bars["close"].to_list() == [393.5, 394.0, 396.0]
    assert bars["volume"].to_list() == [1000.0, 1100.0, 1200.0]
    assert set(bars["source"]) == {"lean"} and set(bars["bar_type"]) == {"daily"}
    assert bars["bid"].null_count() == bars.height  # daily Lean files have no quotes


def test_daily_date_range_is_inclusive_exchange_dates(lean_root):
    src = LeanFolderSource(lean_root)
    one = src.fetch(["SPY"], date(2021, 3, 12), date(2021, 3, 12), "daily")
    assert one["ts"].to_list() == [utc(2021, 3, 12, 14, 30)]
    assert src.fetch(["SPY"], date(2021, 3, 13), date(2021, 3, 14), "daily").height == 0  # weekend


def test_factors_attached_from_the_factor_file(lean_root):
    bars = LeanFolderSource(lean_root).fetch(["SPY", "IBM"], date(2021, 3, 11), date(2021, 3, 15), "daily")
    spy = bars.filter(pl.col("symbol") == "SPY")
    # Rows dated on or before 20210312 take that row's factors (0.9 x 0.5), later ones 1, 1.
    assert spy["split_factor"].to_list() == [0.5, 0.5, 1.0]
    assert spy["adj_factor"].to_list() == pytest.approx([0.45, 0.45, 1.0])
    ibm = bars.filter(pl.col("symbol") == "IBM")  # no factor file: today's basis
    assert set(ibm["adj_factor"]) == {1.0} and set(ibm["split_factor"]) == {1.0}


def test_bad_rows_are_kept_out_logged_and_left_on_last_rejected(lean_root, caplog):
    src = LeanFolderSource(lean_root)
    with caplog.at_level(logging.WARNING, logger="awet.sources"):
        bars = src.fetch(["IBM"], date(2021, 3, 11), date(2021, 3, 15), "daily")
    assert bars["ts"].to_list() == [utc(2021, 3, 11, 14, 30), utc(2021, 3, 15, 13, 30)]
    assert src.last_rejected.height == 1
    assert "OHLC inconsistent" in src.last_rejected["reason"][0]
    assert "rejected 1 daily bar(s)" in caplog.text and "OHLC inconsistent" in caplog.text


def test_minute_bars_with_quotes_and_dst(lean_root):
    src = LeanFolderSource(lean_root)
    oct7 = src.fetch(["SPY"], date(2013, 10, 7), date(2013, 10, 7), "minute")
    # EDT: 09:30 New York = 13:30 UTC. Trades drive the rows: the 09:32 quote adds nothing.
    assert oct7["ts"].to_list() == [utc(2013, 10, 7, 13, 30), utc(2013, 10, 7, 13, 31), utc(2013, 10, 7, 19, 59)]
    assert oct7["bid"].to_list() == [169.09, 169.19, None]  # 15:59 has no quote
    assert oct7["ask"].to_list() == [169.11, 169.21, None]
    assert oct7["close"].to_list() == [169.1, 169.2, 168.05]
    assert set(oct7["source"]) == {"lean"} and set(oct7["bar_type"]) == {"minute"}
    assert set(oct7["split_factor"]) == {0.5}  # the SPY factor row 20210312 covers 2013
    nov4 = src.fetch(["SPY"], date(2013, 11, 4), date(2013, 11, 4), "minute")
    # EST: 09:30 = 14:30 UTC; 19:59 post-market is after midnight UTC but on its exchange date.
    assert nov4["ts"].to_list() == [utc(2013, 11, 4, 14, 30), utc(2013, 11, 5, 0, 59)]
    assert nov4["bid"].null_count() == 2  # a trade-only day keeps null bid/ask


def test_minute_datetimes_are_a_half_open_utc_interval(lean_root):
    src = LeanFolderSource(lean_root)
    bars = src.fetch(["SPY"], utc(2013, 10, 7, 13, 30), utc(2013, 10, 7, 13, 31), "minute")
    assert bars["ts"].to_list() == [utc(2013, 10, 7, 13, 30)]
    both = src.fetch(["SPY"], date(2013, 10, 1), date(2013, 11, 30), "minute")
    assert both.height == 5 and both["ts"].is_sorted()


def test_minute_reads_only_day_files_in_range(lean_root):
    src = LeanFolderSource(lean_root)
    bad = lean_root / "equity" / "usa" / "minute" / "spy" / "20131106_trade.zip"
    bad.write_bytes(b"not a zip")
    # The corrupt day is outside the range: never opened.
    assert src.fetch(["SPY"], date(2013, 10, 7), date(2013, 11, 5), "minute").height == 5
    with pytest.raises(SourceError, match="20131106_trade.zip"):
        src.fetch(["SPY"], date(2013, 11, 6), date(2013, 11, 6), "minute")


def test_a_file_that_does_not_parse_names_the_file(lean_root):
    write_zip(lean_root / "equity" / "usa" / "daily" / "bad.zip", ["20210311 00:00,x,1,1,1,1"])
    with pytest.raises(SourceError, match="bad.zip"):
        LeanFolderSource(lean_root).fetch(["BAD"], date(2021, 3, 11), date(2021, 3, 11), "daily")


def test_unknown_symbol_names_the_available_ones(lean_root):
    src = LeanFolderSource(lean_root)
    with pytest.raises(SourceUnavailable, match=r"\['NOPE'\].*available: \['IBM', 'SPY'\]"):
        src.fetch(["SPY", "NOPE"], date(2021, 3, 11), date(2021, 3, 15), "daily")
    with pytest.raises(SourceUnavailable, match=r"\['IBM'\].*available: \['SPY'\]"):  # IBM: daily only
        src.fetch(["IBM"], date(2013, 10, 7), date(2013, 10, 7), "minute")


def test_root_may_be_the_data_folder_or_equity_usa(lean_root):
    a = LeanFolderSource(lean_root)
    b = LeanFolderSource(lean_root / "equity" / "usa")
    assert a.root == b.root
    assert a.symbols("daily") == ("IBM", "SPY") and a.symbols("minute") == ("SPY",)
    assert a.date_range("daily") == (utc(2021, 3, 11, 14, 30), utc(2021, 3, 15, 13, 30))
    assert b.date_range("minute") == (utc(2013, 10, 7, 13, 30), utc(2013, 11, 5, 0, 59))


def test_missing_or_unset_root_names_data_lean_root(tmp_path):
    with pytest.raises(MissingCredentials, match=r"data\.lean_root"):
        LeanFolderSource(None)
    with pytest.raises(MissingCredentials, match=r"data\.lean_root"):
        get_source("lean")
    with pytest.raises(SourceUnavailable, match=r"data\.lean_root .*nope does not exist"):
        LeanFolderSource(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceUnavailable, match=r"data\.lean_root .*no equity/usa"):
        LeanFolderSource(tmp_path / "empty")


def test_config_selects_lean_with_its_root(lean_root, tmp_path, test_config_for):
    from resources.market_data import source_kwargs as resource_kwargs

    cfg = test_config_for(tmp_path / "home", AWET__DATA__SOURCE="lean", AWET__DATA__LEAN_ROOT=str(lean_root))
    assert cfg.data.source == "lean" and cfg.data.lean_root == str(lean_root)
    kwargs = source_kwargs(cfg.data.source, cfg)
    assert kwargs == {"lean_root": str(lean_root)}
    assert resource_kwargs is source_kwargs  # the Dagster resource uses the same function
    src = get_source(cfg.data.source, **kwargs)
    assert src.fetch(["SPY"], date(2021, 3, 15), date(2021, 3, 15), "daily")["close"].to_list() == [396.0]
    unset = test_config_for(tmp_path / "home", AWET__DATA__SOURCE="lean")
    with pytest.raises(MissingCredentials, match=r"data\.lean_root"):
        get_source("lean", **source_kwargs("lean", unset))


# ---------------------------------------------------------------- awet replay --source lean


def _cli_app():
    import typer

    from awet_cli.live_cmd import register

    app = typer.Typer()
    register(app)
    return app


def test_replay_help_lists_lean():
    from typer.testing import CliRunner

    result = CliRunner().invoke(_cli_app(), ["replay", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "lean" in result.output and "data.lean_root" in result.output


def test_replay_cli_reports_lean_config_errors_before_any_server(monkeypatch, tmp_path, lean_root):
    from typer.testing import CliRunner

    monkeypatch.setenv("AWET_ENV", "test")
    monkeypatch.setenv("AWET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AWET__DATA__LEAN_ROOT", raising=False)
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    args = ["replay", "--source", "lean", "--bar-type", "daily", "--symbols", "NOPE",
            "--start", "2021-03-11", "--end", "2021-03-15"]
    unset = CliRunner().invoke(_cli_app(), args, env={"COLUMNS": "200"})
    assert unset.exit_code == 2 and "data.lean_root" in unset.output, unset.output
    monkeypatch.setenv("AWET__DATA__LEAN_ROOT", str(lean_root))
    unknown = CliRunner().invoke(_cli_app(), args, env={"COLUMNS": "200"})
    assert unknown.exit_code == 2 and "available: ['IBM', 'SPY']" in unknown.output, unknown.output


@pytest.mark.timeout(120)
def test_replay_cli_publishes_lean_bars(monkeypatch, make_topic, database_url, kafka_bootstrap, tmp_path, lean_root):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from typer.testing import CliRunner

    from awet_dagster.contracts import MarketRawEvent

    topic = make_topic()
    for k, v in {"AWET_ENV": "test", "AWET_HOME": str(tmp_path / "home"), "DATABASE_URL": database_url,
                 "KAFKA_BOOTSTRAP": kafka_bootstrap, "AWET__DATA__LEAN_ROOT": str(lean_root)}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    result = CliRunner().invoke(_cli_app(), ["replay", "--source", "lean", "--bar-type", "daily", "--symbols",
                                             "SPY", "--start", "2021-03-11", "--end", "2021-03-15",
                                             "--speed", "0", "--max-seconds", "60", "--topic", topic])
    assert result.exit_code == 0, result.output
    assert "published 3/3" in result.output
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    events = []
    try:
        import time

        deadline = time.monotonic() + 30
        while len(events) < 3 and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                events.append(MarketRawEvent.model_validate_json(m.value()))
    finally:
        c.close()
    # A Lean folder is a "stub" feed, and a replay says so.
    assert [(e.ts, e.close, e.source, e.replay, e.split_factor) for e in events] == [
        (utc(2021, 3, 11, 14, 30), 393.5, "stub", True, 0.5),
        (utc(2021, 3, 12, 14, 30), 394.0, "stub", True, 0.5),
        (utc(2021, 3, 15, 13, 30), 396.0, "stub", True, 1.0),
    ]


# ---------------------------------------------------------------- Dagster backfill


def make_full_day(root: Path, symbol: str, day: str) -> Path:
    """Every regular minute (390) plus one pre- and one post-market minute, with quotes."""
    minutes = [ms(4, 0), *(ms(9, 30) + i * 60_000 for i in range(390)), ms(19, 59)]
    trades, quotes = [], []
    for i, t in enumerate(minutes):
        p = 50.0 + (i % 7) * 0.01
        trades.append(trade_row(t, p, p + 0.02, p - 0.02, p + 0.01, 100 + i))
        quotes.append(quote_row(t, p, p + 0.02))
    folder = root / "equity" / "usa" / "minute" / symbol.lower()
    write_zip(folder / f"{day}_trade.zip", trades)
    write_zip(folder / f"{day}_quote.zip", quotes)
    return root


def test_minute_raw_bars_backfill_from_a_lean_folder(monkeypatch, database_url, kafka_bootstrap, tmp_path):
    from dagster import AssetKey, DagsterInstance, materialize

    from awet_dagster.config import load_config

    from assets.market_data import build_raw_bars
    from awet_dagster.storage.db import connect
    from resources.database import DatabaseResource
    from resources.settings import SettingsResource
    from resources.market_data import MarketDataResource

    symbol = "LEANX"
    root = make_full_day(tmp_path / "lean", symbol, "20131104")
    for k, v in {"AWET_ENV": "test", "AWET_HOME": str(tmp_path / "home"), "DATABASE_URL": database_url,
                 "KAFKA_BOOTSTRAP": kafka_bootstrap, "AWET__DATA__SOURCE": "lean",
                 "AWET__DATA__LEAN_ROOT": str(root), "AWET__DATA__MINUTE_SYMBOLS": f"[{symbol}]"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("VAULT_ADDR", raising=False)

    def clear() -> None:
        with connect(database_url) as conn:
            for table in ("bars", "rejected_bars", "bar_gaps"):
                conn.execute(f"DELETE FROM {table} WHERE symbol = %s", (symbol,))

    clear()
    try:
        result = materialize(
            [build_raw_bars("minute", load_config())],
            resources={"database": DatabaseResource(), "settings": SettingsResource(), "market_data": MarketDataResource()},
            partition_key=f"2013-11-04|{symbol}",
            instance=DagsterInstance.ephemeral(),
            selection=[AssetKey(["minute", "raw_bars"])],
        )
        assert result.success
        checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks and all(checks.values()), checks
        with connect(database_url) as conn:
            n, first, last, sources, no_bid = conn.execute(
                "SELECT count(*), min(ts), max(ts), array_agg(DISTINCT source), count(*) FILTER (WHERE bid IS NULL) "
                "FROM bars WHERE bar_type = 'minute' AND symbol = %s", (symbol,)
            ).fetchone()
    finally:
        clear()
    assert n == 392 and sources == ["stub"] and no_bid == 0  # stored under the design's feed name
    # EST (UTC-5): 04:00 New York = 09:00 UTC; 19:59 = 00:59 UTC the next day, same partition.
    assert first == utc(2013, 11, 4, 9, 0) and last == utc(2013, 11, 5, 0, 59)


# ---------------------------------------------------------------- the sample builder


def _builder():
    spec = importlib.util.spec_from_file_location("build_sample", REPO / "scripts" / "build_sample.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_sample"] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def test_sample_builder_defaults_are_the_shipped_spec():
    build_sample = _builder()
    lean_dir, out, spec = build_sample.parse_args([])
    assert spec == build_sample.SampleSpec()
    assert (spec.daily_first_year, spec.daily_last_year) == (1998, 2021)
    assert spec.minute_symbols == ("SPY", "IBM", "BAC", "AIG")
    assert (spec.minute_first_day, spec.minute_last_day) == (date(2013, 10, 4), date(2013, 10, 10))
    assert out == build_sample.DEFAULT_OUT_DIR and lean_dir == build_sample.DEFAULT_LEAN_DIR


def test_sample_builder_takes_its_days_from_arguments(lean_root, tmp_path, capsys):
    build_sample = _builder()
    out = tmp_path / "sample"
    assert build_sample.main([str(lean_root), "--out", str(out), "--daily-first-year", "2021",
                              "--daily-last-year", "2021", "--minute-symbols", "spy",
                              "--minute-first-day", "2013-11-04", "--minute-last-day", "2013-11-04"]) == 0
    minute = pl.read_parquet(out / "minute.parquet")
    days = minute["ts"].dt.convert_time_zone("America/New_York").dt.date().unique().to_list()
    assert days == [date(2013, 11, 4)] and minute.height == 2
    daily = pl.read_parquet(out / "daily.parquet")
    assert daily.height == 5  # SPY x 3 + IBM x 2 (its broken row is rejected and listed)
    assert set(daily["source"]) == set(minute["source"]) == {"sample"}
    assert "adj_factor" not in daily.columns  # raw bars: SampleSource attaches factors when read
    provenance = (out / "PROVENANCE.md").read_text()
    assert "2013-11-04..2013-11-04" in provenance and "daily: 1 row(s) rejected: OHLC inconsistent" in provenance
    # Another window from the same folder: only those days.
    build_sample.main([str(lean_root), "--out", str(out), "--minute-first-day", "2013-10-07",
                       "--minute-last-day", "2013-10-07", "--minute-symbols", "SPY"])
    minute = pl.read_parquet(out / "minute.parquet")
    assert minute["ts"].min() == utc(2013, 10, 7, 13, 30) and minute.height == 3
