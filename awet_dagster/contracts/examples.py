"""One valid, fully populated example of every contract.

Used by the contract/bus tests and the bus benchmark, and handy as documentation of what
a realistic event looks like. Values are plausible, not real market data.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .base import BaseEvent
from .events import (
    AlphaSignal,
    BarClock,
    ComponentScores,
    DeadLetter,
    ExecutionReport,
    ExitEvent,
    FeatureEvent,
    FilterFailure,
    MarketRawEvent,
    OrderEvent,
    Prediction,
    Quantiles,
    RiskDecision,
    RiskSnapshot,
    ScoredSignal,
    SentimentEvent,
)

TS = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)


def example_events(correlation_id: str = "corr-example", symbol: str = "AAPL") -> dict[type[BaseEvent], BaseEvent]:
    """Model class -> a valid instance of it (all optional fields set where sensible)."""
    common = {"correlation_id": correlation_id}
    q = Quantiles(q10=-0.002, q50=0.001, q90=0.004)
    events: list[BaseEvent] = [
        MarketRawEvent(**common, symbol=symbol, bar_type="minute", ts=TS, open=185.1, high=185.6, low=184.9,
                       close=185.4, volume=120_345, bid=185.39, ask=185.41, bid_size=300.0, ask_size=200.0,
                       source="alpaca"),
        BarClock(**common, bar_type="minute", ts=TS, symbols=(symbol, "MSFT", "SPY")),
        SentimentEvent(**common, symbol=symbol, ts=TS.replace(hour=0, minute=0), bucket="1d", mentions=42,
                       sentiment=0.31, subreddits=("wallstreetbets", "stocks")),
        FeatureEvent(**common, symbol=symbol, bar_type="minute", ts=TS, feature_set_version="fs-v1",
                     features={"ret_1": 0.0016, "rsi_14": 61.2, "ema_12_26": 0.35}),
        AlphaSignal(**common, symbol=symbol, ts=TS, alpha="ema_cross", direction="long", magnitude=0.6,
                    confidence=0.7, period=26),
        Prediction(**common, symbol=symbol, ts=TS, model_version="tft-3", horizons=(1, 5, 15),
                   quantiles={1: q, 5: Quantiles(q10=-0.004, q50=0.002, q90=0.008),
                              15: Quantiles(q10=-0.01, q50=0.003, q90=0.015)}),
        ScoredSignal(**common, ticker=symbol, ts=TS, tft_direction="long", tft_confidence=0.2, tft_q50=0.002,
                     ensemble_direction="long", signal_score=0.42, ensemble_confidence=0.42,
                     calibrated_prob=0.58, calibrator="platt:tft:tft-3", regime="bull", regime_scale=1.0,
                     components=ComponentScores(tft=0.5, rsi=0.2, ema=0.6, macd=None),
                     ensemble_weights={"tft": 0.5, "rsi": 0.2, "ema": 0.3},
                     active_alphas={"rsi": "UP", "ema_cross": "UP"},
                     horizon=5, model_version="tft-3", quantiles=Quantiles(q10=-0.004, q50=0.002, q90=0.008),
                     filters_passed=("spread", "volume"),
                     filters_failed=(FilterFailure(name="earnings", reason="earnings in 2 days"),),
                     price=185.41, reference_price=185.4),
        RiskDecision(**common, symbol=symbol, ts=TS, approved=True, reasons=(), side="buy", qty=10.0,
                     notional=1854.1, limit_price=185.5, take_profit=188.0, stop_loss=183.0,
                     signal_event_id="sig-1", metrics=RiskSnapshot(cvar_95=0.012, exposure=25_000.0,
                                                                   equity=100_000.0, extra={"beta": 1.1})),
        OrderEvent(**common, client_order_id="awet-abc", broker_order_id="b-1", symbol=symbol, ts=TS, side="buy",
                   qty=10.0, order_type="limit", limit_price=185.5, take_profit=188.0, stop_loss=183.0,
                   intent="entry", source_event_id="risk-1", status="accepted", venue="paper", dry_run=True),
        ExecutionReport(**common, client_order_id="awet-abc", broker_order_id="b-1", symbol=symbol, ts=TS,
                        side="buy", qty=10.0, filled_qty=10.0, avg_price=185.45, fee=0.0, slippage_bps=2.7,
                        status="filled", intent="entry", source_event_id="risk-1", venue="paper", dry_run=True,
                        message=None),
        ExitEvent(**common, symbol=symbol, ts=TS + timedelta(minutes=30), reason="tp", position_side="long",
                  qty=10.0, trigger_price=188.01, entry_price=185.45, entry_ts=TS, entry_client_order_id="awet-abc"),
        DeadLetter(**common, reason="invalid_json", error_type="ValidationError", error="Invalid JSON",
                   service="example", original_topic="market.raw", original_partition=0, original_offset=42,
                   original_timestamp_ms=1704205800000, original_key_b64="QUFQTA==", original_value_b64="e30=",
                   original_headers=(("correlation_id", "Y29ycg=="),)),
    ]
    return {type(e): e for e in events}
