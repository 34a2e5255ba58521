"""``ShadowVenue``: risk's copy of the paper venue, so risk books the fills of a bar itself
instead of waiting for execution's reports.

With ``execution.broker: paper`` a fill is a function of the order and the symbol's bars after
its decision alone (``PaperSimulator``: the next bar's open, slippage, the participation cap).
Risk sees every bar of a symbol (one scored signal per bar, carrying the bar's open and volume),
so it runs the same simulator, with execution's parameters, over the orders it placed (entries
it approved, exits it raised) and books each fill when it handles the bar the fill happened on:
the step order of ``run_backtest`` (fills, mark, exits, decide), whatever the timing of
execution's reports. That is what lets risk stop waiting for them.

Execution stays the venue; its reports still reach the ledger. They agree with the shadow (same
simulator, inputs and parameters) and whichever comes first is booked: the ledger takes
cumulative quantities, so the other is a duplicate. A report ahead of the shadow (execution saw
the bar first, the common case, or risk restarted behind it) is synced into the shadow, which
then fills that order only on later bars. A report that contradicts the shadow (an order refused
or canceled at the venue after the shadow filled it) is counted and logged: the two simulators
were given different inputs.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from awet_dagster.contracts import ExecutionReport
from awet_dagster.execution.ledger import CLOSED, FillLedger
from awet_dagster.config import AwetConfig
from awet_dagster.execution.orders import OrderRequest
from awet_dagster.execution.simulator import PaperSimulator
from awet_dagster.risk.portfolio import Fill

log = logging.getLogger("awet.execution.shadow")


class ShadowVenue:
    def __init__(self, slippage_bps: float, fee_per_order: float, max_participation: float) -> None:
        self.sim = PaperSimulator(slippage_bps, fee_per_order, max_participation)
        self._last: dict[str, datetime] = {}  # symbol -> last bar filled on (a redelivered bar fills nothing)
        self.counters = {"fills": 0, "synced": 0, "mismatches": 0, "restored": 0}

    @classmethod
    def for_venue(cls, cfg: AwetConfig) -> ShadowVenue | None:
        """The shadow of ``execution.broker`` when it is the paper simulator (None for Alpaca:
        a real venue's fills cannot be computed; risk books them as their reports come)."""
        ex = cfg.execution
        return cls(ex.slippage_bps, ex.fee_per_order, ex.max_participation) if ex.broker == "paper" else None

    def restore(self, ledger: FillLedger) -> None:
        """After ``ledger.rebuild``: the orders still working, with what is filled of them.
        Each fills only on bars after its last stored fill (or its decision)."""
        for coid, o in ledger.outstanding.items():
            if o.side not in ("buy", "sell") or not o.qty:
                log.warning("shadow: working order %s of %s has no side or quantity stored; its fills come from "
                            "execution's reports", coid, o.symbol)
                continue
            filled, avg = ledger.filled(coid)
            req = OrderRequest(coid, o.correlation_id, o.symbol, o.side, o.qty, o.intent, "restored",
                               o.last_fill_ts or o.decided_ts, o.price or 1.0)
            self.sim.restore(req, "shadow", filled, avg, 0.0, "partially_filled" if filled else "accepted")
            self.counters["restored"] += 1

    def place(self, req: OrderRequest) -> None:
        self.sim.submit(req)  # idempotent by client order id

    def cancel(self, client_order_id: str) -> None:
        self.sim.cancel(client_order_id)

    def on_bar(self, bar: Mapping) -> list[tuple[Fill, float, bool]]:
        """Fills of the symbol's working orders on this bar: (fill, cumulative filled qty, order
        done). A bar not after the symbol's last one fills nothing (redelivered)."""
        symbol, ts = bar["symbol"], bar["ts"]
        last = self._last.get(symbol)
        if last is not None and ts <= last:
            return []
        self._last[symbol] = ts
        out = []
        for fill in self.sim.on_bar(bar):
            order = self.sim.get_order_by_client_id(fill.client_order_id)
            out.append((fill, order.filled_qty, not order.is_open))
            self.counters["fills"] += 1
        return out

    def on_report(self, rep: ExecutionReport) -> None:
        """Execution's report of one of the shadow's orders (the side reader's thread, under
        its lock): a fill the shadow has not made yet is taken over; a venue that closed an
        order the shadow still works closes it here too."""
        coid = rep.client_order_id
        order, req = self.sim.get_order_by_client_id(coid), self.sim.request_of(coid)
        if order is None or req is None:
            return
        if rep.filled_qty > order.filled_qty + 1e-9 and rep.avg_price is not None:
            done = rep.status in CLOSED or math.isclose(rep.filled_qty, req.qty)
            status = ("filled" if math.isclose(rep.filled_qty, req.qty) else rep.status) if done else "partially_filled"
            self.sim.put(replace(req, ts=max(req.ts, rep.ts)),  # fills again only after the reported bar
                         replace(order, filled_qty=rep.filled_qty, avg_fill_price=rep.avg_price, status=status))
            self.counters["synced"] += 1
        elif rep.status in CLOSED and rep.status != "filled":
            if rep.filled_qty + 1e-9 < order.filled_qty:
                self.counters["mismatches"] += 1
                log.error("shadow: the venue reports %s %s with %g filled, the shadow filled %g: risk's book "
                          "holds a fill the venue did not make", coid, rep.status, rep.filled_qty, order.filled_qty)
            if order.is_open:
                self.sim.cancel(coid)
