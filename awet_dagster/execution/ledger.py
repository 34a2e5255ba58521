"""``FillLedger``: the event-time portfolio a live service keeps from its fill reports.

Risk (and the exit rules it runs) needs the portfolio AS OF the bar it handles, exactly like
``run_backtest`` (fills of bar t are booked before bar t's risk check and exit check).
Fills arrive on their own topic, possibly late, so the ledger:
- rebuilds the portfolio from the stored fills and orders on start (``rebuild``; the rows
  come from ``awet_dagster.storage.trading.ledger_rows``);
- turns each ExecutionReport (cumulative filled_qty / avg_price / fee) into the
  incremental ``Fill`` it adds — idempotent: a report not beyond the known cumulative
  quantity is a duplicate (redelivery, re-read after restart) and is ignored;
- takes the fills its owner computed itself the same way (``on_fill``: risk's
  ``ShadowVenue`` of the paper venue; whichever of fill and report comes first is booked);
- keeps those fills PENDING until the owner applies them in event order
  (``apply_until(ts, symbol)``: every fill with (ts, symbol) <= the bar's);
- tracks OUTSTANDING orders (working at the venue): ``pending_order`` and
  ``pending_exposure`` (what risk counts as in flight) and, for a venue whose fills only its
  reports tell (Alpaca), ``missing_fills(symbols, ts)``: orders decided before bar t of their
  symbol whose fill at t is not reported yet.
Not thread-safe by itself: callers hold the TopicTail's condition lock.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from awet_dagster.contracts import ExecutionReport, OrderEvent
from awet_dagster.risk.portfolio import Fill, Portfolio
from awet_dagster.sources.corporate_actions import SplitWatch

log = logging.getLogger("awet.execution.ledger")

CLOSED = frozenset({"filled", "canceled", "rejected", "expired"})


@dataclass
class Outstanding:
    symbol: str
    decided_ts: datetime
    intent: str
    correlation_id: str
    last_fill_ts: datetime | None = None
    qty: float = 0.0  # ordered (0: unknown)
    price: float | None = None  # decision price (entries): what the unfilled rest is worth
    side: str | None = None  # "buy" / "sell" (None: not known yet)


@dataclass(frozen=True)
class StoredFill:
    """A stored fill with what the ledger books it by (built by ``storage.trading.ledger_rows``)."""

    client_order_id: str
    symbol: str
    side: str
    qty: float
    price: float
    fee: float
    ts: datetime
    correlation_id: str | None
    intent: str
    split_factor: float | None  # of the bar it filled on (None: no such bar stored)


@dataclass(frozen=True)
class StoredOrder:
    """A stored order as the ledger takes it (built by ``storage.trading.ledger_rows``)."""

    client_order_id: str
    symbol: str
    status: str
    correlation_id: str | None
    qty: float
    side: str | None
    intent: str
    decided_ts: datetime | None  # the bar it was decided on (payload ts)
    reference_price: float | None


class FillLedger:
    def __init__(self, initial_equity: float) -> None:
        self.portfolio = Portfolio(initial_equity)
        self._cum: dict[str, tuple[float, float, float]] = {}  # coid -> (qty, notional, fees)
        self._pending: list[Fill] = []
        self.outstanding: dict[str, Outstanding] = {}
        self._closed: set[str] = set()
        self._split = SplitWatch()  # the basis the book is on, per symbol
        self.splits = 0
        self.applied = 0
        self.duplicates = 0

    # ------------------------------------------------------------------ start-up
    def rebuild(self, fills: Iterable[StoredFill], orders: Iterable[StoredOrder]) -> int:
        """Book every stored fill and take the stored orders (``storage.trading.ledger_rows``:
        the rows of one namespace, fills in (ts, symbol) order); returns the fills booked."""
        n = 0
        last_fill: dict[str, datetime] = {}
        for f in fills:
            last_fill[f.client_order_id] = f.ts
            # Each fill with the split factor of the bar it filled on: fills on either side of a
            # split are booked on their own basis and the position carried through it.
            if f.split_factor is not None:
                self.on_split_factor(f.symbol, f.split_factor, f.ts)
            q, notional, fee = self._cum.get(f.client_order_id, (0.0, 0.0, 0.0))
            self._cum[f.client_order_id] = (q + f.qty, notional + f.qty * f.price, fee + f.fee)
            self.portfolio.apply_fill(Fill(f.client_order_id, f.symbol, f.side, f.qty, f.price, f.fee, f.ts,
                                           f.correlation_id or f.client_order_id, f.intent))
            n += 1
        for o in orders:
            if o.status in CLOSED:
                self._closed.add(o.client_order_id)
            elif o.decided_ts is not None:
                self.outstanding[o.client_order_id] = Outstanding(
                    o.symbol, o.decided_ts, o.intent, o.correlation_id or o.client_order_id,
                    last_fill_ts=last_fill.get(o.client_order_id), qty=o.qty, price=o.reference_price, side=o.side)
        return n

    # ------------------------------------------------------------------ inputs
    def expect(self, client_order_id: str, symbol: str, decided_ts: datetime, intent: str,
               correlation_id: str, qty: float = 0.0, price: float | None = None,
               side: str | None = None) -> None:
        """An order that will be working at the venue (own approval, or an OrderEvent)."""
        if client_order_id in self._closed:
            return
        o = self.outstanding.get(client_order_id)
        if o is not None:  # known: learn what the first sighting did not say
            o.qty = o.qty or qty
            o.price = o.price or price
            o.side = o.side or side
            return
        self.outstanding[client_order_id] = Outstanding(symbol, decided_ts, intent, correlation_id, qty=qty,
                                                        price=price, side=side)

    def on_order(self, ev: OrderEvent) -> None:
        if ev.status in CLOSED:
            self._close(ev.client_order_id)
        else:
            self.expect(ev.client_order_id, ev.symbol, ev.ts, ev.intent, ev.correlation_id, qty=ev.qty,
                        side=ev.side)

    def pending_exposure(self) -> dict[str, float]:
        """{symbol: signed dollars (short < 0)} of entries working at the venue and not filled
        yet (their unfilled quantity at the decision price): risk counts them against its caps
        and in the portfolio's CVaR as if filled."""
        out: dict[str, float] = {}
        for coid, o in self.outstanding.items():
            if o.intent != "entry" or not o.price or not o.qty:
                continue
            left = o.qty - self._cum.get(coid, (0.0, 0.0, 0.0))[0]
            if left > 1e-9:
                if o.side not in ("buy", "sell"):  # a guess here would net a short against a long
                    raise ValueError(f"entry {coid} of {o.symbol} in flight without a side ({o.side!r})")
                out[o.symbol] = out.get(o.symbol, 0.0) + left * o.price * (-1.0 if o.side == "sell" else 1.0)
        return out

    def on_split_factor(self, symbol: str, factor: float, ts: datetime) -> float | None:
        """The symbol's bar at ``ts`` has split factor ``factor``: when it changed, the fills
        before ``ts`` (old basis) are booked, then the position, the symbol's working orders
        and their cumulative fills are carried through the split (qty x ratio, prices /
        ratio: a venue reports them on the new basis from then on). Returns the ratio."""
        ratio = self._split.observe(symbol, factor)
        if ratio is None:
            return None
        self._book([f for f in self._pending if f.symbol == symbol and f.ts < ts])
        self.portfolio.apply_split(symbol, ratio)
        for coid, o in self.outstanding.items():
            if o.symbol != symbol:
                continue
            o.qty *= ratio
            o.price = o.price / ratio if o.price else o.price
            if coid in self._cum:
                q, n, f = self._cum[coid]
                self._cum[coid] = (q * ratio, n, f)
        self.splits += 1
        log.info("ledger: %s split %.4g:1 at %s carried through (position, working orders)", symbol, ratio,
                 ts.isoformat())
        return ratio

    def on_report(self, rep: ExecutionReport) -> Fill | None:
        """Pending incremental fill of ``rep`` (None: no new quantity)."""
        coid = rep.client_order_id
        fill = None
        q, n, f = self._cum.get(coid, (0.0, 0.0, 0.0))
        if rep.filled_qty > q + 1e-9 and rep.avg_price is not None:
            inc = rep.filled_qty - q
            notional = rep.avg_price * rep.filled_qty
            price = (notional - n) / inc
            fee = max(rep.fee - f, 0.0)
            self._cum[coid] = (rep.filled_qty, notional, max(rep.fee, f))
            fill = Fill(coid, rep.symbol, rep.side, inc, price, fee, rep.ts, rep.correlation_id, rep.intent)
            self._pending.append(fill)
            o = self.outstanding.get(coid)
            if o is None and coid not in self._closed:
                o = self.outstanding[coid] = Outstanding(rep.symbol, rep.ts, rep.intent, rep.correlation_id)
            if o is not None:
                o.last_fill_ts = rep.ts if o.last_fill_ts is None else max(o.last_fill_ts, rep.ts)
        elif rep.filled_qty <= q + 1e-9 and rep.status not in CLOSED:
            self.duplicates += 1
        if rep.status in CLOSED:
            self._close(coid)
        return fill

    def on_fill(self, fill: Fill, cum_qty: float, done: bool) -> bool:
        """A fill the owner computed itself (``ShadowVenue``), ``cum_qty`` the order's filled
        quantity with it; ``done``: the order is finished. Pending like a report's fill; skipped
        when a report already brought that quantity. Returns whether it was taken."""
        coid = fill.client_order_id
        q, n, f = self._cum.get(coid, (0.0, 0.0, 0.0))
        taken = cum_qty > q + 1e-9
        if taken:
            self._cum[coid] = (q + fill.qty, n + fill.qty * fill.price, f + fill.fee)
            self._pending.append(fill)
            o = self.outstanding.get(coid)
            if o is not None:
                o.last_fill_ts = fill.ts if o.last_fill_ts is None else max(o.last_fill_ts, fill.ts)
        if done:
            self._close(coid)
        return taken

    def filled(self, coid: str) -> tuple[float, float | None]:
        """(filled quantity, average price) of an order so far."""
        q, n, _ = self._cum.get(coid, (0.0, 0.0, 0.0))
        return q, (n / q if q > 0 else None)

    def cancel(self, coid: str) -> None:
        """The owner canceled the order (an exit stops its entry's unfilled rest)."""
        self._close(coid)

    def is_closed(self, coid: str) -> bool:
        return coid in self._closed

    def _close(self, coid: str) -> None:
        self._closed.add(coid)
        self.outstanding.pop(coid, None)

    # ------------------------------------------------------------------ event time
    def missing_fills(self, symbols: set[str] | frozenset[str], ts: datetime) -> list[str]:
        """Outstanding orders of ``symbols`` decided before ``ts`` with no fill reported at ``ts``."""
        return [coid for coid, o in self.outstanding.items()
                if o.symbol in symbols and o.decided_ts < ts and (o.last_fill_ts is None or o.last_fill_ts < ts)]

    def pending_order(self, symbol: str) -> bool:
        return any(o.symbol == symbol for o in self.outstanding.values())

    def apply_until(self, ts: datetime, symbol: str) -> list[tuple[Fill, float]]:
        """Book pending fills with (ts, symbol) <= (ts, symbol), in that order; returns (fill, realised)."""
        if not self._pending:
            return []
        return self._book([f for f in self._pending if (f.ts, f.symbol) <= (ts, symbol)])

    def _book(self, due: list[Fill]) -> list[tuple[Fill, float]]:
        if not due:
            return []
        booked = {id(f) for f in due}
        self._pending = [f for f in self._pending if id(f) not in booked]
        due.sort(key=lambda f: (f.ts, f.symbol))
        out = []
        for f in due:
            out.append((f, self.portfolio.apply_fill(f)))
            self.applied += 1
        return out
