"""Corporate actions (issue #17 item 9): research on split/dividend-adjusted prices, trading in
raw prices with positions carried through a split.

The shipped sample is Lean's raw prices plus the sample symbols' Lean factor files; AAPL split
7:1 on 2014-06-09 and 4:1 on 2020-08-31, which the raw series shows as -86% and -74% days.
"""
from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import polars as pl
import pytest

from awet_dagster.config import load_config
from awet_dagster.execution.orders import OrderRequest
from awet_dagster.execution.simulator import PaperSimulator
from awet_dagster.exits.monitor import ExitMonitor
from awet_dagster.features import compute_features
from awet_dagster.risk.portfolio import Fill, Portfolio
from awet_dagster.sources.corporate_actions import (
    FactorFile,
    SplitWatch,
    adjusted_bar,
    adjusted_frame,
    split_ratio,
)
from awet_dagster.sources.errors import SchemaError
from awet_dagster.sources.sample import SampleSource
from awet_dagster.sources.schema import ensure_schema, validate_bars
from awet_dagster.storage.bars import copy_upsert_bars, read_bars
from awet_dagster.storage.db import connect
from awet_dagster.execution.ledger import FillLedger

SPLIT_2020 = date(2020, 8, 31)
SPLIT_2014 = date(2014, 6, 9)


def _returns(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("symbol", "ts").with_columns(
        (pl.col("close") / pl.col("close").shift(1).over("symbol") - 1).alias("ret"),
        (pl.col("split_factor") != pl.col("split_factor").shift(1).over("symbol")).alias("split_day"),
    ).drop_nulls("ret")


@pytest.fixture(scope="module")
def aapl() -> pl.DataFrame:
    return SampleSource().fetch(["AAPL"], date(2013, 1, 1), date(2021, 3, 31), "daily")


def test_factor_file_lookup_and_ratio():
    text = "20140606,0.9,0.142857,645.57\n20200828,0.99,0.25,499.23\n20501231,1,1,0\n"
    f = FactorFile.parse(text, "aapl.csv")
    assert f.factors(date(2014, 6, 6)) == pytest.approx((0.9 * 0.142857, 0.142857))
    assert f.factors(date(2014, 6, 9)) == pytest.approx((0.99 * 0.25, 0.25))
    assert f.factors(date(2020, 8, 31)) == (1.0, 1.0)
    assert split_ratio(0.25, 1.0) == pytest.approx(4.0)
    assert split_ratio(1.0, 1.0) is None and split_ratio(None, 1.0) is None
    with pytest.raises(ValueError, match="line 1"):
        FactorFile.parse("2014-06-06,x,1\n", "bad.csv")


def test_sample_carries_the_factors_and_the_splits_are_where_lean_says(aapl):
    r = _returns(aapl)
    splits = r.filter(pl.col("split_day"))
    days = {ts.date(): ratio for ts, ratio in zip(
        splits["ts"], (splits["split_factor"] / r.filter(pl.col("split_day"))["split_factor"]).to_list(), strict=True)}
    assert set(days) == {SPLIT_2014, SPLIT_2020}
    by_day = {ts.date(): sf for ts, sf in zip(aapl["ts"], aapl["split_factor"], strict=True)}
    assert split_ratio(by_day[date(2020, 8, 28)], by_day[SPLIT_2020]) == pytest.approx(4.0)
    assert split_ratio(by_day[date(2014, 6, 6)], by_day[SPLIT_2014]) == pytest.approx(7.0, rel=1e-4)
    # raw prices are what a broker traded: the split days look like crashes
    raw_split_rets = r.filter(pl.col("split_day"))["ret"].to_list()
    assert all(x < -0.7 for x in raw_split_rets), raw_split_rets


def test_adjusted_sample_has_no_split_crash():
    """No daily return below -50% in the adjusted sample over the configured research symbols
    and range (real crashes older than that exist: AAPL 2000-09-29 -52%, AIG and WaMu in 2008,
    which is why the check is on the configured window, not on 1998-2021)."""
    cfg = load_config()
    src = SampleSource()
    bars = src.fetch(list(cfg.data.symbols), date.fromisoformat(cfg.data.start), date.fromisoformat(cfg.data.end),
                     "daily")
    raw, adj = _returns(bars), _returns(adjusted_frame(bars))
    assert raw["ret"].min() < -0.5  # the raw series does crash (AAPL's splits)
    worst = adj.sort("ret").head(3).select("symbol", "ts", "ret")
    assert adj["ret"].min() > -0.5, worst
    # and every day a split factor changed is an ordinary day once adjusted
    split_days = _returns(bars).filter(pl.col("split_day")).select("symbol", "ts")
    moves = adj.join(split_days, on=["symbol", "ts"])["ret"].abs()
    assert moves.len() >= 2 and moves.max() < 0.1, moves


def test_adjusting_is_idempotent_and_schema_defaults(aapl):
    once = adjusted_frame(aapl)
    assert once.equals(adjusted_frame(once))
    bar = aapl.row(0, named=True)
    assert adjusted_bar(adjusted_bar(bar)) == adjusted_bar(bar)
    no_factors = aapl.drop("adj_factor", "split_factor")
    shaped = ensure_schema(no_factors)
    assert shaped["adj_factor"].unique().to_list() == [1.0] and shaped["split_factor"].unique().to_list() == [1.0]
    bad = aapl.head(3).with_columns(pl.Series("split_factor", [1.0, 0.0, float("nan")]))
    good, rejected = validate_bars(bad)
    assert good.height == 1 and rejected["reason"].to_list() == ["adj_factor/split_factor <= 0 or NaN"] * 2
    with pytest.raises(SchemaError):
        ensure_schema(aapl.with_columns(pl.lit("x").alias("adj_factor")))


def test_features_see_no_split(aapl):
    feats = compute_features(aapl).filter(pl.col("ts").dt.date() == SPLIT_2020)
    ret_cols = [c for c in feats.columns if c.startswith("ret_")]
    assert ret_cols
    for c in ret_cols:
        assert abs(feats[c][0]) < 0.2, (c, feats[c][0])


def test_position_held_through_the_2020_split_keeps_its_value(aapl):
    """Paper simulator, portfolio, exit monitor and the live ledger through AAPL's 4:1 split:
    100 shares become 400 at a quarter of the price, the value and cost carry over, and no
    stop loss fires on the raw -74% day."""
    window = aapl.filter(pl.col("ts").dt.date().is_between(date(2020, 8, 26), date(2020, 9, 2)))
    sim = PaperSimulator(slippage_bps=0.0, fee_per_order=0.0, max_participation=1.0)
    pf, ledger = Portfolio(100_000.0), FillLedger(100_000.0)
    cfg = load_config()
    # Wide limits: only an unadjusted split (a -74% "loss") can fire them.
    monitor = ExitMonitor(cfg.exits.model_copy(update={"max_hold_bars_daily": 100, "stop_loss_pct": 0.2,
                                                       "trailing_stop_pct": 0.2, "take_profit_pct": 0.5}))
    first = window.row(0, named=True)
    sim.submit(OrderRequest("aapl-entry", "corr-1", "AAPL", "buy", 100.0, "entry", "e1", first["ts"], first["close"]))
    watch, values, exits = SplitWatch(), {}, []
    for bar in window.iter_rows(named=True):
        ratio = watch.observe("AAPL", bar["split_factor"])
        if ratio is not None:
            pf.apply_split("AAPL", ratio)
        ledger.on_split_factor("AAPL", bar["split_factor"], bar["ts"])
        for fill in sim.on_bar(bar):
            pf.apply_fill(fill)
            ledger._pending.append(fill)
        ledger.apply_until(bar["ts"], "AAPL")
        pf.mark("AAPL", bar["close"])
        ledger.portfolio.mark("AAPL", bar["close"])
        exits += monitor.on_bar(bar, pf)
        values[bar["ts"].date()] = pf.position("AAPL").market_value if pf.position("AAPL") else 0.0
    assert exits == []
    for book in (pf, ledger.portfolio):
        pos = book.position("AAPL")
        assert pos.qty == pytest.approx(400.0)
        cost_basis = 100 * window.row(1, named=True)["open"]
        assert pos.qty * pos.avg_price == pytest.approx(cost_basis)
    assert sim.list_positions()[0].qty == pytest.approx(400.0)
    assert sim.splits and sim.splits[0][2] == pytest.approx(4.0)
    before, after = values[date(2020, 8, 28)], values[SPLIT_2020]
    # value moves with the market (+3.4% that day), not by the split ratio
    assert after / before == pytest.approx(4 * 129.04 / 499.23, rel=1e-9)
    assert 0.9 < after / before < 1.1


def test_ledger_books_old_basis_fills_before_the_split_and_scales_working_orders():
    ledger = FillLedger(100_000.0)
    t0, t1 = datetime(2020, 8, 28, 13, 30, tzinfo=UTC), datetime(2020, 8, 31, 13, 30, tzinfo=UTC)
    ledger.on_split_factor("AAPL", 0.25, t0)
    ledger.expect("e2", "AAPL", t0, "entry", "c2", qty=10.0, price=500.0, side="buy")
    ledger._pending.append(Fill("e1", "AAPL", "buy", 10.0, 500.0, 0.0, t0, "c1", "entry"))
    assert ledger.pending_exposure() == {"AAPL": pytest.approx(5000.0)}
    assert ledger.on_split_factor("AAPL", 1.0, t1) == pytest.approx(4.0)
    pos = ledger.portfolio.position("AAPL")
    assert pos.qty == pytest.approx(40.0) and pos.avg_price == pytest.approx(125.0)
    assert ledger.outstanding["e2"].qty == pytest.approx(40.0)
    assert ledger.pending_exposure() == {"AAPL": pytest.approx(5000.0)}  # dollars unchanged
    assert ledger.on_split_factor("AAPL", 1.0, t1) is None  # once


@pytest.mark.timeout(120)
def test_bars_table_keeps_raw_prices_and_factors(database_url, aapl):
    bars = aapl.filter(pl.col("ts").dt.date().is_between(date(2020, 8, 27), date(2020, 9, 1))).with_columns(
        pl.lit(f"T{uuid.uuid4().hex[:8].upper()}").alias("symbol"))
    symbol = bars["symbol"][0]
    with connect(database_url) as conn:
        with conn.transaction():
            copy_upsert_bars(conn, bars)
        with conn.transaction():
            copy_upsert_bars(conn, bars)  # the upsert path (rows exist)
        back = read_bars(conn, [symbol], "daily")
        conn.execute("DELETE FROM bars WHERE symbol = %s", (symbol,))
    assert back.select("ts", "close", "adj_factor", "split_factor").equals(
        bars.select("ts", "close", "adj_factor", "split_factor"))
    assert back["split_factor"].to_list() == [0.25, 0.25, 1.0, 1.0]
    # Stored under the design's feed name: the offline sample is "stub" (ck_bars_source).
    assert set(bars["source"]) == {"sample"} and set(back["source"]) == {"stub"}
