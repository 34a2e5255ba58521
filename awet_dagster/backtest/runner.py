"""Event-driven backtest over the SAME core the live loop runs, bar by bar.

For each bar, all symbols interleaved in (ts, symbol) order - exactly what the live
services see on market.raw - the steps of ``risk.step.BarStep``, the object the live risk
service (``risk.desk.RiskDesk``) drives per scored signal:
1. the paper venue (``execution.shadow.ShadowVenue``) fills working orders of the symbol at
   this bar's open (decided earlier); fills are booked in the ledger's portfolio;
2. the risk engine records the bar (return history for CVaR, mark, loss limits);
3. the exit rules check the symbol's position on the close -> ExitEvents -> exit orders;
4. the signal engine scores the bar -> ScoredSignal; a tradable one goes to the risk
   engine -> RiskDecision; an approved one becomes an entry order at the venue.
Signals that do not pass the filters are counted, not sent to risk (risk would reject
them as "signal not tradable"). Costs: `walk_forward.slippage_bps` / `fee_per_order` (the
research settings), participation cap `execution.max_participation`.

Correlation ids: one per entry decision, `bt:<symbol>:<bar ts ISO>`, shared by the
signal, decision, entry order, position, ExitEvent, exit order and their fills.
Deterministic: the same inputs give the same frames (event ids / produced_at, which are
uuid4 / wall clock by contract, are not part of the frames).
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import polars as pl

from awet_dagster.backtest.results import (
    DECISION_SCHEMA,
    EQUITY_SCHEMA,
    FILL_SCHEMA,
    ORDER_SCHEMA,
    TRADE_SCHEMA,
    BacktestResult,
    equity_returns,
    frame,
)
from awet_dagster.config.schema import AwetConfig
from awet_dagster.execution.ledger import FillLedger
from awet_dagster.execution.orders import OrderRequest
from awet_dagster.execution.shadow import ShadowVenue
from awet_dagster.exits.watch import ExitWatch
from awet_dagster.risk.engine import RiskEngine
from awet_dagster.risk.portfolio import Fill
from awet_dagster.risk.state import InMemoryRiskStateStore
from awet_dagster.risk.step import BarStep
from awet_dagster.risk.store import InMemoryBarHistory
from awet_dagster.signals.calibration import PlattCalibrator
from awet_dagster.signals.engine import QuantileForecast, SignalEngine, signal_passed
from awet_dagster.signals.tft import trading_horizon
from awet_dagster.sources.corporate_actions import adjusted_close

REGIME_FEATURES = ("regime_close_sma20", "regime_sma20_sma50")
PREDICTION_COLUMNS = ("symbol", "ts", "model_version", "horizon", "q10", "q50", "q90")
_ALPHA_PREFIX = {"rsi": "rsi", "ema": "ema_cross", "macd": "macd"}


def correlation_id_for(symbol: str, ts) -> str:
    return f"bt:{symbol}:{ts.isoformat()}"


def _alpha_name(raw: str) -> str:
    """'RsiAlphaModel(14,daily)' or 'rsi' -> contract alpha name."""
    low = raw.lower()
    if low in ("rsi", "ema_cross", "macd"):
        return low
    for prefix, name in _ALPHA_PREFIX.items():
        if low.startswith(prefix):
            return name
    raise ValueError(f"cannot map alpha {raw!r} to rsi / ema_cross / macd")


def _forecasts(predictions: pl.DataFrame | None, horizon: int | None = None) -> dict[tuple[str, Any], QuantileForecast]:
    if predictions is None:
        return {}
    missing = set(PREDICTION_COLUMNS) - set(predictions.columns)
    if missing:
        raise ValueError(f"predictions frame lacks columns {sorted(missing)}")
    if predictions.height == 0:
        return {}
    h = trading_horizon(predictions["horizon"].unique().to_list(), horizon)
    rows = predictions.filter(pl.col("horizon") == h).unique(["symbol", "ts"], keep="first", maintain_order=True)
    return {(r["symbol"], r["ts"]): QuantileForecast(r["model_version"], int(r["horizon"]), r["q10"], r["q50"],
                                                     r["q90"]) for r in rows.iter_rows(named=True)}


def _regime_features(features: pl.DataFrame | None) -> dict[tuple[str, Any], dict[str, float | None]]:
    if features is None or not set(REGIME_FEATURES) <= set(features.columns):
        return {}
    return {(r["symbol"], r["ts"]): r for r in features.select("symbol", "ts", *REGIME_FEATURES).iter_rows(named=True)}


def _alpha_events(alpha_signals: pl.DataFrame | None) -> dict[tuple[str, Any], list[dict[str, Any]]]:
    out: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    if alpha_signals is None:
        return out
    for r in alpha_signals.sort("ts").iter_rows(named=True):
        out.setdefault((r["symbol"], r["ts"]), []).append(r)
    return out


def run_backtest(
    bars: pl.DataFrame,
    features: pl.DataFrame | None,
    predictions: pl.DataFrame | None,
    alpha_signals: pl.DataFrame | None,
    cfg: AwetConfig,
    calibrator: PlattCalibrator | None = None,
    alpha_calibration: Any = None,
) -> BacktestResult:
    """Walk `bars` in time order through signals -> risk -> execution -> exits.

    `predictions` None: no TFT component (alphas-only ensemble). `alpha_signals` None: the
    engine runs the streaming Lean alphas itself (what the live loop does); a frame (as
    from `awet_dagster.alphas.alpha_signals`) replaces them. `alpha_calibration`: the
    calibrator of bars without a forecast, as the live signal service would load it (a
    `storage.calibrations.StoredCalibration`, or None: uncalibrated)."""
    if bars.is_empty():
        raise ValueError("bars is empty")
    ordered = bars.sort("ts", "symbol")
    forecasts = _forecasts(predictions, cfg.signals.horizon)
    regimes = _regime_features(features)
    alpha_events = _alpha_events(alpha_signals)

    ledger = FillLedger(cfg.risk.initial_equity)
    portfolio = ledger.portfolio
    venue = ShadowVenue(cfg.walk_forward.slippage_bps, cfg.walk_forward.fee_per_order,
                        cfg.execution.max_participation)
    # No stored closes: the exit rules' restart path never runs in a backtest.
    step = BarStep(ledger, RiskEngine.from_config(cfg, portfolio, InMemoryRiskStateStore()),
                   ExitWatch(cfg, InMemoryBarHistory(), ledger), venue)
    engine = SignalEngine(cfg.signals, calibrator, compute_alphas=alpha_signals is None)
    if alpha_calibration is not None:
        engine.set_alpha_calibrator(alpha_calibration.calibrator, alpha_calibration.name, alpha_calibration.bar_type)

    orders: list[dict[str, Any]] = []
    fills: list[dict[str, Any]] = []
    trades: list[dict[str, Any]] = []
    decisions: list[dict[str, Any]] = []
    audits: list[dict[str, Any]] = []
    equity_rows: list[dict[str, Any]] = []
    open_trades: dict[str, dict[str, Any]] = {}  # correlation_id -> trade being built
    traded_notional = 0.0
    scored = passed = 0
    current_ts = None

    def record_order(rq: OrderRequest) -> None:
        # The paper venue accepts every order (no gate runs in a backtest): status accepted.
        orders.append({"ts": rq.ts, "symbol": rq.symbol, "client_order_id": rq.client_order_id,
                       "correlation_id": rq.correlation_id, "intent": rq.intent, "side": rq.side, "qty": rq.qty,
                       "status": "accepted", "message": None})

    def book(fill: Fill, realised: float) -> None:
        nonlocal traded_notional
        traded_notional += fill.qty * fill.price
        fills.append({"ts": fill.ts, "symbol": fill.symbol, "client_order_id": fill.client_order_id,
                      "correlation_id": fill.correlation_id, "intent": fill.intent, "side": fill.side,
                      "qty": fill.qty, "price": fill.price, "fee": fill.fee})
        t = open_trades.get(fill.correlation_id)
        if fill.intent == "entry":
            if t is None:
                t = open_trades[fill.correlation_id] = {
                    "correlation_id": fill.correlation_id, "symbol": fill.symbol,
                    "side": "long" if fill.side == "buy" else "short", "qty": 0.0, "entry_ts": fill.ts,
                    "entry_notional": 0.0, "exit_qty": 0.0, "exit_notional": 0.0, "fees": 0.0, "realised": 0.0,
                    "exit_reason": None, "exit_ts": None, "entry_client_order_id": fill.client_order_id,
                    "exit_client_order_id": None}
            t["qty"] += fill.qty
            t["entry_notional"] += fill.qty * fill.price
            t["fees"] += fill.fee
            return
        if t is None:
            raise RuntimeError(f"exit fill {fill.client_order_id} has no open trade {fill.correlation_id}")
        t["exit_qty"] += fill.qty
        t["exit_notional"] += fill.qty * fill.price
        t["fees"] += fill.fee
        t["realised"] += realised
        t["exit_ts"] = fill.ts
        t["exit_client_order_id"] = fill.client_order_id
        if portfolio.position(fill.symbol) is None:
            del open_trades[fill.correlation_id]
            entry_price = t["entry_notional"] / t["qty"]
            pnl = t["realised"] - t["fees"]
            trades.append({
                "correlation_id": t["correlation_id"], "symbol": t["symbol"], "side": t["side"], "qty": t["qty"],
                "entry_ts": t["entry_ts"], "entry_price": entry_price, "exit_ts": t["exit_ts"],
                "exit_price": t["exit_notional"] / t["exit_qty"], "exit_reason": t["exit_reason"],
                "fees": t["fees"], "pnl": pnl, "return_pct": pnl / t["entry_notional"],
                "entry_client_order_id": t["entry_client_order_id"],
                "exit_client_order_id": t["exit_client_order_id"]})

    for bar in ordered.iter_rows(named=True):
        symbol, ts = bar["symbol"], bar["ts"]
        if current_ts is not None and ts != current_ts:
            equity_rows.append({"ts": current_ts, "equity": portfolio.equity})
        current_ts = ts

        # A split between the symbol's last bar and this one carries the position and the
        # working orders through it (quantity x ratio, prices / ratio), then the bar's fills.
        ratio, booked = step.fills(symbol, ts, bar.get("split_factor"), bar["open"], bar["volume"])
        if ratio is not None:
            for t in open_trades.values():  # entry price of the trade report on the new basis
                if t["symbol"] == symbol:
                    t["qty"] *= ratio
        for fill, realised in booked:
            book(fill, realised)
        step.mark(symbol, ts, bar["close"], adjusted_close(bar))

        for event, req in step.exits_on(symbol, ts, bar.get("bar_type", "daily"), bar["close"]):
            if event.correlation_id in open_trades:
                open_trades[event.correlation_id]["exit_reason"] = event.reason
            record_order(req)

        for a in alpha_events.get((symbol, ts), ()):
            period = a["period"] if a["period"] is not None else timedelta(0)
            engine.observe_alpha(symbol, _alpha_name(a["alpha"]), int(a["direction"]), ts, period,
                                 bar.get("bar_type", "daily"))
        cid = correlation_id_for(symbol, ts)
        signal = engine.on_bar(bar, correlation_id=cid, forecast=forecasts.get((symbol, ts)),
                               features=regimes.get((symbol, ts)))
        scored += 1
        if not signal_passed(signal):
            continue
        passed += 1
        # Entries accepted but not filled yet count against the caps, priced at their decision
        # price; any working order of the symbol blocks a second position.
        outcome = step.evaluate(signal)
        d = outcome.decision
        audits.append(outcome.audit)
        decisions.append({"ts": ts, "symbol": symbol, "correlation_id": cid, "approved": d.approved,
                          "side": d.side, "qty": d.qty, "notional": d.notional, "cvar_95": d.metrics.cvar_95,
                          "reasons": list(d.reasons)})
        if d.approved:
            record_order(step.place_entry(d, signal.price))

    if current_ts is not None:
        equity_rows.append({"ts": current_ts, "equity": portfolio.equity})
    equity = frame(equity_rows, EQUITY_SCHEMA)
    values = equity["equity"].to_list()
    mean_equity = sum(values) / len(values) if values else cfg.risk.initial_equity
    return BacktestResult(
        orders=frame(orders, ORDER_SCHEMA),
        fills=frame(fills, FILL_SCHEMA),
        trades=frame(trades, TRADE_SCHEMA),
        equity=equity,
        returns=equity_returns(values, cfg.risk.initial_equity),
        turnover=traded_notional / mean_equity,
        decisions=frame(decisions, DECISION_SCHEMA),
        initial_equity=cfg.risk.initial_equity,
        signals_scored=scored,
        signals_passed=passed,
        audit=tuple(audits),
    )


def buy_and_hold(bars: pl.DataFrame, cfg: AwetConfig) -> BacktestResult:
    """Baseline: equal dollars in every symbol, bought at its first bar's open (with the
    same slippage and fee as the backtest), held to the end; fractional shares. Equity is
    on the same bar-time grid as `run_backtest` on the same bars."""
    if bars.is_empty():
        raise ValueError("bars is empty")
    ordered = bars.sort("ts", "symbol")
    symbols = sorted(ordered["symbol"].unique().to_list())
    initial = cfg.risk.initial_equity
    budget = initial / len(symbols)
    slip, fee = cfg.walk_forward.slippage_bps / 1e4, cfg.walk_forward.fee_per_order
    cash, qty, marks = initial, {}, {}
    fills: list[dict[str, Any]] = []
    equity_rows: list[dict[str, Any]] = []
    current_ts = None
    for bar in ordered.iter_rows(named=True):
        symbol, ts = bar["symbol"], bar["ts"]
        if current_ts is not None and ts != current_ts:
            equity_rows.append({"ts": current_ts, "equity": cash + sum(q * marks[s] for s, q in qty.items())})
        current_ts = ts
        if symbol not in qty:
            price = bar["open"] * (1 + slip)
            n = (budget - fee) / price
            qty[symbol] = n
            cash -= n * price + fee
            fills.append({"ts": ts, "symbol": symbol, "client_order_id": f"bh:{symbol}", "correlation_id": f"bh:{symbol}",
                          "intent": "entry", "side": "buy", "qty": n, "price": price, "fee": fee})
        marks[symbol] = bar["close"]
    equity_rows.append({"ts": current_ts, "equity": cash + sum(q * marks[s] for s, q in qty.items())})
    equity = frame(equity_rows, EQUITY_SCHEMA)
    values = equity["equity"].to_list()
    traded = sum(f["qty"] * f["price"] for f in fills)
    return BacktestResult(
        orders=frame([], ORDER_SCHEMA), fills=frame(fills, FILL_SCHEMA), trades=frame([], TRADE_SCHEMA),
        equity=equity, returns=equity_returns(values, initial), turnover=traded / (sum(values) / len(values)),
        decisions=frame([], DECISION_SCHEMA), initial_equity=initial,
    )
