"""The signal engine: bars + TFT forecasts + alpha insights -> one ScoredSignal per bar.

One instance serves many symbols and is fed bars in time order, bar by bar, by both the
backtest and the live scoring service (same code path). Per bar it:
1. updates the symbol's state (SMA20/50, 10-session volume, the Lean alphas);
2. scores each active component in [-1, 1]: TFT = 2 P(r>0) - 1 from the quantiles; an
   alpha = the direction of its live insight (emitted at ts, alive for its period);
   components with no view are inactive (None) and the weights are renormalised over
   the active ones (`EnsembleWeights.renormalised`);
3. signal_score = weighted mean; calibrated_prob = calibrator(|score|): the model's
   (fitted on its OOS calls) on bars with its forecast, the alpha-only ensemble's (fitted
   on backtest outcomes) on bars without one, else the uncalibrated 0.5 + |score| / 2;
   the signal names the one used;
4. classifies the regime: ensemble_confidence = |score| x the regime's scale (what risk
   sizes by), and runs every filter, the regime rule included (`filters.regime_filter`).
Decision on failures: the signal is ALWAYS produced (auditable); when any filter fails
its ensemble_direction is "neutral" and `filters_failed` says why; the raw score stays in
`signal_score`.
`signal_passed(sig)` is the one test callers use.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from awet_dagster.alphas import EmaCrossAlpha, MacdAlpha, RsiAlpha
from awet_dagster.config.schema import SignalsConfig
from awet_dagster.contracts import ComponentScores, FilterFailure, Quantiles, ScoredSignal
from awet_dagster.indicators import SmaStream
from awet_dagster.signals.calibration import PlattCalibrator
from awet_dagster.signals.filters import (
    FilterResult,
    VolumeTracker,
    confidence_filter,
    earnings_filter,
    market_hours_filter,
    parse_earnings_blackout,
    regime_filter,
    spread_filter,
    volume_filter,
)
from awet_dagster.signals.regime import Regime, classify_regime
from awet_dagster.signals.tft import tft_view
from awet_dagster.signals.weights import EnsembleWeights
from awet_dagster.sources.corporate_actions import adjusted_bar

NO_MODEL_VERSION = "none"  # model_version of an alphas-only signal (no TFT forecast)
NO_MODEL_QUANTILES = Quantiles(q10=0.0, q50=0.0, q90=0.0)
VOLUME_DAYS = 10

# Alpha name (contract spelling) -> ensemble component.
ALPHA_COMPONENT: dict[str, str] = {"rsi": "rsi", "ema_cross": "ema", "macd": "macd"}
_MODEL_ALPHA = {RsiAlpha: "rsi", EmaCrossAlpha: "ema_cross", MacdAlpha: "macd"}
_VOTES = {1: "UP", -1: "DOWN", 0: "FLAT"}  # an insight's direction as ScoredSignal.active_alphas spells it
_DIRECTIONS = {1: "long", -1: "short", 0: "neutral"}
UNCALIBRATED = "uncalibrated"  # ScoredSignal.calibrator when 0.5 + |score| / 2 was used


@dataclass(frozen=True)
class QuantileForecast:
    """One horizon of a TFT Prediction (the engine uses one horizon per bar)."""

    model_version: str
    horizon: int
    q10: float
    q50: float
    q90: float


@dataclass(frozen=True)
class AlphaInsight:
    alpha: str  # "rsi" | "ema_cross" | "macd"
    direction: int  # -1, 0, +1
    ts: datetime  # bar that produced it
    expires: datetime  # ts + period: alive for bars starting before this

    def alive_at(self, ts: datetime) -> bool:
        return self.ts <= ts < self.expires


def signal_passed(signal: ScoredSignal) -> bool:
    """True when the signal asks for a position (every filter passed, a direction)."""
    return not signal.filters_failed and signal.ensemble_direction != "neutral"


class _SymbolState:
    __slots__ = ("sma20", "sma50", "volume", "alphas", "insights", "last_ts")

    def __init__(self, symbol: str, bar_type: str, compute_alphas: bool) -> None:
        self.sma20, self.sma50 = SmaStream(20), SmaStream(50)
        self.volume = VolumeTracker(VOLUME_DAYS)
        self.alphas = (
            (RsiAlpha(symbol, bar_type=bar_type), EmaCrossAlpha(symbol, bar_type=bar_type),
             MacdAlpha(symbol, bar_type=bar_type))
            if compute_alphas else ()
        )
        self.insights: dict[str, AlphaInsight] = {}
        self.last_ts: datetime | None = None


class SignalEngine:
    def __init__(
        self,
        cfg: SignalsConfig,
        calibrator: PlattCalibrator | None = None,
        *,
        compute_alphas: bool = True,
    ) -> None:
        """`compute_alphas=False`: alpha insights come from outside via `observe_alpha`
        (e.g. the alpha.signals topic or a precomputed frame) instead of the built-in
        streaming Lean alphas."""
        self.cfg = cfg
        self.calibrator = calibrator
        self.calibrator_version: str | None = None
        # bar type -> (the alpha-only ensemble's calibrator, its name on signals)
        self.alpha_calibrators: dict[str, tuple[PlattCalibrator, str]] = {}
        self.compute_alphas = compute_alphas
        self._weights = EnsembleWeights.from_config(cfg.weights)
        self._blackout = parse_earnings_blackout(cfg.earnings_blackout)
        self._symbols: dict[str, _SymbolState] = {}
        # set_weights may be called from an admin/control thread of the live service.
        self._lock = threading.Lock()

    def forget_symbols(self) -> None:
        """Drop every symbol's state (indicators, regime, alphas); weights and calibrator stay."""
        self._symbols.clear()

    # ------------------------------------------------------------------ runtime control
    @property
    def weights(self) -> EnsembleWeights:
        return self._weights

    def set_weights(self, weights: EnsembleWeights | Mapping[str, float]) -> EnsembleWeights:
        """Replace the ensemble weights without a restart (validated first; on error the
        old weights stay). A mapping may name a subset; missing components keep their weight."""
        if not isinstance(weights, EnsembleWeights):
            merged = {**self._weights.as_dict(), **dict(weights)}
            weights = EnsembleWeights.from_mapping(merged)
        with self._lock:
            self._weights = weights
        return weights

    def set_calibrator(self, calibrator: PlattCalibrator | None, model_version: str | None = None) -> None:
        """Replace the calibrator (fitted on a model's walk-forward OOS calls). It applies to
        bars scored with a forecast; with ``model_version``, only with that version's."""
        self.calibrator = calibrator
        self.calibrator_version = model_version

    def set_alpha_calibrator(self, calibrator: PlattCalibrator | None, name: str = "alpha",
                             bar_type: str = "daily") -> None:
        """The calibrator of ``bar_type`` bars scored WITHOUT a forecast (the alpha-only
        ensemble, fitted on its backtest outcomes: ``signals.alpha_calibration``; None
        removes it); ``name`` goes into each signal's ``calibrator`` as ``platt:<name>``."""
        if calibrator is None:
            self.alpha_calibrators.pop(bar_type, None)
        else:
            self.alpha_calibrators[bar_type] = (calibrator, f"platt:{name}")

    def _calibrator_for(self, forecast: QuantileForecast | None, bar_type: str) -> tuple[PlattCalibrator | None, str]:
        if forecast is None:
            return self.alpha_calibrators.get(bar_type, (None, UNCALIBRATED))
        if self.calibrator is None or (self.calibrator_version is not None
                                       and forecast.model_version != self.calibrator_version):
            return None, UNCALIBRATED
        return self.calibrator, f"platt:tft:{forecast.model_version}"

    # ------------------------------------------------------------------ inputs
    def _state(self, symbol: str, bar_type: str) -> _SymbolState:
        st = self._symbols.get(symbol)
        if st is None:
            st = self._symbols[symbol] = _SymbolState(symbol, bar_type, self.compute_alphas)
        return st

    def observe_alpha(self, symbol: str, alpha: str, direction: int, ts: datetime, period: timedelta,
                      bar_type: str = "daily") -> None:
        """Record an externally computed alpha insight (latest per alpha wins)."""
        if alpha not in ALPHA_COMPONENT:
            raise ValueError(f"unknown alpha {alpha!r}; known: {sorted(ALPHA_COMPONENT)}")
        if direction not in (-1, 0, 1):
            raise ValueError(f"alpha direction must be -1, 0 or 1, got {direction!r}")
        self._state(symbol, bar_type).insights[alpha] = AlphaInsight(alpha, int(direction), ts, ts + period)

    # ------------------------------------------------------------------ scoring
    def on_bar(
        self,
        bar: Mapping,
        *,
        correlation_id: str,
        forecast: QuantileForecast | None = None,
        features: Mapping[str, float | None] | None = None,
    ) -> ScoredSignal:
        """Score the closed bar `bar` (keys of the bar schema; bid/ask optional).

        `features`: the bar's FeatureEvent values; when they carry the regime ratios they
        are used (same numbers as the internal SMAs, computed once upstream)."""
        symbol, ts, bar_type = bar["symbol"], bar["ts"], bar.get("bar_type", "daily")
        close = float(bar["close"])  # raw: the price an order is placed at
        adjusted = adjusted_bar(bar)  # indicators and the regime: split/dividend-adjusted
        adj_close = float(adjusted["close"])
        st = self._state(symbol, bar_type)
        if st.last_ts is not None and ts <= st.last_ts:
            raise ValueError(f"{symbol}: bar {ts.isoformat()} is not after the last one {st.last_ts.isoformat()}")
        st.last_ts = ts

        sma20, sma50 = st.sma20.update(adj_close), st.sma50.update(adj_close)
        st.volume.update(ts, float(adjusted["volume"]), bar_type)
        for model in st.alphas:
            for sig in model.update(adjusted):
                name = _MODEL_ALPHA[type(model)]
                st.insights[name] = AlphaInsight(name, int(sig.direction), sig.ts, sig.ts + sig.period)

        # --- components
        weights = self._weights  # one read: a concurrent set_weights applies from the next bar
        scores: dict[str, float] = {}
        quantiles, model_version, horizon = NO_MODEL_QUANTILES, NO_MODEL_VERSION, 1
        view = None
        if forecast is not None:
            view = tft_view(forecast.q10, forecast.q50, forecast.q90)
            scores["tft"] = view.score
            quantiles = Quantiles(q10=forecast.q10, q50=forecast.q50, q90=forecast.q90)
            model_version, horizon = forecast.model_version, forecast.horizon
        active_alphas: dict[str, str] = {}
        for name in ("rsi", "ema_cross", "macd"):
            insight = st.insights.get(name)
            if insight is not None and insight.alive_at(ts):
                scores[ALPHA_COMPONENT[name]] = float(insight.direction)
                active_alphas[name] = _VOTES[insight.direction]
        used = weights.renormalised(scores)
        score = sum(w * scores[c] for c, w in used.items())
        score = max(-1.0, min(1.0, score))
        confidence = abs(score)

        # --- regime (features first, own SMAs otherwise): it scales the confidence the
        # position is sized by (risk applies nothing more), and its rule may veto the entry.
        regime = self._regime(adj_close, sma20, sma50, features)
        ensemble_confidence = min(1.0, confidence * regime.scale)

        # --- filters (all evaluated, for the audit trail)
        cfg = self.cfg
        results: list[FilterResult] = []
        if cfg.enforce_market_hours:
            results.append(market_hours_filter(ts, bar_type))
        else:
            results.append(FilterResult("market_hours", True, "disabled by config", applicable=False))
        results.append(volume_filter(st.volume.average(), st.volume.sessions, cfg.min_avg_volume_10d))
        results.append(spread_filter(bar.get("bid"), bar.get("ask"), cfg.max_spread_pct))
        results.append(earnings_filter(symbol, ts, self._blackout))
        # min_confidence is a probability: the (calibrated) chance that the call is right.
        # A calibrator is fitted on a model's OOS calls: it maps bars scored WITH a forecast
        # (of that model version, when it names one); others get the uncalibrated mapping.
        # Bars without one are mapped by the alpha-only ensemble's calibrator (fitted on backtest
        # outcomes of alpha-only signals) when there is one. Both map the UNscaled |score|:
        # that is what they were fitted on; the regime is a sizing and filter matter.
        calibrator, calibrator_name = self._calibrator_for(forecast, bar_type)
        prob = calibrator(confidence) if calibrator is not None else 0.5 + 0.5 * confidence
        prob = min(1.0, max(0.0, prob))
        results.append(confidence_filter(prob, cfg.min_confidence))
        results.append(regime_filter(regime.name, (score > 0) - (score < 0), prob,
                                     getattr(cfg.regime_filter, regime.name)))
        failed = tuple(FilterFailure(name=r.name, reason=r.reason or "failed") for r in results if not r.passed)
        passed = tuple(r.label for r in results if r.passed)

        direction = "neutral"
        if not failed and score != 0:
            direction = "long" if score > 0 else "short"
        return ScoredSignal(
            correlation_id=correlation_id,
            ticker=symbol,
            ts=ts,
            bar_type=bar_type,
            tft_direction=_DIRECTIONS[view.direction] if view is not None else None,
            tft_confidence=view.confidence if view is not None else None,
            tft_q50=forecast.q50 if forecast is not None else None,
            ensemble_direction=direction,
            signal_score=score,
            ensemble_confidence=ensemble_confidence,
            calibrated_prob=prob,
            calibrator=calibrator_name,
            regime=regime.name,
            regime_ready=regime.ready,
            regime_scale=regime.scale,
            components=ComponentScores(**{c: scores.get(c) for c in ("tft", "rsi", "ema", "macd")}),
            ensemble_weights=used,
            active_alphas=active_alphas,
            horizon=horizon,
            model_version=model_version,
            quantiles=quantiles,
            filters_passed=passed,
            filters_failed=failed,
            price=close,
            reference_price=close,
            adj_factor=float(bar.get("adj_factor") or 1.0),
            split_factor=float(bar.get("split_factor") or 1.0),
            open=float(bar["open"]) if bar.get("open") else None,
            volume=float(bar["volume"]) if bar.get("volume") is not None else None,
        )

    def _regime(self, close: float, sma20: float, sma50: float,
                features: Mapping[str, float | None] | None) -> Regime:
        scaling = self.cfg.regime_scaling
        if features is not None:
            a, b = features.get("regime_close_sma20"), features.get("regime_sma20_sma50")
            if a is not None and b is not None:
                return classify_regime(float(a), float(b), scaling)
        if math.isnan(sma20) or math.isnan(sma50):
            return classify_regime(math.nan, math.nan, scaling)
        return classify_regime(close / sma20 - 1.0, sma20 / sma50 - 1.0, scaling)
