"""The risk engine: ScoredSignal + portfolio -> RiskDecision (approved or rejected, with
reasons) plus an audit record (a JSON-ready dict the caller persists).

Every check runs on every signal so the audit shows the whole picture, not only the
first failure. Order of sizing: equity * position pct (per-symbol override) * the signal's
ensemble_confidence (|score| x the regime's scale: a full-confidence bull signal gets the
whole position pct), floored to whole shares (Alpaca brackets refuse fractional qty), then clipped to
the symbol, total and sector caps (clipping is recorded; < 1 share left = reject).

Loss limits, measured from fills and marks (equity = cash + marked positions, so
realised + unrealised PnL and fees all count) against the equity at the start of the
exchange session (the daily anchor, kept in the RiskStateStore):
- loss >= daily_loss_limit (5%): no new entries for the rest of that session;
- loss >= kill_switch_loss (10%): the kill switch trips, persists in the store across
  sessions and restarts, and blocks every entry until `reset_kill_switch` is called.
Exits never pass through here (closing only reduces risk; see contracts/topics.py).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from awet_dagster.config.schema import AwetConfig, RiskConfig
from awet_dagster.contracts import RiskDecision, RiskSnapshot, ScoredSignal
from awet_dagster.risk.cvar import CvarResult, ReturnHistory, historical_cvar
from awet_dagster.risk.portfolio import Portfolio
from awet_dagster.risk.sectors import SECTOR_MAP, sector_of
from awet_dagster.risk.state import KillSwitchState, RiskStateStore
from awet_dagster.risk.throttle import OrderThrottle

_NY = ZoneInfo("America/New_York")


@dataclass(frozen=True)
class RiskOutcome:
    decision: RiskDecision
    audit: dict[str, Any] = field(hash=False)


def session_of(ts: datetime) -> date:
    return ts.astimezone(_NY).date()


class RiskEngine:
    def __init__(
        self,
        cfg: RiskConfig,
        portfolio: Portfolio,
        store: RiskStateStore,
        *,
        take_profit_pct: float = 0.03,
        stop_loss_pct: float = 0.015,
        sector_map: Mapping[str, str] = SECTOR_MAP,
    ) -> None:
        self.cfg = cfg
        self.portfolio = portfolio
        self.store = store
        self.take_profit_pct = take_profit_pct
        self.stop_loss_pct = stop_loss_pct
        self.sector_map = sector_map
        self._sectors: dict[str, str] = {}
        self.history = ReturnHistory(cfg.cvar_lookback_bars)
        self.throttle = OrderThrottle(cfg.max_orders_per_minute, cfg.max_orders_per_symbol_day, cfg.cooldown_s)

    @classmethod
    def from_config(cls, cfg: AwetConfig, portfolio: Portfolio, store: RiskStateStore) -> RiskEngine:
        return cls(cfg.risk, portfolio, store, take_profit_pct=cfg.execution.take_profit_pct,
                   stop_loss_pct=cfg.execution.stop_loss_pct)

    # ------------------------------------------------------------------ market updates
    def anchor(self, ts: datetime) -> float:
        """Equity at the start of ts's session (recorded on first sight of the session)."""
        day = session_of(ts)
        value = self.store.get_daily_anchor(day)
        if value is None:
            value = self.portfolio.equity
            self.store.set_daily_anchor(day, value)
        return value

    def on_bar(self, symbol: str, ts: datetime, close: float, adjusted_close: float | None = None) -> KillSwitchState:
        """Record the bar's return, mark the position, check the loss limits.

        ``close`` is raw (positions are held in raw prices); the return history behind CVaR
        uses ``adjusted_close`` when given, so a split is not a crash."""
        self.anchor(ts)  # before the mark: the anchor is the equity the session started with
        self.history.update(symbol, ts, close if adjusted_close is None else adjusted_close)
        self.portfolio.mark(symbol, close)
        return self.check_kill_switch(ts)

    def daily_loss(self, ts: datetime) -> float:
        """Loss since the session start as a fraction of the anchor (> 0 = losing)."""
        anchor = self.anchor(ts)
        return (anchor - self.portfolio.equity) / anchor

    def check_kill_switch(self, ts: datetime) -> KillSwitchState:
        state = self.store.get_kill_switch()
        if state.tripped:
            return state
        loss = self.daily_loss(ts)
        if loss >= self.cfg.kill_switch_loss or self.portfolio.equity <= 0:
            state = KillSwitchState(
                tripped=True,
                reason=f"session loss {loss:.2%} >= kill switch {self.cfg.kill_switch_loss:.2%}",
                tripped_at=ts,
            )
            self.store.set_kill_switch(state)
        return state

    def reset_kill_switch(self, operator: str, reason: str, ts: datetime) -> KillSwitchState:
        """The only way to clear a tripped kill switch: an explicit, named operator action."""
        if not operator.strip() or not reason.strip():
            raise ValueError("resetting the kill switch needs an operator name and a reason")
        old = self.store.get_kill_switch()
        state = KillSwitchState(tripped=False, reason=old.reason, tripped_at=old.tripped_at,
                                reset_by=operator, reset_at=ts, reset_reason=reason)
        self.store.set_kill_switch(state)
        return state

    # ------------------------------------------------------------------ decision
    def evaluate(self, signal: ScoredSignal, *, has_pending_order: bool = False,
                 pending_exposure: Mapping[str, float] | None = None) -> RiskOutcome:
        """``has_pending_order``: an order of the symbol is working (entry or exit): the symbol
        counts as held. ``pending_exposure``: {symbol: signed dollars, short < 0} of entries
        accepted but not (fully) filled yet; they count against the symbol, total and sector caps
        and in the CVaR of the book as if filled, from the approval on - a venue that reports
        fills late must not let the book exceed its limits meanwhile, nor decide otherwise than
        with the fill known (found: a late-reporting venue's risk left them out of CVaR and
        approved an entry the paper path rejected)."""
        cfg, pf, ts, symbol = self.cfg, self.portfolio, signal.ts, signal.symbol
        pending = {s: abs(v) for s, v in (pending_exposure or {}).items() if v}
        checks: list[dict[str, Any]] = []
        reasons: list[str] = []

        def check(name: str, ok: bool, reason: str, value: Any = None, limit: Any = None) -> None:
            checks.append({"name": name, "passed": bool(ok), "value": value, "limit": limit})
            if not ok:
                reasons.append(reason)

        kill = self.check_kill_switch(ts)
        check("kill_switch", not kill.tripped, f"kill switch tripped: {kill.reason}", kill.tripped)
        passed = not signal.filters_failed and signal.ensemble_direction != "neutral"
        failed = "; ".join(f"{f.name}: {f.reason}" for f in signal.filters_failed) or "no direction"
        check("signal", passed, f"signal not tradable ({failed})", signal.ensemble_direction)
        side = "sell" if signal.ensemble_direction == "short" else "buy"
        check("short_allowed", side == "buy" or cfg.allow_short, "short entries are disabled (risk.allow_short)")
        pos = pf.position(symbol)
        check("no_open_position", pos is None and not has_pending_order,
              f"{symbol} already has an open position or pending order", pos.qty if pos else 0.0)
        loss = self.daily_loss(ts)
        check("daily_loss", loss < cfg.daily_loss_limit,
              f"session loss {loss:.2%} >= daily limit {cfg.daily_loss_limit:.2%}", loss, cfg.daily_loss_limit)
        dd = pf.drawdown
        check("max_drawdown", dd < cfg.max_drawdown,
              f"drawdown {dd:.2%} >= max {cfg.max_drawdown:.2%}", dd, cfg.max_drawdown)
        throttled = self.throttle.check(symbol, ts)
        check("throttle", not throttled, "; ".join(throttled))

        # --- sizing
        equity = pf.equity
        price = signal.price
        pct = cfg.symbol_overrides.get(symbol, cfg.position_size_pct)
        # Sized by the signal's ensemble_confidence, which carries the regime's scale already.
        target = max(equity, 0.0) * pct * signal.ensemble_confidence
        sizing: dict[str, Any] = {"equity": equity, "position_pct": pct,
                                  "ensemble_confidence": signal.ensemble_confidence,
                                  "regime_scale": signal.regime_scale,
                                  "target_notional": target, "price": price, "clipped_by": []}
        sector = self._sector(symbol)
        pending_sector = sum(v for s, v in pending.items() if self._sector(s) == sector)
        room = {
            "max_symbol_exposure": cfg.max_symbol_exposure - pf.exposure(symbol) - pending.get(symbol, 0.0),
            "max_total_exposure": cfg.max_total_exposure - pf.gross_exposure - sum(pending.values()),
            "sector_cap": cfg.sector_cap_pct * max(equity, 0.0) - self._sector_exposure(symbol) - pending_sector,
        }
        if pending:
            sizing["pending_exposure"] = sum(pending.values())
        notional = target
        for name, left in room.items():
            if notional > left:
                notional = max(left, 0.0)
                sizing["clipped_by"].append(name)
        qty = float(math.floor(notional / price)) if price > 0 else 0.0
        sizing.update(notional_after_caps=notional, qty=qty)
        check("size", qty >= 1, f"size below one share after caps ({', '.join(sizing['clipped_by']) or 'target'}: "
              f"${notional:,.2f} at ${price:,.2f})", qty, 1)

        # --- CVaR of the portfolio after the order: the one costly check, so only for an entry
        # every other check approved (most signals of a live account meet an open position or
        # a cap); a rejected entry's audit records it as not evaluated, and why.
        if reasons:
            rejected_by = ", ".join(c["name"] for c in checks if not c["passed"])
            cv = CvarResult(None, None, 0, f"not evaluated: already rejected by {rejected_by}")
            checks.append({"name": "cvar_95", "passed": None, "value": None, "limit": cfg.cvar_limit,
                           "skipped": cv.reason})
        else:
            exposures = {s: p.market_value for s, p in pf.positions.items()}
            for s, v in (pending_exposure or {}).items():
                exposures[s] = exposures.get(s, 0.0) + v
            signed = qty * price * (1 if side == "buy" else -1)
            exposures[symbol] = exposures.get(symbol, 0.0) + signed
            cv = historical_cvar(exposures, self.history, equity, min_observations=cfg.cvar_min_observations)
            if cv.cvar is None:
                check("cvar_95", False, f"CVaR not computable: {cv.reason}", None, cfg.cvar_limit)
            else:
                check("cvar_95", cv.cvar <= cfg.cvar_limit,
                      f"CVaR-95 {cv.cvar:.2%} > limit {cfg.cvar_limit:.2%}", cv.cvar, cfg.cvar_limit)

        approved = not reasons
        notional_out = qty * price if approved else 0.0
        tp = sl = None
        if approved:
            if side == "buy":
                tp, sl = price * (1 + self.take_profit_pct), price * (1 - self.stop_loss_pct)
            else:
                tp, sl = price * (1 - self.take_profit_pct), price * (1 + self.stop_loss_pct)
            self.throttle.record(symbol, ts)
        gross_after = pf.gross_exposure + notional_out
        decision = RiskDecision(
            correlation_id=signal.correlation_id,
            symbol=symbol,
            ts=ts,
            approved=approved,
            reasons=tuple(reasons),
            side=side,
            qty=qty if approved else 0.0,
            notional=notional_out,
            take_profit=tp,
            stop_loss=sl,
            signal_event_id=signal.event_id,
            metrics=RiskSnapshot(
                cvar_95=cv.cvar,
                exposure=gross_after,
                equity=equity if equity > 0 else None,
                extra={"daily_loss": loss, "drawdown": dd, "cvar_observations": float(cv.observations),
                       "target_notional": target},
            ),
        )
        audit = {
            "event_id": decision.event_id,
            "correlation_id": signal.correlation_id,
            "signal_event_id": signal.event_id,
            "symbol": symbol,
            "ts": ts.isoformat(),
            "approved": approved,
            "reasons": list(reasons),
            "checks": checks,
            "sizing": sizing,
            "cvar": {"cvar_95": cv.cvar, "var_95": cv.var, "observations": cv.observations, "reason": cv.reason},
            "portfolio": pf.snapshot(),
            "session_anchor": self.anchor(ts),
            "kill_switch": {"tripped": kill.tripped, "reason": kill.reason},
        }
        return RiskOutcome(decision, audit)

    def _sector(self, symbol: str) -> str:
        sector = self._sectors.get(symbol)
        if sector is None:
            sector = self._sectors[symbol] = sector_of(symbol, self.sector_map)
        return sector

    def _sector_exposure(self, symbol: str) -> float:
        # Per sector, summed once per change of the portfolio (Portfolio.exposure_by).
        return self.portfolio.exposure_by(self._sector).get(self._sector(symbol), 0.0)
