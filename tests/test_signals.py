"""Signal engine: ensemble weights, TFT view, regime, Platt calibration, filters, output."""
from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import norm

from awet_dagster.config.schema import RegimeScaling, SignalsConfig
from awet_dagster.contracts import ScoredSignal
from awet_dagster.signals import (
    EnsembleWeights,
    QuantileForecast,
    SignalEngine,
    VolumeTracker,
    classify_regime,
    earnings_filter,
    fit_platt,
    market_hours_filter,
    parse_earnings_blackout,
    signal_passed,
    spread_filter,
    tft_view,
    volume_filter,
)

DAY0 = datetime(2021, 1, 4, 14, 30, tzinfo=UTC)  # a Monday session open (EST)


def _daily_bars(closes, start=DAY0, symbol="AAPL", volume=1e6, bid=None, ask=None):
    """Daily bars on consecutive calendar days (the engine only needs increasing ts)."""
    return [{"symbol": symbol, "bar_type": "daily", "ts": start + timedelta(days=i), "open": c, "high": c,
             "low": c, "close": c, "volume": volume, "bid": bid, "ask": ask} for i, c in enumerate(closes)]


def _cfg(**kw) -> SignalsConfig:
    return SignalsConfig(**{"enforce_market_hours": False, **kw})


def _run(engine: SignalEngine, bars, **kw) -> ScoredSignal:
    sig = None
    for i, bar in enumerate(bars):
        sig = engine.on_bar(bar, correlation_id=f"c{i}", **kw)
    return sig


# ------------------------------------------------------------------ weights
def test_weights_renormalise_over_active_components():
    w = EnsembleWeights()
    assert w.renormalised({"tft", "rsi", "ema", "macd"}) == pytest.approx({"tft": .5, "rsi": .2, "ema": .2, "macd": .1})
    assert w.renormalised({"rsi", "ema", "macd"}) == pytest.approx({"rsi": .4, "ema": .4, "macd": .2})
    assert w.renormalised({"tft", "ema"}) == pytest.approx({"tft": 5 / 7, "ema": 2 / 7})
    assert w.renormalised(set()) == {}


@pytest.mark.parametrize("bad", [{"tft": -0.1}, {"tft": 0, "rsi": 0, "ema": 0, "macd": 0}, {"lstm": 1.0},
                                 {"tft": math.nan}])
def test_invalid_weights_rejected_and_old_kept(bad):
    engine = SignalEngine(_cfg())
    before = engine.weights
    with pytest.raises(ValueError):
        engine.set_weights(bad)
    assert engine.weights == before


def test_set_weights_at_runtime_changes_the_next_score():
    engine = SignalEngine(_cfg(min_confidence=0.0), compute_alphas=False)
    bars = _daily_bars([100.0] * 3)
    engine.observe_alpha("AAPL", "ema_cross", +1, bars[0]["ts"], timedelta(days=30))
    fc = QuantileForecast("tft-1", 1, -0.01, -0.002, 0.006)  # bearish TFT
    s1 = engine.on_bar(bars[0], correlation_id="a", forecast=fc)
    assert set(s1.ensemble_weights) == {"tft", "ema"}
    assert s1.ensemble_weights["tft"] == pytest.approx(5 / 7)
    expected = (0.5 * (2 * norm.cdf(-0.002 / (0.008 / 1.2815515655)) - 1) + 0.2 * 1.0) / 0.7
    assert s1.signal_score == pytest.approx(expected)
    engine.set_weights({"tft": 0.0})  # operator turns the model off: alphas only, no restart
    s2 = engine.on_bar(bars[1], correlation_id="b", forecast=fc)
    assert s2.ensemble_weights == {"ema": 1.0} and s2.signal_score == 1.0


def test_no_tft_model_is_alphas_only():
    engine = SignalEngine(_cfg(min_confidence=0.0), compute_alphas=False)
    bar = _daily_bars([100.0])[0]
    engine.observe_alpha("AAPL", "rsi", -1, bar["ts"], timedelta(days=14))
    engine.observe_alpha("AAPL", "macd", +1, bar["ts"], timedelta(days=12))
    s = engine.on_bar(bar, correlation_id="x")
    assert s.components.tft is None and s.model_version == "none"
    assert s.ensemble_weights == pytest.approx({"rsi": 2 / 3, "macd": 1 / 3})
    assert s.signal_score == pytest.approx(-1 / 3) and s.active_alphas == {"rsi": "DOWN", "macd": "UP"}
    assert (s.tft_direction, s.tft_confidence, s.tft_q50) == (None, None, None)


def test_alpha_insight_expires_after_its_period():
    engine = SignalEngine(_cfg(min_confidence=0.0), compute_alphas=False)
    bars = _daily_bars([100.0] * 4)
    engine.observe_alpha("AAPL", "ema_cross", +1, bars[0]["ts"], timedelta(days=2))
    active = [engine.on_bar(b, correlation_id=str(i)).active_alphas for i, b in enumerate(bars)]
    assert active == [{"ema_cross": "UP"}, {"ema_cross": "UP"}, {}, {}]


def test_builtin_lean_alphas_fire_and_are_reported():
    # A steady rise then a sharp fall: RSI trips high, EMA(12/26) crosses down later.
    closes = [100 + i for i in range(40)] + [140 - 3 * i for i in range(30)]
    engine = SignalEngine(_cfg(min_confidence=0.0))
    seen = {a for i, b in enumerate(_daily_bars(closes)) for a in engine.on_bar(b, correlation_id=str(i)).active_alphas}
    assert {"rsi", "ema_cross"} <= seen


# ------------------------------------------------------------------ TFT view
def test_tft_view_from_quantiles():
    v = tft_view(-0.01, 0.002, 0.014)
    sigma = 0.012 / 1.2815515655446004
    assert v.direction == 1 and v.prob_up == pytest.approx(norm.cdf(0.002 / sigma))
    assert v.score == pytest.approx(2 * v.prob_up - 1)
    assert v.confidence == pytest.approx(0.002 / (0.002 + 0.012))
    assert tft_view(-0.01, 0.0, 0.01).prob_up == pytest.approx(0.5)
    assert tft_view(-0.01, -0.004, 0.002).direction == -1
    # wider spread, same median: less confident
    assert tft_view(-0.05, 0.002, 0.05).confidence < v.confidence
    with pytest.raises(ValueError):
        tft_view(0.01, 0.0, 0.02)


# ------------------------------------------------------------------ regime
def test_regime_rule():
    s = RegimeScaling()
    assert classify_regime(0.01, 0.02, s).name == "bull"
    assert (classify_regime(0.01, 0.02, s).scale, classify_regime(-0.01, -0.02, s).scale) == (1.0, 0.7)
    assert classify_regime(-0.01, -0.02, s).name == "bear"
    assert classify_regime(0.01, -0.02, s).name == "sideways" and classify_regime(0.01, -0.02, s).scale == 0.5
    warmup = classify_regime(math.nan, 0.0, s)
    assert (warmup.name, warmup.scale, warmup.ready) == ("sideways", 0.5, False)
    assert classify_regime(0.01, 0.02, s).ready


def test_engine_regime_from_its_own_smas_and_from_features():
    engine = SignalEngine(_cfg())
    rising = _run(engine, _daily_bars([100 + i for i in range(60)]))
    assert (rising.regime, rising.regime_scale) == ("bull", 1.0)
    falling = _run(SignalEngine(_cfg()), _daily_bars([200 - i for i in range(60)]))
    assert (falling.regime, falling.regime_scale) == ("bear", 0.7)
    warm = _run(SignalEngine(_cfg()), _daily_bars([100.0] * 10))
    assert (warm.regime, warm.regime_ready) == ("sideways", False) and rising.regime_ready
    feat = SignalEngine(_cfg()).on_bar(_daily_bars([100.0])[0], correlation_id="f",
                                        features={"regime_close_sma20": 0.01, "regime_sma20_sma50": -0.01})
    assert (feat.regime, feat.regime_scale) == ("sideways", 0.5)


BEAR = {"regime_close_sma20": -0.01, "regime_sma20_sma50": -0.01}
BULL = {"regime_close_sma20": 0.01, "regime_sma20_sma50": 0.01}


@pytest.mark.parametrize(("features", "scale"), [(BULL, 1.0), (BEAR, 0.7),
                                                 ({"regime_close_sma20": 0.01, "regime_sma20_sma50": -0.01}, 0.5)])
def test_the_regime_scales_ensemble_confidence_not_the_score_or_its_probability(features, scale):
    engine = SignalEngine(_cfg(min_confidence=0.0), compute_alphas=False)
    bar = _daily_bars([100.0])[0]
    s = engine.on_bar(bar, correlation_id="r", features=features, forecast=QuantileForecast("m", 1, -0.01, 0.004, 0.02))
    assert s.regime_scale == scale
    assert s.ensemble_confidence == pytest.approx(abs(s.signal_score) * scale)
    assert s.calibrated_prob == pytest.approx(0.5 + 0.5 * abs(s.signal_score))  # from the unscaled score


def test_regime_rule_vetoes_new_longs_in_a_bear_market_below_its_probability():
    cfg = _cfg(min_confidence=0.55)
    bar = _daily_bars([100.0])[0]
    weak_long = QuantileForecast("m", 1, -0.01, 0.004, 0.02)  # P(up) ~ 0.7 -> score ~ 0.4, prob ~ 0.7? below
    s = SignalEngine(cfg, compute_alphas=False).on_bar(bar, correlation_id="a", features=BEAR, forecast=weak_long)
    prob = s.calibrated_prob
    assert 0.55 <= prob < 0.65, prob  # passes the plain gate, not the bear rule for longs
    assert [f.name for f in s.filters_failed] == ["regime"] and not signal_passed(s)
    assert s.filters_failed[0].reason == f"bear regime: a new long needs calibrated probability 0.650, got {prob:.3f}"
    assert s.ensemble_direction == "neutral"
    # The same call in a bull market, or a sure one in the bear market, passes.
    bull = SignalEngine(cfg, compute_alphas=False).on_bar(bar, correlation_id="b", features=BULL, forecast=weak_long)
    assert signal_passed(bull) and "regime:not_applicable" in bull.filters_passed
    sure = SignalEngine(cfg, compute_alphas=False).on_bar(bar, correlation_id="c", features=BEAR,
                                                          forecast=QuantileForecast("m", 1, 0.001, 0.01, 0.02))
    assert signal_passed(sure) and "regime" in sure.filters_passed
    # Shorts in a bull market have their own bar; a rule set to None removes it.
    short = QuantileForecast("m", 1, -0.02, -0.004, 0.01)
    vetoed = SignalEngine(cfg, compute_alphas=False).on_bar(bar, correlation_id="d", features=BULL, forecast=short)
    assert [f.name for f in vetoed.filters_failed] == ["regime"]
    off = _cfg(min_confidence=0.55, regime_filter={"bull": {"short_min_prob": None}})
    assert signal_passed(SignalEngine(off, compute_alphas=False).on_bar(bar, correlation_id="e", features=BULL,
                                                                       forecast=short))


def test_alpha_only_bars_use_the_alpha_calibrator_and_name_it():
    from awet_dagster.signals import PlattCalibrator

    engine = SignalEngine(_cfg(min_confidence=0.0), compute_alphas=False)
    engine.set_alpha_calibrator(PlattCalibrator(a=1.5, b=-0.5), "alpha:daily:7")
    bars = _daily_bars([100.0, 101.0])
    engine.observe_alpha("AAPL", "rsi", 1, bars[0]["ts"], timedelta(days=5))
    s = engine.on_bar(bars[0], correlation_id="a")
    assert s.calibrator == "platt:alpha:daily:7"
    assert s.calibrated_prob == pytest.approx(1 / (1 + math.exp(-(1.5 * 1.0 - 0.5))))
    # A bar with a forecast is not the alpha ensemble: the model's calibrator or none.
    with_model = engine.on_bar(bars[1], correlation_id="b", forecast=QuantileForecast("m", 1, -0.01, 0.004, 0.02))
    assert with_model.calibrator == "uncalibrated"
    assert engine.on_bar(_daily_bars([1.0], start=DAY0 + timedelta(days=4), symbol="MSFT")[0] | {"bar_type": "minute"},
                         correlation_id="m").calibrator == "uncalibrated"  # fitted on daily bars, not minute ones
    engine.set_alpha_calibrator(None)
    assert engine.on_bar(_daily_bars([1.0], start=DAY0 + timedelta(days=5))[0], correlation_id="c").calibrator == (
        "uncalibrated")


def test_strong_sideways_signal_still_passes_at_reduced_scale():
    engine = SignalEngine(_cfg(min_confidence=0.55), compute_alphas=False)
    bar = _daily_bars([100.0])[0]
    sideways = {"regime_close_sma20": 0.01, "regime_sma20_sma50": -0.01}
    strong = engine.on_bar(bar, correlation_id="s", features=sideways,
                           forecast=QuantileForecast("m", 1, 0.004, 0.01, 0.016))
    assert strong.regime == "sideways" and strong.regime_scale == 0.5
    assert signal_passed(strong) and strong.ensemble_direction == "long"
    assert (strong.tft_direction, strong.tft_q50) == ("long", 0.01)
    assert strong.tft_confidence == pytest.approx(0.01 / (0.01 + 0.006))
    weak = SignalEngine(_cfg(min_confidence=0.55), compute_alphas=False).on_bar(
        bar, correlation_id="w", features=sideways, forecast=QuantileForecast("m", 1, -0.01, 0.001, 0.012))
    assert not signal_passed(weak) and [f.name for f in weak.filters_failed] == ["confidence"]


# ------------------------------------------------------------------ calibration
def _calib_data(n=2000, seed=7):
    rng = np.random.default_rng(seed)
    s = rng.uniform(-1, 1, n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(2.5 * s - 0.3)))).astype(float)
    return s, y


def test_platt_matches_unpenalised_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    s, y = _calib_data()
    cal = fit_platt(s, y)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(s.reshape(-1, 1), y)
    assert cal.a == pytest.approx(lr.coef_[0][0], abs=1e-4)
    assert cal.b == pytest.approx(lr.intercept_[0], abs=1e-4)
    assert cal.predict(0.3) == pytest.approx(lr.predict_proba([[0.3]])[0, 1], abs=1e-5)
    assert cal.predict_many(np.array([0.3]))[0] == pytest.approx(cal(0.3))


def test_platt_targets_match_direct_minimisation_and_survive_separable_data():
    s = np.array([-0.9, -0.5, -0.2, 0.1, 0.4, 0.8])
    y = np.array([0, 0, 0, 1, 1, 1.0])  # perfectly separable: plain MLE diverges
    cal = fit_platt(s, y, platt_targets=True)
    t = np.where(y == 1, 4 / 5, 1 / 5)

    def nll(p):
        z = p[0] * s + p[1]
        return np.sum(np.logaddexp(0, z) - t * z)

    ref = minimize(nll, [0.0, 0.0], method="BFGS", options={"gtol": 1e-12})
    assert (cal.a, cal.b) == pytest.approx(tuple(ref.x), abs=1e-4)
    assert math.isfinite(cal.a) and cal.a > 0


def test_fit_platt_rejects_bad_input():
    with pytest.raises(ValueError):
        fit_platt([0.1, 0.2], [1, 1])  # one class, no smoothing
    with pytest.raises(ValueError):
        fit_platt([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError):
        fit_platt([0.1], [0])


def test_calibrator_sets_calibrated_prob():
    from awet_dagster.signals import PlattCalibrator

    cal = PlattCalibrator(a=2.0, b=-1.0)
    engine = SignalEngine(_cfg(min_confidence=0.0), calibrator=cal, compute_alphas=False)
    bars = _daily_bars([100.0, 101.0])
    engine.observe_alpha("AAPL", "ema_cross", 1, bars[0]["ts"], timedelta(days=5))
    s = engine.on_bar(bars[0], correlation_id="c", forecast=QuantileForecast("m", 1, 0.01, 0.02, 0.03))
    assert s.calibrated_prob == pytest.approx(1 / (1 + math.exp(-(2.0 * abs(s.signal_score) - 1.0))))
    assert s.calibrator == "platt:tft:m"
    # The calibrator describes the model's calls: an alphas-only bar is not mapped by it.
    s = engine.on_bar(bars[1], correlation_id="d")
    assert s.signal_score == 1.0 and s.calibrated_prob == pytest.approx(1.0)
    assert s.calibrator == "uncalibrated"


def test_a_model_calibrator_applies_only_to_bars_scored_with_that_model():
    from awet_dagster.signals import PlattCalibrator

    engine = SignalEngine(_cfg(min_confidence=0.0), compute_alphas=False)
    engine.set_calibrator(PlattCalibrator(a=2.0, b=-1.0), "awet-tft:3")
    bars = _daily_bars([100.0, 101.0, 102.0])
    mine = QuantileForecast("awet-tft:3", 1, -0.01, 0.02, 0.05)
    other = QuantileForecast("awet-tft:2", 1, -0.01, 0.02, 0.05)
    calibrated = engine.on_bar(bars[0], correlation_id="a", forecast=mine)
    conf = abs(calibrated.signal_score)
    assert calibrated.calibrated_prob == pytest.approx(1 / (1 + math.exp(-(2.0 * conf - 1.0))))
    # Another model's forecast, or no forecast at all: the uncalibrated mapping.
    for bar, fc in ((bars[1], other), (bars[2], None)):
        s = engine.on_bar(bar, correlation_id="b", forecast=fc)
        assert s.calibrated_prob == pytest.approx(0.5 + 0.5 * abs(s.signal_score))
        assert s.calibrator == "uncalibrated"


def test_model_calibrations_load_once_per_version_and_retry_after_a_failure():
    from awet_dagster.inference import ModelCalibrations
    from awet_dagster.signals import PlattCalibrator

    now = [0.0]
    calls: list[tuple[str, str]] = []
    fail = [True]

    class Registry:
        def version_calibration(self, name, version):
            calls.append((name, version))
            if fail[0]:
                raise ConnectionError("registry down")
            return PlattCalibrator(1.5, 0.0) if version == "3" else None

    cals = ModelCalibrations(Registry(), retry_s=30, clock=lambda: now[0])
    assert cals.get("awet-tft:3") is None and cals.errors == 1  # failed: uncalibrated for now
    assert cals.get("awet-tft:3") is None and len(calls) == 1  # not retried before retry_s
    fail[0] = False
    now[0] = 31.0
    assert cals.get("awet-tft:3") == PlattCalibrator(1.5, 0.0)
    assert cals.get("awet-tft:3") == PlattCalibrator(1.5, 0.0) and len(calls) == 2  # cached
    assert cals.get("awet-tft:4") is None and len(calls) == 3  # a version without calibration
    assert cals.get("candidate") is None and len(calls) == 3  # not a registry version: not looked up


# ------------------------------------------------------------------ filters
def _utc(y, m, d, hh, mm):
    return datetime(y, m, d, hh, mm, tzinfo=UTC)


@pytest.mark.parametrize("ts,open_", [
    (_utc(2013, 11, 1, 13, 30), True),  # Fri, EDT: 09:30 ET
    (_utc(2013, 11, 1, 19, 59), True),  # 15:59 ET
    (_utc(2013, 11, 1, 20, 0), False),  # 16:00 ET: closed
    (_utc(2013, 11, 4, 13, 30), False),  # Mon after DST ended: 08:30 ET, pre-market
    (_utc(2013, 11, 4, 14, 30), True),  # 09:30 EST
    (_utc(2013, 11, 4, 20, 59), True),  # 15:59 EST
    (_utc(2013, 11, 27, 18, 30), True),  # Wed 13:30 ET, a full day
    (_utc(2013, 11, 29, 17, 59), True),  # Black Friday half day: 12:59 ET
    (_utc(2013, 11, 29, 18, 0), False),  # 13:00 ET: the half day has closed
    (_utc(2013, 11, 29, 18, 30), False),
    (_utc(2013, 11, 28, 15, 0), False),  # Thanksgiving
])
def test_market_hours_minute_bars_dst_and_half_day(ts, open_):
    r = market_hours_filter(ts, "minute")
    assert r.passed is open_
    if not open_:
        assert "outside regular XNYS hours" in r.reason


def test_market_hours_daily_bars_use_the_session_date():
    assert market_hours_filter(_utc(2013, 11, 29, 14, 30), "daily").passed
    assert not market_hours_filter(_utc(2013, 11, 28, 14, 30), "daily").passed


def test_volume_tracker_and_filter():
    t = VolumeTracker(10)
    for v in [100_000] * 5 + [1_000_000] * 10:
        t.update(DAY0, v, "daily")
    assert t.average() == 1_000_000 and t.sessions == 10
    assert volume_filter(t.average(), t.sessions, 500_000).passed
    assert not volume_filter(400_000, 10, 500_000).passed
    m = VolumeTracker(10)
    m.update(_utc(2013, 10, 7, 14, 0), 300_000, "minute")
    m.update(_utc(2013, 10, 7, 15, 0), 400_000, "minute")
    assert m.average() is None  # no completed session yet
    assert not volume_filter(m.average(), m.sessions, 1).passed
    m.update(_utc(2013, 10, 8, 14, 0), 5, "minute")
    assert m.average() == 700_000  # the completed session's total, not the minute volumes


def test_spread_filter():
    assert spread_filter(100.0, 100.05, 0.001).passed
    assert not spread_filter(100.0, 100.2, 0.001).passed
    na = spread_filter(None, 100.0, 0.001)
    assert na.passed and not na.applicable and na.label == "spread:not_applicable"


def test_earnings_blackout():
    bl = parse_earnings_blackout(["aapl:2021-01-27", "IBM:2021-01-21"])
    assert ("AAPL", date(2021, 1, 27)) in bl
    assert not earnings_filter("AAPL", _utc(2021, 1, 27, 14, 30), bl).passed
    assert earnings_filter("AAPL", _utc(2021, 1, 28, 14, 30), bl).passed
    with pytest.raises(ValueError):
        parse_earnings_blackout(["AAPL-2021-01-27"])
    with pytest.raises(ValueError):
        parse_earnings_blackout(["AAPL:27/01/2021"])


# ------------------------------------------------------------------ output
def test_failed_filters_give_a_flat_auditable_signal_with_every_field():
    cfg = _cfg(min_confidence=0.1, earnings_blackout=("AAPL:2021-01-04",), min_avg_volume_10d=2e6)
    engine = SignalEngine(cfg, compute_alphas=False)
    bar = _daily_bars([100.0], volume=1e6, bid=99.0, ask=101.0)[0]
    s = engine.on_bar(bar, correlation_id="corr", forecast=QuantileForecast("tft-7", 5, 0.0, 0.01, 0.02))
    assert s.ensemble_direction == "neutral" and s.signal_score > 0.5  # the raw view is kept for the audit
    assert {f.name for f in s.filters_failed} == {"volume", "spread", "earnings"}
    assert all(f.reason for f in s.filters_failed)
    assert not signal_passed(s)
    assert (s.model_version, s.horizon, s.quantiles.q50) == ("tft-7", 5, 0.01)
    assert s.correlation_id == "corr" and s.price == s.reference_price == 100.0
    assert "market_hours:not_applicable" in s.filters_passed
    ScoredSignal.model_validate_json(s.model_dump_json())  # round-trips the contract


def test_passing_signal_is_directional():
    engine = SignalEngine(_cfg(min_confidence=0.2), compute_alphas=False)
    bar = _daily_bars([100.0], bid=99.99, ask=100.01)[0]
    s = engine.on_bar(bar, correlation_id="c", forecast=QuantileForecast("m", 1, -0.02, -0.01, 0.0))
    assert signal_passed(s) and s.ensemble_direction == "short" and s.signal_score < 0
    assert set(s.filters_passed) == {"market_hours:not_applicable", "volume", "spread", "earnings", "confidence",
                                     "regime:not_applicable"}


def test_bars_must_be_in_time_order():
    engine = SignalEngine(_cfg())
    bar = _daily_bars([100.0])[0]
    engine.on_bar(bar, correlation_id="a")
    with pytest.raises(ValueError, match="not after"):
        engine.on_bar(bar, correlation_id="b")
