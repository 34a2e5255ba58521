"""``BarStep``: the per-bar step of the trading book, one code path for ``run_backtest`` and
the live ``RiskDesk``.

Per bar of a symbol, in this order (the backtest calls it per bar, the desk per scored signal):
1. ``fills``: a split carried through (position, working orders), then the paper venue's fills
   at the bar's open (``execution.shadow.ShadowVenue``: orders decided before the bar, slippage,
   the participation cap), then every pending fill with (ts, symbol) <= the bar's booked in that
   order (live: also those execution reported);
2. ``mark``: the risk engine records the bar (CVaR history, marks, loss limits);
3. ``exits``: the exit rules on the close; each exit stops its entry's unfilled rest and goes to
   the venue (its fill is due on the symbol's next bar);
4. ``in_flight`` + ``evaluate``: risk decides with the working orders counted as pending (one
   position per symbol; entries' unfilled rest as exposure at their decision price), and
   ``place_entry`` puts an approval to work.
State: the ``FillLedger`` (portfolio + working orders), the ``RiskEngine`` on its portfolio, the
``ExitWatch`` on the same book, and the venue (None: a venue whose fills only its reports tell,
Alpaca; the desk then books what execution reports). Not thread-safe: the desk calls it under
its side reader's lock.
"""
from __future__ import annotations

from datetime import datetime

from awet_dagster.contracts import ExitEvent, RiskDecision, ScoredSignal
from awet_dagster.execution.ids import client_order_id
from awet_dagster.execution.ledger import FillLedger
from awet_dagster.execution.orders import OrderRequest, entry_request, exit_request
from awet_dagster.execution.shadow import ShadowVenue
from awet_dagster.exits.watch import ExitWatch
from awet_dagster.risk.engine import RiskEngine, RiskOutcome
from awet_dagster.risk.portfolio import Fill


class BarStep:
    def __init__(self, ledger: FillLedger, engine: RiskEngine, exits: ExitWatch, venue: ShadowVenue | None) -> None:
        if engine.portfolio is not ledger.portfolio:
            raise ValueError("the risk engine must size against the ledger's portfolio")
        self.ledger, self.engine, self.exits, self.venue = ledger, engine, exits, venue

    def fills(self, symbol: str, ts: datetime, split_factor: float = 1.0, open_: float | None = None,
              volume: float | None = None) -> tuple[float | None, list[tuple[Fill, float]]]:
        """Step 1. Returns (the split ratio carried through or None, the fills booked with their
        realised PnL). Without ``open_`` and ``volume`` (a producer that does not send them) the
        venue fills nothing here: reports bring those fills."""
        ratio = self.ledger.on_split_factor(symbol, split_factor, ts)
        if self.venue is not None and open_ is not None and volume is not None:
            bar = {"symbol": symbol, "ts": ts, "open": open_, "volume": volume, "split_factor": split_factor}
            for fill, cum_qty, done in self.venue.on_bar(bar):
                self.ledger.on_fill(fill, cum_qty, done)
        return ratio, self.ledger.apply_until(ts, symbol)

    def mark(self, symbol: str, ts: datetime, close: float, adjusted_close: float) -> None:
        """Step 2."""
        self.engine.on_bar(symbol, ts, close, adjusted_close)

    def exits_on(self, symbol: str, ts: datetime, bar_type: str, close: float) -> list[tuple[ExitEvent, OrderRequest]]:
        """Step 3: the exit events of the bar, each with the order that carries it out."""
        out = []
        for event in self.exits.on_bar(symbol, ts, bar_type, close):
            req = exit_request(event)
            if self.venue is not None:  # the entry's unfilled rest would reopen what this closes
                entry = client_order_id(event.correlation_id, "entry")
                self.venue.cancel(entry)
                self.ledger.cancel(entry)
                self.venue.place(req)
            out.append((event, req))
        return out

    def in_flight(self, symbol: str) -> tuple[bool, dict[str, float]]:
        """(an order of the symbol is working, the signed exposure of entries not filled yet)."""
        return self.ledger.pending_order(symbol), self.ledger.pending_exposure()

    def evaluate(self, signal: ScoredSignal, in_flight: tuple[bool, dict[str, float]] | None = None) -> RiskOutcome:
        """Step 4: risk's decision, the orders in flight counted as pending (``in_flight``: as
        ``in_flight`` returned it, taken under the caller's lock)."""
        pending, exposure = self.in_flight(signal.symbol) if in_flight is None else in_flight
        return self.engine.evaluate(signal, has_pending_order=pending, pending_exposure=exposure)

    def place_entry(self, decision: RiskDecision, reference_price: float) -> OrderRequest:
        """An approved entry is working from now, at the venue (unless it was done before: a
        decision replayed after a restart whose order had finished) and in the ledger, priced
        at ``reference_price`` (the decision's price) while unfilled."""
        req = entry_request(decision, reference_price)
        if self.venue is not None and not self.ledger.is_closed(req.client_order_id):
            self.venue.place(req)
        self.ledger.expect(req.client_order_id, req.symbol, req.ts, "entry", req.correlation_id, qty=req.qty,
                           price=reference_price, side=req.side)
        return req
