"""The alpha-only ensemble's Platt calibration (#20 item 4): fitted on backtest outcomes by a
Dagster asset, stored in ``calibrations``, used by the live signal service and the backtest
for bars without a forecast, and named on every signal."""
from __future__ import annotations

import math
import time
from datetime import date

import numpy as np
import polars as pl
import pytest

from awet_dagster.contracts import ScoredSignal
from awet_dagster.signals import PlattCalibrator, SignalEngine
from awet_dagster.signals.alpha_calibration import MIN_CALLS, AlphaCalls, alpha_calls, fit_alpha_calibrator
from awet_dagster.sources import get_source
from awet_dagster.sources.corporate_actions import adjusted_frame
from awet_dagster.storage.calibrations import latest_calibration, store_calibration
from awet_dagster.storage.db import connect
from awet_dagster.streaming.replay import bars_to_events

SYMBOLS = ["SPY", "IBM"]


@pytest.fixture(scope="module")
def sample_bars() -> pl.DataFrame:
    return get_source("sample").fetch(SYMBOLS, date(2016, 1, 1), date(2018, 1, 1), "daily")


def test_each_call_is_paired_with_the_move_of_the_next_bar(test_config_for, tmp_path, sample_bars):
    cfg = test_config_for(tmp_path / "home").signals
    calls = alpha_calls(sample_bars, cfg)
    # Independently: the engine's scores in replay order, outcome = sign of the NEXT adjusted close move.
    closes = {s: g.sort("ts")["close"].to_list() for s, g in adjusted_frame(sample_bars).group_by("symbol",
                                                                                                 maintain_order=True)
              for s in [g["symbol"][0]]}
    pos = {s: 0 for s in closes}
    engine = SignalEngine(cfg.model_copy(update={"enforce_market_hours": False}))
    want_conf, want_right = [], []
    for bar in sample_bars.sort("ts", "symbol").iter_rows(named=True):
        score = engine.on_bar(bar, correlation_id="x").signal_score
        s, i = bar["symbol"], pos[bar["symbol"]]
        pos[s] += 1
        if score == 0 or i + 1 >= len(closes[s]) or closes[s][i + 1] == closes[s][i]:
            continue
        want_conf.append(abs(score))
        want_right.append(int((score > 0) == (closes[s][i + 1] > closes[s][i])))
    assert calls.confidence.size == len(want_conf) > 100
    assert np.allclose(calls.confidence, want_conf) and calls.right.tolist() == want_right
    assert calls.symbols == 2 and 0.3 < calls.hit_rate < 0.7
    with pytest.raises(ValueError, match="horizon"):
        alpha_calls(sample_bars, cfg, horizon=0)


def test_the_fit_follows_the_outcomes_and_needs_enough_calls():
    rng = np.random.default_rng(7)
    conf = rng.uniform(0.05, 1.0, 400)
    right = (rng.uniform(size=400) < 0.35 + 0.5 * conf).astype(int)  # surer calls are right more often
    cal = fit_alpha_calibrator(AlphaCalls(conf, right, 3))
    assert cal is not None and cal.a > 0 and cal(0.9) > 0.7 > 0.45 > cal(0.1)
    assert fit_alpha_calibrator(AlphaCalls(conf[:MIN_CALLS - 1], right[:MIN_CALLS - 1], 3)) is None
    assert fit_alpha_calibrator(AlphaCalls(conf, np.ones(400, dtype=int), 3)) is None  # one class: nothing to fit


@pytest.mark.timeout(240)
def test_the_asset_stores_a_fit_and_the_live_signal_service_uses_the_newest(
        monkeypatch, tmp_path, isolated_database_url, kafka_bootstrap, make_topic, test_config_for):
    from dagster import materialize

    from awet_dagster.config import load_config

    from assets.market_data import build_raw_bars
    from assets.signals import build_alpha_calibration
    from awet_dagster.infra.endpoints import Endpoints
    from live.services import signal
    from resources.database import DatabaseResource
    from resources.settings import SettingsResource
    from resources.market_data import MarketDataResource
    from tests.test_live_loop import _group, _producer, _read_all

    env = {"AWET_ENV": "test", "AWET_HOME": str(tmp_path / "home"), "DATABASE_URL": isolated_database_url,
           "KAFKA_BOOTSTRAP": kafka_bootstrap, "AWET__DATA__SYMBOLS": f"[{', '.join(SYMBOLS)}]",
           "AWET__DATA__START": "2016-01-04", "AWET__DATA__CUTOFF": "2018-01-02", "AWET__DATA__END": "2018-03-01",
           "AWET__DATA__REPLAY_START": "2018-01-02"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    result = materialize(
        [build_raw_bars("daily", load_config()), build_alpha_calibration("daily")], raise_on_error=False,
        resources={"database": DatabaseResource(), "settings": SettingsResource(), "market_data": MarketDataResource(source="sample")},
        tags={"dagster/asset_partition_range_start": SYMBOLS[0], "dagster/asset_partition_range_end": SYMBOLS[-1]})
    assert result.success
    meta = next(m for m in result.get_asset_materialization_events()
                if m.asset_key.path == ["daily", "alpha_calibration"]).materialization.metadata
    with connect(isolated_database_url) as conn:
        stored = latest_calibration(conn, "alpha", "daily")
        assert latest_calibration(conn, "alpha", "minute") is None
    assert stored is not None and meta["stored"].value is True and meta["name"].value == f"platt:{stored.name}"
    assert stored.n_calls == meta["calls"].value > MIN_CALLS and 0 < stored.hit_rate < 1
    assert "data:image/png;base64," in meta["reliability"].value  # the reliability plot

    # The live signal service scores the replay's bars (no model: every bar alpha-only) with it.
    cfg = test_config_for(tmp_path / "home", DATABASE_URL=isolated_database_url,
                          AWET__SIGNALS__ALPHA_CALIBRATION_REFRESH_S="0.2", AWET__SIGNALS__MIN_CONFIDENCE="0.0",
                          AWET__SIGNALS__ALPHA_SOURCE="internal")  # calibration here, not the alpha topic
    raw, scored = make_topic(), make_topic()
    replay = get_source("sample").fetch(["SPY"], date(2018, 1, 2), date(2018, 2, 1), "daily")
    events = list(bars_to_events(replay))
    prod = _producer(kafka_bootstrap)
    for ev in events[:10]:
        prod.send(raw, ev)
    prod.flush(10)
    endpoints = Endpoints(isolated_database_url, kafka_bootstrap)
    with signal.build(cfg, endpoints, input_topic=raw, output_topic=scored, predictions_topic=make_topic(),
                      alpha_topic=make_topic(), group=_group()) as svc:
        svc.run(max_messages=10, timeout_s=60)
        # A newer fit (the asset materialized again) takes over without a restart.
        with connect(isolated_database_url) as conn, conn.transaction():
            newer = store_calibration(conn, "alpha", "daily", PlattCalibrator(2.0, -1.0), n_calls=99, hit_rate=0.6)
        time.sleep(0.3)  # past the refresh interval (0.2 s): the next bar re-reads the table
        for ev in events[10:]:
            prod.send(raw, ev)
        prod.flush(10)
        svc.run(max_messages=len(events) - 10, timeout_s=60)
    sigs = [ScoredSignal.model_validate_json(m.value()) for m in _read_all(kafka_bootstrap, scored, len(events))]
    assert [s.ts for s in sigs] == [e.ts for e in events]
    first, second = sigs[:10], sigs[10:]
    assert {s.calibrator for s in first} == {f"platt:{stored.name}"}
    assert {s.calibrator for s in second} == {f"platt:{newer.name}"}
    for s in first:
        assert s.calibrated_prob == pytest.approx(stored.calibrator(abs(s.signal_score)))
    for s in second:
        assert s.calibrated_prob == pytest.approx(newer.calibrator(abs(s.signal_score)))


def test_the_backtest_scores_bars_without_a_forecast_with_the_alpha_calibration(test_config_for, tmp_path,
                                                                                 sample_bars):
    from awet_dagster.backtest.runner import run_backtest
    from awet_dagster.storage.calibrations import StoredCalibration

    cfg = test_config_for(tmp_path / "home", AWET__SIGNALS__MIN_CONFIDENCE="0.55")
    plain = run_backtest(sample_bars, None, None, None, cfg)
    # A fit that says the alphas are right 40% of the time, whatever their agreement: no
    # alpha-only call clears the 0.55 gate any more.
    doubtful = StoredCalibration(7, "alpha", "daily", PlattCalibrator(0.0, math.log(0.4 / 0.6)), 500, 0.4)
    gated = run_backtest(sample_bars, None, None, None, cfg, alpha_calibration=doubtful)
    assert plain.signals_passed > 0 and gated.signals_passed == 0 and gated.trades.height == 0
