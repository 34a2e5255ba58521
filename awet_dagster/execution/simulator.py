"""Paper simulator: the broker of the backtest (and of `execution.broker: paper`).

Fill model, chosen to be free of look-ahead: an order decided on bar t's close fills at
the OPEN of the symbol's next bar (the first bar starting after the decision bar), moved
by `slippage_bps` against us (buy higher, sell lower). At most `max_participation` of that
bar's volume fills (whole shares); the rest stays working and fills on later bars
(partial fills). `fee_per_order` is charged once per order, on its first fill.

Prices are raw (what a broker trades at). A bar whose ``split_factor`` differs from the
symbol's previous bar is a split: before anything fills on it, working orders and the
position are carried to the new basis (quantity x ratio, prices / ratio), as a broker does.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from awet_dagster.execution.orders import BrokerOrder, BrokerPosition, OrderRequest
from awet_dagster.risk.portfolio import Fill
from awet_dagster.sources.corporate_actions import SplitWatch


@dataclass(frozen=True)
class _Working:
    request: OrderRequest
    order: BrokerOrder
    fees: float = 0.0


class PaperSimulator:
    venue = "paper"

    def __init__(self, slippage_bps: float = 5.0, fee_per_order: float = 1.0, max_participation: float = 0.1) -> None:
        if slippage_bps < 0 or fee_per_order < 0 or not 0 < max_participation <= 1:
            raise ValueError("slippage_bps and fee_per_order must be >= 0, max_participation in (0, 1]")
        self.slippage_bps = slippage_bps
        self.fee_per_order = fee_per_order
        self.max_participation = max_participation
        self._orders: dict[str, _Working] = {}  # insertion order = submission order
        # Open orders per symbol (submission order): a bar only looks at its symbol's working
        # orders, not at every order ever placed (that scan grew with the session: measured
        # 70% of the live execution service's time after ~2,000 orders).
        self._open: dict[str, dict[str, None]] = {}
        self._positions: dict[str, float] = {}
        self._avg: dict[str, float] = {}
        self._seq = 0
        self.submissions = 0  # orders actually created (duplicates are not counted)
        self._splits = SplitWatch()
        self.splits: list[tuple[str, object, float]] = []  # (symbol, bar ts, ratio) applied

    # ------------------------------------------------------------------ Broker protocol
    def submit(self, order: OrderRequest) -> BrokerOrder:
        known = self._orders.get(order.client_order_id)
        if known is not None:
            return known.order
        self._seq += 1
        self.submissions += 1
        placed = BrokerOrder(order.client_order_id, f"sim-{self._seq}", order.symbol, order.side, order.qty,
                             0.0, None, "accepted", "bracket" if order.take_profit else "simple")
        self.put(order, placed)
        return placed

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        w = self._orders.get(client_order_id)
        return w.order if w else None

    def list_open_orders(self) -> list[BrokerOrder]:
        return [w.order for w in self._orders.values() if w.order.is_open]  # reconciliation only: rare

    def list_positions(self) -> list[BrokerPosition]:
        return [BrokerPosition(s, q, self._avg[s]) for s, q in sorted(self._positions.items()) if q != 0]

    def cancel(self, client_order_id: str) -> BrokerOrder | None:
        w = self._orders.get(client_order_id)
        if w is None:
            return None
        if w.order.is_open:
            w = replace(w, order=replace(w.order, status="canceled"))
            self._orders[client_order_id] = w
            self._close(w.request.symbol, client_order_id)
        return w.order

    def request_of(self, client_order_id: str) -> OrderRequest | None:
        w = self._orders.get(client_order_id)
        return w.request if w else None

    # ------------------------------------------------------------------ market
    def put(self, request: OrderRequest, order: BrokerOrder, fees: float = 0.0) -> None:
        """Set an order's state as a broker would report it (restoring the book after a restart)."""
        coid = request.client_order_id
        self._orders[coid] = _Working(request, order, fees)
        if order.is_open:
            self._open.setdefault(request.symbol, {})[coid] = None
        else:
            self._close(request.symbol, coid)

    def restore(self, req: OrderRequest, broker_order_id: str, filled_qty: float, avg: float | None,
                fees: float, status: str) -> None:
        """A working order as stored (restart): ``filled_qty`` of it filled at ``avg`` so far."""
        order = BrokerOrder(req.client_order_id, broker_order_id, req.symbol, req.side, req.qty, filled_qty, avg,
                            status, "bracket" if req.take_profit else "simple")
        self.put(req, order, fees)

    def on_bar(self, bar: Mapping, only: Collection[str] | None = None) -> list[Fill]:
        """Fill the working orders of bar's symbol decided before this bar; returns the fills.
        ``only``: just these orders (the others already saw this bar: catch-up after a restart)."""
        symbol, ts = bar["symbol"], bar["ts"]
        ratio = self._splits.observe(symbol, bar.get("split_factor"))
        if ratio is not None:
            self.apply_split(symbol, ratio)
            self.splits.append((symbol, ts, ratio))
        fills: list[Fill] = []
        available = math.floor(self.max_participation * float(bar["volume"]))
        for coid in list(self._open.get(symbol, ())):
            if only is not None and coid not in only:
                continue
            w = self._orders[coid]
            req, order = w.request, w.order
            if req.ts >= ts or available < 1:
                continue
            remaining = req.qty - order.filled_qty
            qty = float(min(remaining, available))
            available -= int(qty)
            slip = self.slippage_bps / 1e4
            price = float(bar["open"]) * (1 + slip if req.side == "buy" else 1 - slip)
            fee = self.fee_per_order if order.filled_qty == 0 else 0.0
            filled = order.filled_qty + qty
            avg = price if order.avg_fill_price is None else (
                (order.avg_fill_price * order.filled_qty + price * qty) / filled)
            status = "filled" if math.isclose(filled, req.qty) else "partially_filled"
            self._orders[coid] = _Working(req, replace(order, filled_qty=filled, avg_fill_price=avg, status=status),
                                          w.fees + fee)
            if status == "filled":
                self._close(symbol, coid)
            self._book(symbol, qty if req.side == "buy" else -qty, price)
            fills.append(Fill(coid, symbol, req.side, qty, price, fee, ts, req.correlation_id, req.intent))
        return fills

    def apply_split(self, symbol: str, ratio: float) -> None:
        """Carry the symbol's working orders and position through a split of ``ratio`` new
        shares per share (quantities x ratio, prices / ratio)."""
        def px(v: float | None) -> float | None:
            return None if v is None else v / ratio

        for coid in self._open.get(symbol, ()):
            w = self._orders[coid]
            req = replace(w.request, qty=w.request.qty * ratio, reference_price=w.request.reference_price / ratio,
                          take_profit=px(w.request.take_profit), stop_loss=px(w.request.stop_loss))
            order = replace(w.order, qty=w.order.qty * ratio, filled_qty=w.order.filled_qty * ratio,
                            avg_fill_price=px(w.order.avg_fill_price))
            self._orders[coid] = replace(w, request=req, order=order)
        if symbol in self._positions:
            self._positions[symbol] *= ratio
            self._avg[symbol] /= ratio

    def _close(self, symbol: str, coid: str) -> None:
        open_ = self._open.get(symbol)
        if open_ is not None:
            open_.pop(coid, None)
            if not open_:
                del self._open[symbol]

    def _book(self, symbol: str, signed: float, price: float) -> None:
        old = self._positions.get(symbol, 0.0)
        new = old + signed
        if old == 0 or (old > 0) != (new > 0) or abs(new) > abs(old):
            same_side = old != 0 and (old > 0) == (signed > 0)
            self._avg[symbol] = (old * self._avg[symbol] + signed * price) / new if same_side else price
        self._positions[symbol] = new
