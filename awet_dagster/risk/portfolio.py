"""Position and PnL accounting, shared by risk, execution, exits and the backtest.

Quantities are signed (long > 0, short < 0). Cash moves with every fill (notional and
fee), so equity = cash + sum(qty * mark) always includes realised PnL, unrealised PnL
and fees; `realised_pnl` is gross of fees and `fees_paid` is kept apart for reports.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from awet_dagster.contracts.base import Side


@dataclass(frozen=True)
class Fill:
    client_order_id: str
    symbol: str
    side: Side
    qty: float  # > 0
    price: float
    fee: float
    ts: datetime
    correlation_id: str
    intent: str  # "entry" | "exit"

    def __post_init__(self) -> None:
        if self.qty <= 0 or self.price <= 0 or self.fee < 0:
            raise ValueError(f"invalid fill {self}")


@dataclass(frozen=True)
class Position:
    symbol: str
    qty: float  # signed
    avg_price: float
    opened_ts: datetime
    correlation_id: str  # of the entry decision; carried to the exit
    entry_client_order_id: str
    last_price: float
    peak_price: float  # best price since entry: max for a long, min for a short (trailing stop)

    @property
    def side(self) -> str:
        return "long" if self.qty > 0 else "short"

    @property
    def market_value(self) -> float:
        return self.qty * self.last_price

    @property
    def unrealised_pnl(self) -> float:
        return self.qty * (self.last_price - self.avg_price)


class Portfolio:
    def __init__(self, initial_cash: float) -> None:
        if not initial_cash > 0:
            raise ValueError("initial_cash must be > 0")
        self.initial_cash = float(initial_cash)
        self.cash = float(initial_cash)
        self.realised_pnl = 0.0
        self.fees_paid = 0.0
        self.positions: dict[str, Position] = {}
        self.marks: dict[str, float] = {}
        # Totals over the positions (market value, gross exposure, unrealised PnL, gross exposure
        # per group of ``exposure_by``), kept up to date by each mark in O(1) instead of summed
        # at every read: risk reads them several times per bar and an account can hold
        # hundreds of positions (the replay benchmark holds ~330). Summed again from scratch
        # after every fill and every RESYNC_EVERY marks, so rounding cannot accumulate.
        self._dirty = True
        self._marks_since_sync = 0
        self._mv = self._gross = self._unrealised = 0.0
        self._groups: dict[Callable[[str], str], dict[str, float]] = {}
        self.equity_hwm = float(initial_cash)

    # ---------------------------------------------------------------- updates
    def apply_fill(self, fill: Fill) -> float:
        """Book a fill; returns the PnL it realised (gross of fee)."""
        signed = fill.qty if fill.side == "buy" else -fill.qty
        self.cash -= signed * fill.price + fill.fee
        self.fees_paid += fill.fee
        self.marks[fill.symbol] = fill.price
        pos = self.positions.get(fill.symbol)
        realised = 0.0
        if pos is None or pos.qty == 0:
            self.positions[fill.symbol] = Position(
                fill.symbol, signed, fill.price, fill.ts, fill.correlation_id, fill.client_order_id,
                fill.price, fill.price,
            )
        elif (pos.qty > 0) == (signed > 0):  # adding to the position
            qty = pos.qty + signed
            avg = (pos.qty * pos.avg_price + signed * fill.price) / qty
            self.positions[fill.symbol] = replace(pos, qty=qty, avg_price=avg, last_price=fill.price)
        else:  # reducing, closing or flipping
            closed = min(abs(signed), abs(pos.qty))
            realised = closed * (fill.price - pos.avg_price) * (1 if pos.qty > 0 else -1)
            qty = pos.qty + signed
            if math.isclose(qty, 0.0, abs_tol=1e-9):
                del self.positions[fill.symbol]
            elif (qty > 0) == (pos.qty > 0):
                self.positions[fill.symbol] = replace(pos, qty=qty, last_price=fill.price)
            else:  # flipped: the remainder is a new position opened by this fill
                self.positions[fill.symbol] = Position(
                    fill.symbol, qty, fill.price, fill.ts, fill.correlation_id, fill.client_order_id,
                    fill.price, fill.price,
                )
        self.realised_pnl += realised
        self._dirty = True
        self._update_hwm()
        return realised

    def apply_split(self, symbol: str, ratio: float) -> None:
        """A split of ``ratio`` new shares per share: the position's quantity x ratio, its prices
        / ratio - value, cost and PnL unchanged (corporate_actions.split_ratio)."""
        if not ratio > 0:
            raise ValueError(f"split ratio must be > 0, got {ratio}")
        if symbol in self.marks:
            self.marks[symbol] /= ratio
        pos = self.positions.get(symbol)
        if pos is not None:
            self.positions[symbol] = replace(pos, qty=pos.qty * ratio, avg_price=pos.avg_price / ratio,
                                             last_price=pos.last_price / ratio, peak_price=pos.peak_price / ratio)
        self._dirty = True

    def mark(self, symbol: str, price: float) -> None:
        if not price > 0:
            raise ValueError(f"mark price must be > 0, got {price}")
        self.marks[symbol] = price
        pos = self.positions.get(symbol)
        if pos is not None:
            peak = max(pos.peak_price, price) if pos.qty > 0 else min(pos.peak_price, price)
            new = self.positions[symbol] = replace(pos, last_price=price, peak_price=peak)
            self._marks_since_sync += 1
            if self._marks_since_sync >= self.RESYNC_EVERY:
                self._dirty = True
            if not self._dirty:
                old_mv, new_mv = pos.qty * pos.last_price, new.qty * new.last_price
                self._mv += new_mv - old_mv
                d_gross = abs(new_mv) - abs(old_mv)
                self._gross += d_gross
                self._unrealised += new.unrealised_pnl - pos.unrealised_pnl
                for group, totals in self._groups.items():
                    g = group(symbol)
                    totals[g] = totals.get(g, 0.0) + d_gross
        self._update_hwm()

    def _update_hwm(self) -> None:
        self.equity_hwm = max(self.equity_hwm, self.equity)

    # ---------------------------------------------------------------- views
    RESYNC_EVERY = 1000

    def _sync(self) -> None:
        """Sum the totals from scratch (after a fill, or every RESYNC_EVERY marks)."""
        positions = self.positions
        values = [p.qty * p.last_price for p in positions.values()]
        self._mv = sum(values)
        self._gross = sum(abs(v) for v in values)
        self._unrealised = sum(p.unrealised_pnl for p in positions.values())
        for group in self._groups:
            self._groups[group] = self._group_totals(group)
        self._dirty = False
        self._marks_since_sync = 0

    def _group_totals(self, group: Callable[[str], str]) -> dict[str, float]:
        parts: dict[str, list[float]] = {}
        for symbol, p in self.positions.items():
            parts.setdefault(group(symbol), []).append(abs(p.qty * p.last_price))
        return {g: sum(v) for g, v in parts.items()}

    def exposure_by(self, group: Callable[[str], str]) -> dict[str, float]:
        """Gross exposure per group of symbols (``group``: symbol -> name, e.g. its sector; a
        pure function). Kept up to date from its first use on; read-only for the caller."""
        if self._dirty:
            self._sync()
        totals = self._groups.get(group)
        if totals is None:
            totals = self._groups[group] = self._group_totals(group)
        return totals

    @property
    def equity(self) -> float:
        if self._dirty:
            self._sync()
        return self.cash + self._mv

    @property
    def unrealised_pnl(self) -> float:
        if self._dirty:
            self._sync()
        return self._unrealised

    @property
    def gross_exposure(self) -> float:
        if self._dirty:
            self._sync()
        return self._gross

    def exposure(self, symbol: str) -> float:
        pos = self.positions.get(symbol)
        return abs(pos.market_value) if pos else 0.0

    def position(self, symbol: str) -> Position | None:
        return self.positions.get(symbol)

    @property
    def drawdown(self) -> float:
        """Fraction below the equity high-water mark (0 at a new high)."""
        return max(0.0, 1.0 - self.equity / self.equity_hwm)

    def snapshot(self) -> dict[str, float]:
        return {
            "equity": self.equity,
            "cash": self.cash,
            "gross_exposure": self.gross_exposure,
            "realised_pnl": self.realised_pnl,
            "unrealised_pnl": self.unrealised_pnl,
            "fees_paid": self.fees_paid,
            "equity_hwm": self.equity_hwm,
            "drawdown": self.drawdown,
            "positions": float(len(self.positions)),
        }
