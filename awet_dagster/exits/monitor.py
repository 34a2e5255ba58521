"""Exit monitor: take profit, stop loss, trailing stop and max holding time, bar-driven.

Decided on each closed bar of the position's symbol, on its CLOSE (what the live loop
knows when the bar arrives); the exit order then fills like any order (next bar open in
the simulator), through the same router/broker path as entries. Rules, first match wins,
most protective first:
- sl:       long close <= entry * (1 - stop_loss_pct)      (short: >=  entry * (1 + pct))
- trailing: long close <= peak * (1 - trailing_stop_pct)   (short: >= trough * (1 + pct));
            peak = best close since entry (Portfolio.peak_price)
- tp:       long close >= entry * (1 + take_profit_pct)    (short: <= entry * (1 - pct))
- max_hold: minute bars: bar END - entry >= max_hold_minutes; daily bars: the position has
            been held for max_hold_bars_daily bars of its symbol.
One exit per position: once emitted, the position is not re-checked until it is closed
(its exit order id derives from the entry's correlation id, so a re-emit would dedupe anyway).
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from awet_dagster.config.schema import ExitsConfig
from awet_dagster.contracts import ExitEvent
from awet_dagster.risk.portfolio import Portfolio, Position

_BAR = {"minute": timedelta(minutes=1), "daily": timedelta(days=1)}


def exit_reason(pos: Position, close: float, bar_end: datetime, bars_held: int, cfg: ExitsConfig,
                bar_type: str) -> str | None:
    entry, long_ = pos.avg_price, pos.qty > 0
    if long_:
        if close <= entry * (1 - cfg.stop_loss_pct):
            return "sl"
        if close <= pos.peak_price * (1 - cfg.trailing_stop_pct):
            return "trailing"
        if close >= entry * (1 + cfg.take_profit_pct):
            return "tp"
    else:
        if close >= entry * (1 + cfg.stop_loss_pct):
            return "sl"
        if close >= pos.peak_price * (1 + cfg.trailing_stop_pct):
            return "trailing"
        if close <= entry * (1 - cfg.take_profit_pct):
            return "tp"
    if bar_type == "minute":
        if bar_end - pos.opened_ts >= timedelta(minutes=cfg.max_hold_minutes):
            return "max_hold"
    elif bars_held >= cfg.max_hold_bars_daily:
        return "max_hold"
    return None


class ExitMonitor:
    def __init__(self, cfg: ExitsConfig) -> None:
        self.cfg = cfg
        self._bars_held: dict[tuple[str, str], int] = {}  # (symbol, correlation_id) -> bars seen
        self._pending: set[tuple[str, str]] = set()

    def on_bar(self, bar: Mapping, portfolio: Portfolio) -> list[ExitEvent]:
        """Call after the bar's fills are booked and its close is marked."""
        symbol, ts, bar_type = bar["symbol"], bar["ts"], bar.get("bar_type", "daily")
        pos = portfolio.position(symbol)
        live_keys = {(s, p.correlation_id) for s, p in portfolio.positions.items()}
        self._pending &= live_keys  # a closed position releases its pending flag
        for k in [k for k in self._bars_held if k not in live_keys]:
            del self._bars_held[k]
        if pos is None:
            return []
        key = (symbol, pos.correlation_id)
        if ts >= pos.opened_ts:  # the fill bar itself counts as the first bar held
            self._bars_held[key] = self._bars_held.get(key, 0) + 1
        if key in self._pending:
            return []
        close = float(bar["close"])
        reason = exit_reason(pos, close, ts + _BAR.get(bar_type, timedelta(0)), self._bars_held.get(key, 0),
                             self.cfg, bar_type)
        if reason is None:
            return []
        self._pending.add(key)
        return [ExitEvent(
            correlation_id=pos.correlation_id,
            symbol=symbol,
            ts=ts,
            reason=reason,
            position_side=pos.side,
            qty=abs(pos.qty),
            trigger_price=close,
            entry_price=pos.avg_price,
            entry_ts=pos.opened_ts,
            entry_client_order_id=pos.entry_client_order_id,
        )]

    def restore(self, symbol: str, correlation_id: str, bars_held: int, exit_pending: bool) -> None:
        """A position opened before a restart: the bars it was held so far, and whether its
        exit was already emitted (its order still working: not emitted again)."""
        key = (symbol, correlation_id)
        self._bars_held[key] = bars_held
        if exit_pending:
            self._pending.add(key)

    def bars_held(self) -> dict[tuple[str, str], int]:
        """{(symbol, correlation_id): bars held} of the positions followed."""
        return dict(self._bars_held)

    def release(self, symbol: str, correlation_id: str) -> None:
        """Forget a pending exit (e.g. its order was rejected) so the rules fire again."""
        self._pending.discard((symbol, correlation_id))
