"""``FillLedger``: the event-time portfolio a live service keeps from ``exec.done``.

Risk and exit_monitor each need the portfolio AS OF the bar they handle, exactly like
``run_backtest`` (fills of bar t are booked before bar t's risk check and exit check).
Fills arrive on their own topic, possibly late, so the ledger:
- rebuilds the portfolio from the ``fills`` (+ ``orders``) tables on start;
- turns each ExecutionReport (cumulative filled_qty / avg_price / fee) into the
  incremental ``Fill`` it adds — idempotent: a report not beyond the known cumulative
  quantity is a duplicate (redelivery, re-read after restart) and is ignored;
- keeps those fills PENDING until the owner applies them in event order
  (``apply_until(ts, symbol)``: every fill with (ts, symbol) <= the bar's);
- tracks OUTSTANDING orders (working at the venue) so the owner knows which fills a bar
  must bring: an order decided before bar t of its symbol fills at t (simulator: next
  bar's open) — ``missing_fills(symbols, ts)`` lists those not reported yet.
Not thread-safe by itself: callers hold the TopicTail's condition lock.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from awet_dagster.contracts import ExecutionReport, OrderEvent
from awet_dagster.risk.portfolio import Fill, Portfolio
from awet_dagster.sources.corporate_actions import SplitWatch
from live.services._common import contract_of, make_bus, time_guard, wait_until
from live.services._tail import tail_for

log = logging.getLogger("awet.live.ledger")

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
    def rebuild(self, conn: Any, namespace: str = "") -> int:
        """Book every stored fill (orders.payload->>'ns' = namespace) and the open orders."""
        # Each fill with the split factor of the bar it filled on: fills on either side of a
        # split are booked on their own basis and the position carried through it.
        rows = conn.execute(
            "SELECT f.client_order_id, f.symbol, f.qty, f.price, f.fee, f.ts, o.side, o.correlation_id, "
            "COALESCE(o.payload->>'intent', 'entry'), "
            "(SELECT max(b.split_factor) FROM bars b WHERE b.symbol = f.symbol AND b.ts = f.ts) "
            "FROM fills f JOIN orders o USING (client_order_id) "
            "WHERE COALESCE(o.payload->>'ns', '') = %s ORDER BY f.ts, f.symbol, f.fill_id",
            (namespace,),
        ).fetchall()
        for coid, symbol, qty, price, fee, ts, side, corr, intent, factor in rows:
            if factor is not None:
                self.on_split_factor(symbol, float(factor), ts)
            q, n, f = self._cum.get(coid, (0.0, 0.0, 0.0))
            self._cum[coid] = (q + qty, n + qty * price, f + fee)
            self.portfolio.apply_fill(Fill(coid, symbol, side, qty, price, fee, ts, corr or coid, intent))
        for coid, symbol, status, corr, qty, payload, side in conn.execute(
            "SELECT client_order_id, symbol, status, correlation_id, qty, payload, side FROM orders "
            "WHERE COALESCE(payload->>'ns', '') = %s", (namespace,),
        ).fetchall():
            if status in CLOSED:
                self._closed.add(coid)
                continue
            ts = datetime.fromisoformat(payload["ts"]) if payload and payload.get("ts") else None
            if ts is not None:
                price = (payload or {}).get("reference_price")
                self.outstanding[coid] = Outstanding(symbol, ts, (payload or {}).get("intent", "entry"),
                                                     corr or coid, qty=float(qty or 0.0),
                                                     price=float(price) if price else None, side=side)
        return len(rows)

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


def build_with_fill_tail(cfg: Any, endpoints: Any, *, name: str, state: Any, conn: Any, input_topic: str,
                         input_contract: type, done_topic: str, orders_topic: str, group: str | None,
                         tracker: Any, bus_kwargs: dict[str, Any]) -> Any:
    """The bus of a service that books fills in bar order (risk, exit monitor): start `state`,
    start its side reader of `exec.done` + `exec.orders`, then the bus on `input_topic`;
    on any failure close what was opened."""
    if tracker is not None:
        bus_kwargs.setdefault("on_metrics", tracker.hook(name, [input_topic]))
    tail = tail_for(cfg, endpoints, name, {done_topic: contract_of(done_topic, ExecutionReport),
                                           orders_topic: contract_of(orders_topic, OrderEvent)},
                    state.on_side_event)
    try:
        state.start()
        tail.since_ms = tracker.start_ms if tracker is not None else 0
        state.tail = tail.start()
        if tracker is not None:
            tracker.add_tail(name, tail)
        # Optional batch hooks of the state (risk: warm-up/lookup pre-pass, audit before publish).
        hooks = {k: getattr(state, m) for k, m in (("before_batch", "prepare"), ("before_produce", "write_audit"))
                 if callable(getattr(state, m, None))}
        guard = getattr(state, "guard", None) or time_guard(cfg)
        bus = make_bus(
            cfg, endpoints, name=name, topics={input_topic: contract_of(input_topic, input_contract)}, guard=guard,
            handler=state.handle, group=group, resources=[tail, conn], component=state, **hooks, **bus_kwargs,
        )
        state.stopping = lambda: bus.stop_requested  # a stop cuts a fill wait short
        return bus
    except Exception:
        tail.close()
        conn.close()
        raise


#: The fill wait of risk and the exit monitor: ``_common.wait_until`` (stop-aware).
wait_for_fills = wait_until
