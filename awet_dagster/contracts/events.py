"""Typed event contracts for every topic of the live loop.

Size (over 400 lines): a catalogue of the wire contracts, one file to read; the JSON Schemas in
`awet_dagster/schemas/` are generated from it.

Flow: market.raw -> engineered -> alpha.signals / predictions -> signals.scored
-> risk.approved | risk.rejected -> exec.done, with exit requests on exec.exits
(see ``awet_dagster.contracts.topics`` for the topic map and why exits skip risk).

Collections are tuples (not lists) so frozen events are really immutable; they are JSON
arrays on the wire. ``dict`` fields stay dicts (JSON objects): do not mutate them.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from .base import (
    BarType,
    BaseEvent,
    ContractModel,
    Direction,
    NonEmptyStr,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    Side,
    Symbol,
    UnitFloat,
    UtcDatetime,
    Venue,
)

Horizon = Annotated[int, Field(gt=0, description="forecast horizon in bars of the event's bar type")]


# --------------------------------------------------------------------------- market data
#: Where a bar came from, as the design names the feeds: the offline sample (real Lean bars)
#: and the synthetic generator are both "stub".
BarSource = Literal["polygon", "alpaca", "yfinance", "stub"]
VENDOR_FEEDS: tuple[str, ...] = ("polygon", "alpaca", "yfinance")


def bar_source(name: str | None) -> BarSource:
    """The design's feed of a data source name: a vendor is itself, anything else (the
    offline sample, a Lean folder, the synthetic generator) is "stub"."""
    return name if name in VENDOR_FEEDS else "stub"  # type: ignore[return-value]


class MarketRawEvent(BaseEvent):
    """One OHLCV bar (plus the last quote when known), as ingested.

    Version 2: ``volume`` is a whole number of shares and ``source`` one of the design's four
    feeds; a replayed bar keeps its feed and says ``replay: true`` (version 1 had a float
    volume and free-form sources such as "sample" or "replay")."""

    event_type: ClassVar[str] = "market_raw"
    schema_version: Literal[2] = 2

    symbol: Symbol
    bar_type: BarType
    ts: UtcDatetime = Field(description="bar START instant, UTC")
    open: PositiveFloat
    high: PositiveFloat
    low: PositiveFloat
    close: PositiveFloat
    volume: NonNegativeInt = Field(description="shares traded in the bar")
    bid: PositiveFloat | None = None
    ask: PositiveFloat | None = None
    bid_size: NonNegativeFloat | None = None
    ask_size: NonNegativeFloat | None = None
    source: BarSource = Field(description="the feed the bar came from")
    replay: bool = Field(False, description="re-published from storage (a replay), not live from the feed")
    # Prices above are raw (what a broker trades at); research and indicators use raw x adj_factor.
    adj_factor: PositiveFloat = Field(1.0, description="raw price x adj_factor = split/dividend-adjusted price")
    split_factor: PositiveFloat = Field(
        1.0, description="splits only: a change between two bars of a symbol is a split (new/old = shares per share)")

    @model_validator(mode="after")
    def _check_prices(self) -> MarketRawEvent:
        if self.high < max(self.open, self.close, self.low):
            raise ValueError(f"high {self.high} is below open/close/low")
        if self.low > min(self.open, self.close):
            raise ValueError(f"low {self.low} is above open/close")
        if self.bid is not None and self.ask is not None and self.bid > self.ask:
            raise ValueError(f"crossed quote: bid {self.bid} > ask {self.ask}")
        return self


class BarClock(BaseEvent):
    """The bars a source published for one bar time: sent on ``market.clock`` after the bars
    themselves were acknowledged. A consumer of a partitioned topic that must see every symbol
    of a time in (ts, symbol) order (risk: its rules couple symbols) holds the time's events
    until the bars listed here have all come (``awet_dagster.streaming.sequencer``)."""

    event_type: ClassVar[str] = "bar_clock"
    schema_version: Literal[1] = 1

    bar_type: BarType
    ts: UtcDatetime = Field(description="bar START instant, UTC")
    symbols: tuple[Symbol, ...] = Field(min_length=1, description="every symbol with a bar of this type at ts")

    @model_validator(mode="after")
    def _distinct(self) -> BarClock:
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"duplicate symbols in {self.symbols}")
        return self

    def kafka_key(self) -> bytes | None:
        return self.bar_type.encode()  # one bar type's clocks stay in order


#: Length of a social-sentiment bucket.
SentimentBucket = Literal["1h", "1d"]


class SentimentEvent(BaseEvent):
    """Mentions of one symbol on Reddit in one CLOSED time bucket, with the mean VADER compound
    score of the texts that mention it. Published once per (symbol, bucket, ts) by
    ``awet ingest --source reddit`` after the bucket ended; ``persist_sentiment`` stores it in
    ``reddit_mentions``, from which the features join it point-in-time. A bucket without
    mentions has no event (and no row): missing stays missing."""

    event_type: ClassVar[str] = "social_sentiment"
    schema_version: Literal[1] = 1

    symbol: Symbol
    ts: UtcDatetime = Field(description="bucket START instant, UTC")
    bucket: SentimentBucket = Field(description="bucket length")
    mentions: int = Field(ge=1, description="texts (submissions, comments) that mention the symbol")
    sentiment: float = Field(ge=-1.0, le=1.0, description="mean VADER compound score of those texts")
    source: Literal["reddit"] = "reddit"
    subreddits: tuple[NonEmptyStr, ...] = Field(min_length=1, description="the subreddits read")


class FeatureEvent(BaseEvent):
    """Engineered features for one bar."""

    event_type: ClassVar[str] = "features"

    symbol: Symbol
    bar_type: BarType
    ts: UtcDatetime = Field(description="start of the bar the features describe, UTC")
    feature_set_version: NonEmptyStr
    features: dict[NonEmptyStr, float] = Field(min_length=1, description="finite values only (NaN rejected)")


# --------------------------------------------------------------------------- alphas / model
class AlphaSignal(BaseEvent):
    """The Lean alphas' answer for one bar: an ``insight`` of one alpha whose view changed on
    this bar (Lean emits on state change only), or the ``bar_done`` mark that the
    ``lean_alpha`` service publishes after a bar's insights (none, or some). The mark lets the
    signal service wait for exactly the bar's insights, as a ``no_forecast`` Prediction does
    for forecasts, instead of guessing whether one is still coming.

    Version 2: version 1 had insights only (no ``status``, no ``bar_type``)."""

    event_type: ClassVar[str] = "alpha_signal"
    schema_version: Literal[2] = 2

    symbol: Symbol
    ts: UtcDatetime = Field(description="start of the bar that produced it, UTC")
    bar_type: BarType = "daily"
    status: Literal["insight", "bar_done"] = "insight"
    alpha: Literal["rsi", "ema_cross", "macd"] | None = None
    direction: Direction | None = None
    magnitude: NonNegativeFloat | None = Field(None, description="strength; the sign is carried by direction")
    confidence: UnitFloat | None = None
    period: int | None = Field(None, gt=0, description="main lookback of the alpha, in bars")

    @model_validator(mode="after")
    def _status_fields(self) -> AlphaSignal:
        fields = (self.alpha, self.direction, self.magnitude, self.confidence, self.period)
        if self.status == "insight" and any(v is None for v in fields):
            raise ValueError("an insight has alpha, direction, magnitude, confidence and period")
        if self.status == "bar_done" and any(v is not None for v in fields):
            raise ValueError("a bar_done mark carries no insight fields")
        return self


class Quantiles(ContractModel):
    """q10/q50/q90 of the forecast return (fraction, e.g. 0.004 = +0.4%)."""

    q10: float
    q50: float
    q90: float

    @model_validator(mode="after")
    def _ordered(self) -> Quantiles:
        if not (self.q10 <= self.q50 <= self.q90):
            raise ValueError(f"quantiles must satisfy q10 <= q50 <= q90, got {self.q10}, {self.q50}, {self.q90}")
        return self


class Prediction(BaseEvent):
    """The served model's answer for one bar: a quantile forecast for several horizons, or
    (``status="no_forecast"``, empty horizons/quantiles, ``reason`` set) the explicit news
    that this bar gets none - its feature window is not complete yet, or the model failed.
    Answering every bar lets the signal service wait for exactly the bars a forecast will
    come for, instead of guessing (which raced on a symbol's first forecast)."""

    event_type: ClassVar[str] = "prediction"

    symbol: Symbol
    ts: UtcDatetime = Field(description="start of the last bar the model saw, UTC")
    model_version: NonEmptyStr
    status: Literal["forecast", "no_forecast"] = "forecast"
    reason: str | None = Field(None, description="why there is no forecast (no_forecast only)")
    horizons: tuple[Horizon, ...] = Field(default=())
    # JSON object keys are strings; pydantic turns them back into ints when decoding.
    quantiles: dict[Horizon, Quantiles] = Field(default_factory=dict,
                                                description="horizon -> quantiles, one entry per horizon")

    @model_validator(mode="after")
    def _horizons_match(self) -> Prediction:
        if self.status == "no_forecast":
            if self.horizons or self.quantiles or not self.reason:
                raise ValueError("a no_forecast prediction has a reason and no horizons or quantiles")
            return self
        if self.reason is not None:
            raise ValueError("reason is for no_forecast predictions only")
        if not self.horizons:
            raise ValueError("a forecast needs at least one horizon")
        if len(set(self.horizons)) != len(self.horizons):
            raise ValueError(f"duplicate horizons: {self.horizons}")
        if set(self.quantiles) != set(self.horizons):
            raise ValueError(f"quantiles keys {sorted(self.quantiles)} != horizons {sorted(self.horizons)}")
        return self


# --------------------------------------------------------------------------- scored signal
class ComponentScores(ContractModel):
    """Per-component scores in [-1, 1] (None: component inactive for this bar)."""

    tft: float | None = Field(default=None, ge=-1, le=1)
    rsi: float | None = Field(default=None, ge=-1, le=1)
    ema: float | None = Field(default=None, ge=-1, le=1)
    macd: float | None = Field(default=None, ge=-1, le=1)


class FilterFailure(ContractModel):
    name: NonEmptyStr
    reason: NonEmptyStr


EnsembleDirection = Literal["long", "short", "neutral"]
RegimeName = Literal["bull", "bear", "sideways"]
#: An alpha's vote, as Lean's InsightDirection spells it.
AlphaVote = Literal["UP", "DOWN", "FLAT"]


class ScoredSignal(BaseEvent):
    """Ensemble decision for one bar, with everything needed to explain it later.

    Field names and value sets are the design's (``ticker``, ``tft_*``, ``ensemble_*``,
    ``signal_score``, ``active_alphas`` as a name -> vote mapping, ``regime`` one of three);
    the rest (ids, horizon, quantiles, weights, filters, model_version, calibrator) is extra
    audit detail. Version 2: version 1 had symbol/direction ("flat")/score/confidence and
    active_alphas as a tuple of names (migration 0005 moved stored rows)."""

    event_type: ClassVar[str] = "scored_signal"
    schema_version: Literal[2] = 2

    ticker: Symbol
    ts: UtcDatetime
    bar_type: BarType = Field("daily", description="bar type of the scored bar (risk warms its CVaR history on it)")
    tft_direction: EnsembleDirection | None = Field(description="the TFT's own call (None: no forecast for this bar)")
    tft_confidence: UnitFloat | None = Field(description="|2 P(r > 0) - 1| of the forecast (None: no forecast)")
    tft_q50: float | None = Field(description="median forecast log return at the horizon (None: no forecast)")
    ensemble_direction: EnsembleDirection = Field(description="neutral when a filter failed or the score is 0")
    ensemble_confidence: UnitFloat = Field(
        description="|signal_score| x regime_scale: what the position is sized by (the regime applied once)")
    signal_score: float = Field(ge=-1, le=1, description="signed weighted ensemble score, before the regime")
    calibrated_prob: UnitFloat = Field(description="calibrated probability that the direction is right")
    calibrator: NonEmptyStr = Field(
        description="what mapped |signal_score| to calibrated_prob: 'platt:tft:<model_version>', 'platt:alpha' "
                    "or 'uncalibrated' (0.5 + |score| / 2)")
    regime: RegimeName
    regime_ready: bool = Field(True, description="False while SMA50 warms up (regime is then 'sideways')")
    regime_scale: NonNegativeFloat = Field(description="the regime's multiplier applied to ensemble_confidence")
    components: ComponentScores
    ensemble_weights: dict[NonEmptyStr, NonNegativeFloat] = Field(description="weights actually used")
    active_alphas: dict[NonEmptyStr, AlphaVote] = Field(
        default_factory=dict, description="alpha -> its live vote on this bar, e.g. {'rsi': 'UP', 'macd': 'DOWN'}")
    horizon: Horizon
    model_version: NonEmptyStr
    quantiles: Quantiles = Field(description="q10/q50/q90 used for this horizon")
    filters_passed: tuple[NonEmptyStr, ...] = ()
    filters_failed: tuple[FilterFailure, ...] = ()
    price: PositiveFloat = Field(description="last price when scored")
    reference_price: PositiveFloat = Field(description="price the signal is relative to (bar close)")
    adj_factor: PositiveFloat = Field(1.0, description="the bar's adjustment factor: price x adj_factor = adjusted close")
    split_factor: PositiveFloat = Field(1.0, description="the bar's split factor (a change between bars = a split)")
    open: PositiveFloat | None = Field(
        None, description="the bar's open: risk fills the paper venue's working orders at it (None: not sent)")
    volume: NonNegativeFloat | None = Field(
        None, description="the bar's volume: caps those fills (execution.max_participation; None: not sent)")

    @property
    def symbol(self) -> str:
        """``ticker`` under the name every other contract uses (partition key, risk, audit)."""
        return self.ticker

    @model_validator(mode="after")
    def _tft_fields_together(self) -> ScoredSignal:
        tft = (self.tft_direction, self.tft_confidence, self.tft_q50)
        if any(v is None for v in tft) and any(v is not None for v in tft):
            raise ValueError("tft_direction, tft_confidence and tft_q50 are all set (a forecast) or all null")
        return self


# --------------------------------------------------------------------------- risk
class RiskSnapshot(ContractModel):
    """Risk metrics at decision time (portfolio-level)."""

    cvar_95: float | None = Field(default=None, description="1-day 95% CVaR as a loss fraction of equity")
    exposure: float = Field(description="gross exposure in dollars after this order")
    equity: PositiveFloat | None = None
    extra: dict[NonEmptyStr, float] = Field(default_factory=dict, description="other metrics, by name")


class RiskDecision(BaseEvent):
    """Approval or rejection of a scored signal, with the sized order when approved."""

    event_type: ClassVar[str] = "risk_decision"

    symbol: Symbol
    ts: UtcDatetime = Field(description="ts of the signal decided on")
    approved: bool
    reasons: tuple[NonEmptyStr, ...] = ()
    side: Side
    qty: NonNegativeFloat
    notional: NonNegativeFloat
    limit_price: PositiveFloat | None = None
    take_profit: PositiveFloat | None = None
    stop_loss: PositiveFloat | None = None
    signal_event_id: NonEmptyStr
    metrics: RiskSnapshot

    @model_validator(mode="after")
    def _consistent(self) -> RiskDecision:
        if not self.approved and not self.reasons:
            raise ValueError("a rejected decision needs at least one reason")
        if self.approved and self.qty <= 0:
            raise ValueError("an approved decision needs qty > 0")
        if self.take_profit is not None and self.stop_loss is not None:
            if self.side == "buy" and not self.stop_loss < self.take_profit:
                raise ValueError("buy: stop_loss must be below take_profit")
            if self.side == "sell" and not self.stop_loss > self.take_profit:
                raise ValueError("sell: stop_loss must be above take_profit")
        return self


# --------------------------------------------------------------------------- execution
OrderIntent = Literal["entry", "exit"]
OrderStatus = Literal["new", "accepted", "partially_filled", "filled", "canceled", "rejected", "expired"]


class OrderEvent(BaseEvent):
    """An order the execution service submitted (or would submit, when dry_run)."""

    event_type: ClassVar[str] = "order"

    client_order_id: NonEmptyStr
    broker_order_id: NonEmptyStr | None = None
    symbol: Symbol
    ts: UtcDatetime = Field(description="when the order was created")
    side: Side
    qty: PositiveFloat
    order_type: Literal["market", "limit"] = "market"
    limit_price: PositiveFloat | None = None
    take_profit: PositiveFloat | None = None
    stop_loss: PositiveFloat | None = None
    intent: OrderIntent
    source_event_id: NonEmptyStr = Field(description="RiskDecision or ExitEvent event_id that caused it")
    status: OrderStatus = "new"
    venue: Venue
    dry_run: bool

    @model_validator(mode="after")
    def _limit(self) -> OrderEvent:
        if self.order_type == "limit" and self.limit_price is None:
            raise ValueError("limit order needs limit_price")
        return self


class ExecutionReport(BaseEvent):
    """Outcome of an order (fill, partial fill, rejection...)."""

    event_type: ClassVar[str] = "execution_report"

    client_order_id: NonEmptyStr
    broker_order_id: NonEmptyStr | None = None
    symbol: Symbol
    ts: UtcDatetime = Field(description="when the venue reported this state")
    side: Side
    qty: PositiveFloat
    filled_qty: NonNegativeFloat
    avg_price: PositiveFloat | None = None
    fee: NonNegativeFloat = 0.0
    slippage_bps: float | None = Field(default=None, description="vs the reference price; positive = worse")
    status: OrderStatus
    intent: OrderIntent
    source_event_id: NonEmptyStr
    venue: Venue
    dry_run: bool
    message: str | None = Field(default=None, description="venue text, e.g. a rejection reason")

    @model_validator(mode="after")
    def _fills(self) -> ExecutionReport:
        if self.filled_qty > self.qty:
            raise ValueError(f"filled_qty {self.filled_qty} > qty {self.qty}")
        if self.filled_qty > 0 and self.avg_price is None:
            raise ValueError("avg_price required when filled_qty > 0")
        if self.status == "filled" and self.filled_qty != self.qty:
            raise ValueError("status 'filled' requires filled_qty == qty")
        return self


class ExitEvent(BaseEvent):
    """Request to close (part of) a position because an exit rule fired."""

    event_type: ClassVar[str] = "exit"

    symbol: Symbol
    ts: UtcDatetime = Field(description="when the exit rule fired")
    reason: Literal["tp", "sl", "trailing", "max_hold"]
    position_side: Literal["long", "short"]
    qty: PositiveFloat
    trigger_price: PositiveFloat
    entry_price: PositiveFloat
    entry_ts: UtcDatetime
    entry_client_order_id: NonEmptyStr | None = None

    @property
    def side(self) -> Side:
        """Order side that closes the position."""
        return "sell" if self.position_side == "long" else "buy"


# --------------------------------------------------------------------------- dead letters
class DeadLetter(BaseEvent):
    """Envelope written to ``<topic>.dlq`` by the bus helper for an unprocessable message.

    ``correlation_id`` is the original message's header when present, else
    ``dlq:<topic>:<partition>:<offset>``.
    """

    event_type: ClassVar[str] = "dead_letter"

    reason: Literal["empty_message", "invalid_json", "schema_mismatch", "unsupported_version", "handler_error",
                    "invalid_time"]
    error_type: NonEmptyStr
    error: str
    service: NonEmptyStr
    original_topic: NonEmptyStr
    original_partition: int = Field(ge=0)
    original_offset: int = Field(ge=0)
    original_timestamp_ms: int | None = None
    original_key_b64: str | None = None
    original_value_b64: str | None = Field(description="original bytes, base64 (None for a tombstone)")
    original_headers: tuple[tuple[str, str | None], ...] = Field(
        default=(), description="(name, base64 value) pairs, in order"
    )


CONTRACT_MODELS: tuple[type[BaseEvent], ...] = (
    MarketRawEvent,
    BarClock,
    SentimentEvent,
    FeatureEvent,
    AlphaSignal,
    Prediction,
    ScoredSignal,
    RiskDecision,
    OrderEvent,
    ExecutionReport,
    ExitEvent,
    DeadLetter,
)
