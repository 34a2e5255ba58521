"""``OrderLifecycle``: the execution component: order lifecycle, restart reconciliation and the
Alpaca bracket legs, Kafka-free. The live ``execution`` service (``live/services/execution.py``)
decodes risk.approved / exec.exits / market.raw, calls it and publishes what it returns
(``Output``: OrderEvents for exec.orders, ExecutionReports for exec.done). Its tables are
behind the ``ExecutionStore`` port (``awet_dagster.execution.store``; PostgreSQL in
``awet_dagster.storage.execution``, an in-memory twin for tests).

Size (about 800 lines, over 400): one state machine (orders in flight, cumulative fills,
brackets and their legs, the queued writes) whose parts read and change the same state;
split across modules it would be one class spread over files.

Broker: the paper simulator (``execution.broker: paper``, default; fills at the next bar's
open, like ``run_backtest``) or Alpaca paper (``alpaca``) behind ``GatedBroker`` (paper
endpoint, ``dry_run`` off, approval file present: re-checked on every order).

Order path (entries and exits, through ``OrderRouter`` exactly like the backtest):
1. ``client_order_id`` derives from the entry's correlation id (+ leg), so a redelivered
   decision maps to the same id;
2. the order row is written to ``orders`` (status ``new``) BEFORE anything is sent;
3. an id already in the table is never sent blind: if it has a broker id it was sent
   (adopt it); if not, the broker is asked by client_order_id first (a crash may have
   hit between send and update) and only an unknown id is submitted;
4. submit, update the row (status, broker id), then emit the OrderEvent (exec.orders) and,
   when blocked/refused, a rejected ExecutionReport (exec.done).
Fills: every fill is written (``fills``, order status, ``positions``), then reported on
exec.done as a CUMULATIVE ExecutionReport (filled_qty / avg_price / fee so far; consumers
derive the increment, idempotently). Event ids are deterministic.

Writes per batch, not per order: the order rows of a bus batch's approved entries and exits
are written in ONE statement before any is sent (``prepare``, the bus's ``before_batch``;
step 2 still holds). The other writes (status after submission, fills, positions) are
queued and applied in one transaction by ``flush_writes``, the bus's ``before_commit``:
after the outputs went out, before the offsets that produced them are committed. A crash
in between re-consumes those messages: a sent order's row still says ``new`` and is looked
up at the broker (step 3), the simulator is restored without the unwritten fills and fills
again from the same bars, with the same fill ids and report event ids (consumers are
idempotent on them). A read of the tables, and an order row written on its own, apply the
queue first (same transaction). Why: one to three commits per order and per fill made the
database round trips the service's bottleneck (py-spy: a burst of 200 orders/s kept the
thread waiting on commits for a second, and risk waited on those fills).

Restart: ``reconcile`` against the broker (logged; this namespace's open orders the broker
lost are marked ``expired``, and at Alpaca fills they got while we were down are booked); the
simulator (an in-process venue) is restored from the orders and fills tables (orders that
reached it: broker id set), and the state of recently updated orders is re-announced on
exec.done (a crash may have hit between a fill's DB write and its report). So a restart
neither duplicates nor loses an order or a fill.

Bracket lifecycle (Alpaca only; the simulator path is the backtest's and unchanged). An
entry with take profit and stop loss is a bracket: Alpaca works its two legs (take-profit
limit, stop-loss stop) once the parent fills, and they hold the position's shares. So:
- watch: after submission the entry is tracked in ``brackets`` until its exit is known;
  on each bar of its symbol it is read WITH its legs (``get_bracket``). A leg that fills is
  booked as the trade's EXIT: client order id ``client_order_id(correlation_id, "exit")``
  (what ``exit_request`` derives), an ``orders`` row (intent exit, ``reason`` take_profit /
  stop_loss, type limit/stop, broker id = the leg's id) written in the fill's transaction
  (fill keyed ``<coid>:<cumulative qty>``, order status, ``positions``), an OrderEvent and
  the cumulative ExecutionReport on exec.done like any exit fill, so risk, the exit
  monitor and the ledgers see the position closed. The watch ends when a leg filled, when
  the legs are canceled/expired, or when the parent closed without a fill.
- exit: an ExitEvent for a watched bracket first cancels the parent if still open and
  every open leg (``cancel_bracket``, confirmed by re-reading). If a leg had ALREADY
  filled, the broker exited the position: that fill is booked (as above) and nothing is
  sent. Otherwise the market exit is placed for the quantity the broker filled on the
  parent. A cancel the venue cannot confirm (unreachable) is retried later (RetryLater),
  never followed by a sell; a refused cancel answers a rejected exit report (the exit
  monitor fires again). A redelivered ExitEvent finds the exit id in ``orders`` and
  sends nothing.
- restart: brackets whose exit is unknown are tracked again from the orders table and
  read with their legs right after ``reconcile``: legs that filled while we were down are
  booked then (at the latest event time known for the symbol: its last stored bar or the
  entry's fill), and re-announced with the other recent states.
A leg that filled only PARTIALLY when an exit cancels it is the position's exit (booked
as above); the rest is sold by a market order of its own id (``client_order_id(correlation_id,
"exit_rest")``).

Timing: an order decided on bar t fills on the symbol's first bar after t. When that
bar already went by (free-running replay: market.raw reaches this service before the
decision made on the previous bar), the order is filled at once against the bars kept
(``catch-up``), with the same price and timestamp it would have had.

Metrics (``metrics``: the runner's ``ServiceMetrics``): orders submitted (side, venue),
failed broker calls (venue, HTTP status when known, else ``unavailable``), slippage of every
fill vs the order's decision (reference) price, the bars' age, and bar -> order latency:
the WALL-CLOCK time between this service receiving the decision's bar on market.raw and the
order's submission. Not bar ts -> submit: in a replay the bar ts is historical, and live the
bar's ts is its start (a minute/day before it is published); receipt time measures the loop.
An order whose bar this process did not see (restart, bar evicted) is not observed.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import ExitEvent, MarketRawEvent, OrderEvent, RiskDecision
from awet_dagster.execution.alpaca_broker import AlpacaPaperBroker
from awet_dagster.execution.broker import BrokerRejected, BrokerUnavailable, works_brackets
from awet_dagster.execution.gates import GatedBroker
from awet_dagster.execution.ids import client_order_id
from awet_dagster.execution.ledger import CLOSED, FillLedger
from awet_dagster.execution.orders import (
    BrokerOrder,
    OrderRequest,
    entry_request,
    execution_report,
    exit_request,
    order_event,
)
from awet_dagster.execution.reconcile import InMemoryOrderStore, reconcile
from awet_dagster.execution.router import OrderRouter
from awet_dagster.execution.simulator import PaperSimulator
from awet_dagster.execution.store import (
    OPEN_STATUSES,
    ExecutionStore,
    FillWrite,
    OrderWrite,
    PositionWrite,
    StatusWrite,
    Write,
    new_order_row,
)
from awet_dagster.observability.metrics import ServiceMetrics
from awet_dagster.risk.portfolio import Fill
from awet_dagster.streaming.events import event_to_bar
from awet_dagster.streaming.outputs import Output, RetryLater

log = logging.getLogger("awet.execution.lifecycle")

BAR_BUFFER = 64  # bars kept per symbol for catch-up fills (older ones: read from the bars table)
_NS = uuid.UUID("0b7f3c52-6a55-4a8e-9d0c-5d2f1e7a9c40")


def fill_time(order: BrokerOrder, decided: datetime, seen: datetime) -> datetime:
    """When a fill we see on bar ``seen`` happened: the venue's completion time when it says one
    inside (decision, seen], else ``seen``. A venue that reports fills bars late must not shift
    the position's opening (max hold, exits, risk) by its reporting delay; a clock that does not
    fit the bars (a replay at today's venue) falls back to the bar the fill was seen on."""
    at = order.filled_at
    if order.status == "filled" and at is not None and decided < at <= seen:
        return at
    return seen


def _eid(*parts: object) -> str:
    return str(uuid.uuid5(_NS, "|".join(str(p) for p in parts)))


def _error_status(exc: BaseException) -> str:
    """HTTP status of a failed broker call when the cause carries one, else ``unavailable``."""
    for e in (exc, exc.__cause__, exc.__context__):
        status = getattr(e, "status_code", None) or getattr(e, "status", None)
        if isinstance(status, int):
            return str(status)
    return "unavailable"


class RestorableSimulator(PaperSimulator):
    """PaperSimulator (restored from the orders table after a restart with ``restore``) that
    can fill one order against an already-seen bar (catch-up). Fill model unchanged
    (super().on_bar)."""

    def fill_only(self, bar: dict, coids: set[str]) -> list[Fill]:
        """``on_bar`` restricted to ``coids`` (the other orders already saw this bar)."""
        return self.on_bar(bar, only=coids)


def _request_payload(req: OrderRequest, ns: str) -> dict[str, Any]:
    return {"ns": ns, "intent": req.intent, "ts": req.ts.isoformat(), "correlation_id": req.correlation_id,
            "source_event_id": req.source_event_id, "reference_price": req.reference_price,
            "take_profit": req.take_profit, "stop_loss": req.stop_loss}


def _request_from_row(coid: str, symbol: str, side: str, qty: float, payload: dict) -> OrderRequest:
    return OrderRequest(coid, payload["correlation_id"], symbol, side, qty, payload.get("intent", "entry"),
                        payload.get("source_event_id") or coid, datetime.fromisoformat(payload["ts"]),
                        float(payload.get("reference_price") or 1.0), payload.get("take_profit"),
                        payload.get("stop_loss"))


class OrderLifecycle:
    """The execution component: ``start`` (restore, reconcile, re-announce), ``prepare`` (a
    batch's order rows in one write), ``handle`` (a bar, an approved decision, an exit) and
    ``flush_writes`` (the batch's writes, before its input offsets are committed).

    ``metrics``: an object with the execution metrics (``awet_dagster.observability.metrics.ServiceMetrics``) or None."""

    def __init__(self, store: ExecutionStore, broker: Any, *, initial_equity: float, orders_topic: str,
                 done_topic: str, namespace: str = "", dry_run: bool = False,
                 on_submit: Callable[[OrderRequest, BrokerOrder], None] | None = None, metrics: ServiceMetrics | None = None) -> None:
        self.metrics = metrics
        self._received: dict[str, deque] = {}  # symbol -> (bar ts, wall-clock receipt), for bar_to_order
        self.store = store
        self.broker = broker
        self.router = OrderRouter(broker, dry_run=dry_run)
        self.venue = broker.venue
        if metrics is not None:
            metrics.venue_ready(self.venue)  # order/error/slippage series at 0 from the start
        # A venue client that reports each failed call itself (AlpacaPaperBroker.on_error: also
        # the ones its retries absorb) is heard here: logged with the order's id, counted by kind.
        inner = getattr(broker, "inner", broker)
        self._reports_errors = hasattr(inner, "on_error")
        if self._reports_errors and inner.on_error is None:
            inner.on_error = self._on_broker_error
        self.dry_run = dry_run
        self.orders_topic, self.done_topic = orders_topic, done_topic
        self.ns = namespace
        self.on_submit = on_submit
        self.ledger = FillLedger(initial_equity)  # our positions (positions table)
        self.requests: dict[str, OrderRequest] = {}  # open orders we track
        # Alpaca brackets whose exit is not known yet: entry coid -> entry request / broker id.
        self.brackets: dict[str, OrderRequest] = {}
        self._boid: dict[str, str] = {}
        self.bracket_venue = not isinstance(broker, RestorableSimulator) and works_brackets(broker)
        self._last_fill: dict[str, datetime] = {}  # coid -> ts of its last stored fill (restart)
        self._cum: dict[str, tuple[float, float, float]] = {}  # coid -> qty, notional, fees reported
        self._bars: dict[str, deque] = {}
        self.submitted = 0
        self.adopted = 0
        self.fills = 0
        self.errors = 0
        self.reconcile_report = None
        #: Writes queued for the batch's transaction (``flush_writes``), in order; each is
        #: idempotent (upserts, ON CONFLICT), so a retried transaction may replay them.
        self._writes: list[Write] = []
        #: Order rows written by ``prepare`` for this batch: coid -> (payload written, the
        #: row that existed before (status, broker id) or None when inserted then).
        self._prepared: dict[str, tuple[dict[str, Any], tuple | None]] = {}

    @property
    def sim(self) -> RestorableSimulator | None:
        return self.broker if isinstance(self.broker, RestorableSimulator) else None

    def _read(self) -> ExecutionStore:
        """The store for a read: the queued writes are applied first, so it sees them."""
        if self._writes:
            self.flush_writes()
        return self.store

    def _queue(self, *writes: Write) -> None:
        self._writes.extend(writes)

    def flush_writes(self) -> None:
        """Apply the queued writes in one transaction (the bus's ``before_commit``: the
        offsets wait for it). A store error propagates (the live service: RetryLater, so
        nothing since the last checkpoint is committed, and the rebuilt service restores from
        the tables and consumes those messages again)."""
        if self._writes:
            self._commit()

    def _commit(self, new_orders: Sequence[Mapping[str, Any]] = ()) -> dict[str, tuple]:
        """The queued writes, then ``new_orders`` (inserted unless known), in one transaction;
        the queue is emptied only once it committed."""
        existed = self.store.commit(self._writes, new_orders)
        self._writes.clear()
        return existed

    # ------------------------------------------------------------------ start-up
    def start(self) -> list[Output]:
        """Restore state from the DB, reconcile with the broker, re-announce recent states."""
        outputs: list[Output] = []
        store = self._read()
        self.ledger.rebuild(*store.ledger_rows(self.ns))
        rows = store.order_states(self.ns)
        recent = datetime.now(UTC) - timedelta(days=1)
        entries: list[tuple[OrderRequest, str, str | None, float]] = []
        exits: dict[str, tuple[str, dict]] = {}
        for coid, symbol, side, qty, status, boid, payload, fq, fn, ff, last_ts, updated in rows:
            if not payload or "ts" not in payload:
                continue
            req = _request_from_row(coid, symbol, side, qty, payload)
            if fq > 0:
                self._cum[coid] = (fq, fn, ff)
                self._last_fill[coid] = last_ts
            if req.intent == "exit":
                exits[coid] = (status, payload)
            elif req.take_profit is not None and req.stop_loss is not None:
                entries.append((req, status, boid, fq))
            if payload.get("bracket_leg"):
                pass  # an exit made by a bracket leg: followed through its entry (below)
            elif status not in CLOSED and boid is not None:
                self.requests[coid] = req
                if self.sim is not None:
                    self.sim.restore(req, boid, fq, fn / fq if fq else None, ff,
                                     "partially_filled" if fq > 0 else "accepted")
            if fq > 0 and updated is not None and updated >= recent:
                st = "filled" if math.isclose(fq, qty) else status if status in CLOSED else "partially_filled"
                outputs.append(self._report_output(req, last_ts, fq, fn / fq, ff, st, boid))
        # Our view for the broker comparison: this namespace's open orders and positions (its
        # ledger), not every row of a database that other namespaces (runs, tests) share; the
        # positions table has one row per symbol, whoever wrote it last.
        mine_open = {row.client_order_id for row in rows if row.status in OPEN_STATUSES}
        held = {s: p.qty for s, p in self.ledger.portfolio.positions.items() if p.qty}
        try:
            rep = reconcile(self.broker, InMemoryOrderStore(mine_open, held))
        except BrokerUnavailable as exc:
            log.warning("execution: reconciliation skipped, broker unavailable: %s", exc)
        else:
            self.reconcile_report = rep
            if not rep.in_sync:
                mism = dict(rep.position_mismatches)
                shown = dict(list(mism.items())[:5])  # a log line, not a dump of every symbol
                log.warning("execution: reconcile: adopt %d order(s), %d not open at broker, %d position "
                            "mismatch(es) %s%s", len(rep.adopt_orders), len(rep.not_open_at_broker), len(mism),
                            shown, " ..." if len(mism) > len(shown) else "")
                for symbol, ratio in rep.likely_splits.items():
                    log.warning("execution: reconcile: %s differs from the broker by a split ratio (%.4g): a "
                                "corporate action the bars have not shown yet (their split_factor); the "
                                "ledger carries it when the first bar with the new factor arrives", symbol, ratio)
            mine = {c for c in rep.not_open_at_broker if c in self.requests or self.sim is None}
            for coid in sorted(mine):
                try:
                    final = self.broker.get_order_by_client_id(coid)
                except BrokerUnavailable:
                    continue
                req = self.requests.get(coid)
                if (self.sim is None and final is not None and req is not None
                        and final.filled_qty > self._cum.get(coid, (0.0, 0.0, 0.0))[0] + 1e-9):
                    outputs += self._sync_order(req, final, self._restart_ts(req))  # filled while we were down
                else:
                    status = final.status if final is not None else "expired"
                    self._set_status(coid, status, final.broker_order_id if final else None)
                if final is None or final.status in CLOSED:
                    self.requests.pop(coid, None)
        if self.bracket_venue:
            outputs += self._restore_brackets(entries, exits)
        self.flush_writes()  # stored before the re-announcements are sent
        return outputs

    def _restore_brackets(self, entries: list[tuple[OrderRequest, str, str | None, float]],
                          exits: dict[str, tuple[str, dict]]) -> list[Output]:
        """Track again the brackets whose exit is not known; book legs that filled while down."""
        for req, status, boid, fq in entries:
            if boid is None or (status in CLOSED and fq <= 0):
                continue  # never reached the venue / closed without a fill: no legs worked
            ex = exits.get(client_order_id(req.correlation_id, "exit"))
            if ex is not None and not (ex[1].get("bracket_leg") and ex[0] not in CLOSED):
                continue  # exited (market exit after the legs were canceled, or a leg filled)
            self.brackets[req.client_order_id] = req
            self._boid[req.client_order_id] = boid
        outputs: list[Output] = []
        for coid, entry in list(self.brackets.items()):
            try:
                parent = self.broker.get_bracket(coid, self._boid.get(coid))
            except (BrokerUnavailable, BrokerRejected) as exc:
                self.errors += 1
                self._broker_error(exc)
                log.warning("execution: bracket %s not checked on start (next bar will): %s", coid, exc)
                continue
            if parent is None:
                continue
            ts = self._restart_ts(entry)
            outputs += self._sync_order(entry, parent, ts, announce_close=False)
            if not parent.is_open:
                self.requests.pop(coid, None)
            outputs += self._sync_legs(coid, entry, parent, ts)
        if self.brackets:
            log.info("execution: following the legs of %d bracket entr(y/ies)", len(self.brackets))
        return outputs

    def _restart_ts(self, req: OrderRequest) -> datetime:
        """Event time for what the venue did while we were down: the latest we know for the
        symbol (its last stored bar, the order's last fill, its decision). Not the wall clock:
        in a replay that would lie ahead of every bar and the ledgers would never book it."""
        known = [t for t in (req.ts, self._last_fill.get(req.client_order_id), self._read().last_bar_ts(req.symbol))
                 if t]
        return max(known)

    # ------------------------------------------------------------------ handlers
    def handle(self, event: MarketRawEvent | RiskDecision | ExitEvent) -> list[Output]:
        if isinstance(event, MarketRawEvent):
            return self.on_bar(event)
        if isinstance(event, RiskDecision):
            if not event.approved:
                return []
            return self.place(_entry_of(event))
        if isinstance(event, ExitEvent):
            if client_order_id(event.correlation_id, "entry") in self.brackets:
                return self.exit_bracket(event)
            out = self.cancel_entry(event)
            return out + self.place(exit_request(event))
        raise TypeError(f"unexpected event {type(event).__name__}")

    def prepare(self, events: Sequence[RiskDecision | ExitEvent]) -> None:
        """Before a batch (the bus's ``before_batch``, with the batch's decisions and exits):
        write the order rows of its approved entries and exits (paper simulator) in one
        transaction, with the writes still queued, instead of one per order; ``place`` then
        finds them written. A row written for an order that is then not sent stays ``new``
        like after a crash between step 2 and sending (module doc)."""
        self._prepared = {}
        if self.sim is None:
            return  # Alpaca: a bracket's exit row is written differently (exit_bracket); one by one
        rows: dict[str, dict[str, Any]] = {}
        for ev in events:
            if isinstance(ev, RiskDecision):
                if not ev.approved:
                    continue
                req = _entry_of(ev)
            elif client_order_id(ev.correlation_id, "entry") in self.brackets:
                continue
            else:
                req = exit_request(ev)
            rows.setdefault(req.client_order_id, _order_row(req, _request_payload(req, self.ns)))
        if not rows:
            return
        existed = self._commit(list(rows.values()))
        self._prepared = {c: (r["payload"], existed.get(c)) for c, r in rows.items()}

    def on_bar(self, ev: MarketRawEvent) -> list[Output]:
        bar = event_to_bar(ev)
        buf = self._bars.get(ev.symbol)
        if buf is None:
            buf = self._bars[ev.symbol] = deque(maxlen=BAR_BUFFER)
        if buf and ev.ts <= buf[-1]["ts"]:
            return []  # redelivered / out of order: its fills were booked when first seen
        buf.append(bar)
        if self.metrics is not None:
            rec = self._received.get(ev.symbol)
            if rec is None:
                rec = self._received[ev.symbol] = deque(maxlen=BAR_BUFFER)
            rec.append((ev.ts, time.time()))
            self.metrics.bar_seen(ev.symbol, ev.ts.timestamp())
        ratio = self.ledger.on_split_factor(ev.symbol, ev.split_factor, ev.ts)
        if ratio is not None:
            self._carry_split(ev.symbol, ratio)
        if self.sim is not None:
            return self._book(self.sim.on_bar(bar))  # the simulator carries its book through the split
        return self._poll_broker(ev.symbol, ev.ts)

    def _carry_split(self, symbol: str, ratio: float) -> None:
        """Our copies of the symbol's working orders on the venue's new basis (quantities x
        ratio, prices / ratio); the ledger already carried the position. The broker
        (simulator, Alpaca) reports on the new basis from this bar on."""
        def px(v: float | None) -> float | None:
            return v / ratio if v else v

        for coid, req in list(self.requests.items()):
            if req.symbol != symbol:
                continue
            self.requests[coid] = replace(
                req, qty=req.qty * ratio, reference_price=req.reference_price / ratio,
                take_profit=px(req.take_profit), stop_loss=px(req.stop_loss))
            if coid in self._cum:
                q, n, f = self._cum[coid]
                self._cum[coid] = (q * ratio, n, f)

    def cancel_entry(self, event: ExitEvent) -> list[Output]:
        """Like the backtest: an exit stops a still-working entry of the same position."""
        coid = client_order_id(event.correlation_id, "entry")
        req = self.requests.get(coid)
        if req is None:
            return []
        try:
            order = self.broker.cancel(coid)
        except BrokerUnavailable as exc:
            self.errors += 1
            self._broker_error(exc)
            log.warning("execution: cancel %s failed: %s", coid, exc)
            return []
        if order is None or order.status != "canceled":
            return []
        self._set_status(coid, "canceled", order.broker_order_id)
        self.requests.pop(coid, None)
        q, n, f = self._cum.get(coid, (0.0, 0.0, 0.0))
        return [self._report_output(req, event.ts, q, n / q if q else None, f, "canceled", order.broker_order_id)]

    def exit_bracket(self, event: ExitEvent) -> list[Output]:
        """Alpaca bracket: cancel the parent if open and the legs, THEN sell what is held;
        a leg that already filled is the exit (booked, nothing sent)."""
        coid = client_order_id(event.correlation_id, "entry")
        entry = self.brackets[coid]
        try:
            parent = self.broker.cancel_bracket(coid, self._boid.get(coid))
        except BrokerUnavailable as exc:
            self.errors += 1
            self._broker_error(exc)
            # The legs may still hold the shares (or fill): never sell on top of them.
            raise RetryLater(f"cannot cancel the bracket legs of {coid}: {exc}") from exc
        except BrokerRejected as exc:
            self.errors += 1
            self._broker_error(exc)
            log.error("execution: cancel of bracket %s refused, exit not sent: %s", coid, exc)
            req = exit_request(event)
            rep = execution_report(req, ts=event.ts, filled_qty=0.0, avg_price=None, fee=0.0, status="rejected",
                                   venue=self.venue, dry_run=self.dry_run,
                                   message=f"bracket legs not canceled: {exc}")
            return [Output(self.done_topic, rep.model_copy(update={
                "event_id": _eid("report", req.client_order_id, "rejected", event.event_id)}))]
        if parent is None:  # the venue does not know the entry: nothing of it works there
            log.warning("execution: bracket entry %s unknown at the broker", coid)
            self._untrack(coid)
            return self.cancel_entry(event) + self.place(exit_request(event))
        was_open = coid in self.requests
        out = self._sync_order(entry, parent, event.ts, announce_close=was_open)
        if not parent.is_open:
            self.requests.pop(coid, None)
        out += self._sync_legs(coid, entry, parent, event.ts)
        sold = sum(leg.filled_qty for leg in parent.legs)
        held = parent.filled_qty - sold
        self._untrack(coid)
        if sold > 0:  # the broker exited (part of) the position through a leg: that is the "exit"
            if held <= 1e-9:
                return out
            # The leg sold part of it before the exit canceled it: the rest goes out under an id
            # of its own (deterministic, so a redelivered exit or a restart never sends it twice).
            rest = replace(exit_request(event), client_order_id=client_order_id(event.correlation_id, "exit_rest"),
                           qty=held)
            log.warning("execution: %s: its bracket legs filled %.6g of %.6g before the exit; selling the "
                        "remaining %.6g as %s", coid, sold, parent.filled_qty, held, rest.client_order_id)
            return out + self.place(rest, reason=event.reason)
        if held <= 1e-9:
            return out  # the entry never filled: canceled, nothing to sell
        req = exit_request(event)
        if not math.isclose(req.qty, held):
            req = replace(req, qty=held)  # what the broker filled, not what a ledger believed
        return out + self.place(req, reason=event.reason)

    def place(self, req: OrderRequest, reason: str | None = None) -> list[Output]:
        coid = req.client_order_id
        payload = _request_payload(req, self.ns)
        if reason is not None:
            payload["reason"] = reason
        # The row (status new) exists BEFORE anything is sent; an existing row is returned.
        # Written by ``prepare`` for the batch, or now with the writes queued so far.
        prepared = self._prepared.pop(coid, None)
        if prepared is not None and prepared[0] == payload:
            row = prepared[1]
        else:
            row = self._commit([_order_row(req, payload)]).get(coid)
        if row is not None:
            status, boid = row
            known = None
            if boid is not None or status != "new":
                known = self.broker.get_order_by_client_id(coid) if status not in CLOSED else None
                self.adopted += 1
                ev = self._order_event(req, known, status=None if known else status)
                return [Output(self.orders_topic, ev)]
            try:
                known = self.broker.get_order_by_client_id(coid)
            except BrokerUnavailable as exc:
                raise RetryLater(f"cannot tell whether {coid} reached the broker: {exc}") from exc
            if known is not None:  # sent before a crash, row not updated yet: adopt
                self.adopted += 1
                self._after_submit(req, known)
                return [Output(self.orders_topic, self._order_event(req, known))] + self._catch_up(req)
        try:
            res = self.router.route(req)
        except BrokerUnavailable as exc:
            self.errors += 1
            self._broker_error(exc)
            # Unknown outcome: redeliver later; the row (status new) makes the retry look it up first.
            raise RetryLater(f"broker unavailable for {coid}: {exc}") from exc
        if res.order is None:
            self._set_status(coid, "rejected", None)
            out = [Output(self.orders_topic, self._order_event(req, None, status="rejected"))]
            rep = res.report.model_copy(update={"event_id": _eid("report", coid, "rejected")})
            return out + [Output(self.done_topic, rep)]
        self.submitted += 1
        self._submitted_metrics(req)
        if self.on_submit is not None:
            self.on_submit(req, res.order)
        self._after_submit(req, res.order)
        return [Output(self.orders_topic, self._order_event(req, res.order))] + self._catch_up(req)

    # ------------------------------------------------------------------ helpers
    def _on_broker_error(self, kind: str, coid: str, detail: str) -> None:
        log.warning("execution: %s error %s on order %s: %s", self.venue, kind, coid or "-", detail)
        if self.metrics is not None:
            self.metrics.broker_error(self.venue, kind)

    def _broker_error(self, exc: BaseException) -> None:
        """A broker call that failed for good: counted here only for a venue that does not report
        its errors call by call (those are counted as they happen, see _on_broker_error)."""
        if self.metrics is not None and not self._reports_errors:
            self.metrics.broker_error(self.venue, _error_status(exc))

    def _submitted_metrics(self, req: OrderRequest) -> None:
        m = self.metrics
        if m is None:
            return
        m.order_submitted(req.side, self.venue)
        for ts, received in reversed(self._received.get(req.symbol, ())):
            if ts == req.ts:
                m.bar_to_order(time.time() - received)
                break

    def _slippage(self, req: OrderRequest, price: float) -> None:
        """Fill vs decision price in bps, positive = worse (bought higher / sold lower)."""
        ref = req.reference_price
        if self.metrics is None or not ref or ref <= 0:
            return
        sign = 1.0 if req.side == "buy" else -1.0
        self.metrics.slippage(req.symbol, self.venue, sign * (price - ref) / ref * 1e4)

    def _after_submit(self, req: OrderRequest, order: BrokerOrder) -> None:
        self.requests[req.client_order_id] = req
        if (self.bracket_venue and req.intent == "entry" and req.take_profit is not None
                and req.stop_loss is not None):
            self.brackets[req.client_order_id] = req
            self._boid[req.client_order_id] = order.broker_order_id
        self._queue(StatusWrite(req.client_order_id, order.status, order.broker_order_id, submitted=True))
        self.ledger.expect(req.client_order_id, req.symbol, req.ts, req.intent, req.correlation_id)

    def _set_status(self, coid: str, status: str, broker_order_id: str | None) -> None:
        self._queue(StatusWrite(coid, status, broker_order_id))

    def _order_event(self, req: OrderRequest, order: BrokerOrder | None, status: str | None = None) -> OrderEvent:

        ev = order_event(req, order, venue=self.venue, dry_run=self.dry_run, status=status)
        return ev.model_copy(update={"event_id": _eid("order", req.client_order_id, ev.status)})

    def _report_output(self, req: OrderRequest, ts: datetime, cum_qty: float, avg: float | None, fees: float,
                       status: str, broker_order_id: str | None, message: str | None = None) -> Output:
        rep = execution_report(req, ts=ts, filled_qty=min(cum_qty, req.qty), avg_price=avg, fee=fees,
                               status=status, venue=self.venue, dry_run=self.dry_run,
                               broker_order_id=broker_order_id, message=message)
        return Output(self.done_topic, rep.model_copy(update={"event_id": _eid("report", req.client_order_id,
                                                                                status, cum_qty)}))

    def _catch_up(self, req: OrderRequest) -> list[Output]:
        sim = self.sim
        if sim is None:
            return []
        buf = self._bars.get(req.symbol)
        if not buf or buf[-1]["ts"] <= req.ts:
            return []  # the fill bar has not come yet: on_bar fills it
        late = [b for b in buf if b["ts"] > req.ts]
        if buf[0]["ts"] > req.ts:
            # The bars right after the decision were evicted from the buffer: persist_bars
            # stored them (market.raw is consumed by both; it may lag, hence the buffer first).
            late = self._read().bars_between(req.symbol, buf[0]["bar_type"], req.ts, buf[0]["ts"], BAR_BUFFER) + late
        fills: list[Fill] = []
        for bar in late:
            fills.extend(sim.fill_only(bar, {req.client_order_id}))
            order = sim.get_order_by_client_id(req.client_order_id)
            if order is None or not order.is_open:
                break
        return self._book(fills)

    def _book(self, fills: Sequence[Fill]) -> list[Output]:
        out: list[Output] = []
        for fill in fills:
            coid = fill.client_order_id
            req = self.requests.get(coid) or (self.sim.request_of(coid) if self.sim else None)
            if req is None:
                continue
            q, n, f = self._cum.get(coid, (0.0, 0.0, 0.0))
            q, n, f = q + fill.qty, n + fill.qty * fill.price, f + fill.fee
            self._cum[coid] = (q, n, f)
            status = "filled" if math.isclose(q, req.qty) else "partially_filled"
            order = self.broker.get_order_by_client_id(coid)
            boid = order.broker_order_id if order else None
            self._write_fill(req, f"{coid}:{fill.ts.isoformat()}", fill.qty, fill.price, fill.fee, fill.ts,
                             (q, n, f), status)
            self.fills += 1
            self._slippage(req, fill.price)
            if status == "filled":
                self.requests.pop(coid, None)
            out.append(self._report_output(req, fill.ts, q, n / q, f, status, boid))
        return out

    def _write_fill(self, req: OrderRequest, fill_id: str, qty: float, price: float, fee: float, ts: datetime,
                    cum: tuple[float, float, float], status: str, broker_order_id: str | None = None,
                    new_order: OrderWrite | None = None) -> None:
        """Queue for the batch's transaction: (the order row, when ``new_order``) the fill,
        the order's status, the position (``positions``, from this service's ledger, as of
        this fill)."""
        q, n, f = cum
        self.ledger.on_report(execution_report(req, ts=ts, filled_qty=q, avg_price=n / q, fee=f,
                                               status=status, venue=self.venue, dry_run=self.dry_run))
        self.ledger.apply_until(ts, req.symbol)
        pos = self.ledger.portfolio.position(req.symbol)
        position = (req.symbol, pos.qty if pos else 0.0, pos.avg_price if pos else 0.0,
                    pos.opened_ts if pos else None, pos.peak_price if pos else None)
        if new_order is not None:
            self._queue(new_order)
        self._queue(FillWrite(fill_id, req.client_order_id, req.symbol, qty, price, fee, ts),
                    StatusWrite(req.client_order_id, status, broker_order_id), PositionWrite(*position))

    def _poll_broker(self, symbol: str, ts: datetime) -> list[Output]:
        """Alpaca: look up our open orders of ``symbol`` on each of its bars (bracket entries
        with their legs, also once the parent filled); report new fills."""
        out: list[Output] = []
        seen: set[str] = set()
        for coid, req in list(self.requests.items()):
            if req.symbol != symbol:
                continue
            bracket = coid in self.brackets
            order = self._venue_order(coid, bracket)
            if order is None:
                continue
            out += self._sync_order(req, order, ts)
            if order.status in CLOSED:
                self.requests.pop(coid, None)
            if bracket:
                seen.add(coid)
                out += self._sync_legs(coid, req, order, ts)
        for coid, entry in list(self.brackets.items()):
            if entry.symbol != symbol or coid in seen:
                continue
            order = self._venue_order(coid, True)
            if order is not None:
                out += self._sync_order(entry, order, ts, announce_close=False)
                out += self._sync_legs(coid, entry, order, ts)
        return out

    def _venue_order(self, coid: str, bracket: bool) -> BrokerOrder | None:
        try:
            if bracket:
                return self.broker.get_bracket(coid, self._boid.get(coid))
            return self.broker.get_order_by_client_id(coid)
        except Exception as exc:  # noqa: BLE001 - BrokerUnavailable/Rejected: try on the next bar
            self.errors += 1
            self._broker_error(exc)
            log.warning("execution: status of %s unknown: %s", coid, exc)
            return None

    def _sync_order(self, req: OrderRequest, order: BrokerOrder, ts: datetime,
                    announce_close: bool = True) -> list[Output]:
        """Book the venue's cumulative fill of ``order`` beyond what we booked (one
        transaction) and report it; a close without a new fill is reported when ``announce_close``."""
        coid = req.client_order_id
        q, n, f = self._cum.get(coid, (0.0, 0.0, 0.0))
        if order.filled_qty > q + 1e-9 and order.avg_fill_price is not None:
            ts = fill_time(order, req.ts, ts)
            inc = order.filled_qty - q
            new_n = order.avg_fill_price * order.filled_qty
            price = (new_n - n) / inc
            self._cum[coid] = (order.filled_qty, new_n, f)
            self._write_fill(req, f"{coid}:{order.filled_qty}", inc, price, 0.0, ts, (order.filled_qty, new_n, f),
                             order.status, order.broker_order_id)
            self.fills += 1
            self._slippage(req, price)
            return [self._report_output(req, ts, order.filled_qty, order.avg_fill_price, f, order.status,
                                        order.broker_order_id)]
        if order.status in CLOSED and announce_close:
            self._set_status(coid, order.status, order.broker_order_id)
            return [self._report_output(req, ts, q, n / q if q else None, f, order.status, order.broker_order_id)]
        return []

    def _untrack(self, coid: str) -> None:
        self.brackets.pop(coid, None)
        self._boid.pop(coid, None)

    def _sync_legs(self, coid: str, entry: OrderRequest, parent: BrokerOrder, ts: datetime) -> list[Output]:
        """Book a bracket leg that filled as the trade's exit; stop watching once the legs are done."""
        filled = [leg for leg in parent.legs if leg.filled_qty > 0]
        if filled:
            if len(filled) > 1:
                log.error("execution: %s: more than one bracket leg filled (%s); booking the first", coid,
                          [leg.broker_order_id for leg in filled])
            out = self._book_leg(entry, filled[0], ts)
            if not filled[0].is_open:
                self._untrack(coid)
            return out
        if not parent.is_open and (parent.filled_qty <= 0
                                   or (parent.legs and not any(leg.is_open for leg in parent.legs))):
            self._untrack(coid)  # closed without a fill, or the legs were canceled / expired
        return []

    def _book_leg(self, entry: OrderRequest, leg: BrokerOrder, ts: datetime) -> list[Output]:
        exit_coid = client_order_id(entry.correlation_id, "exit")
        q, n, f = self._cum.get(exit_coid, (0.0, 0.0, 0.0))
        if leg.filled_qty <= q + 1e-9 or leg.avg_fill_price is None:
            return []  # booked already (a later poll, a restart)
        ts = fill_time(leg, entry.ts, ts)  # when the leg filled, not when we looked
        reason = leg.exit_reason or f"{leg.order_type}_leg"
        row = self._read().order_qty_payload(exit_coid)
        new_order = None
        if row is not None:
            if not row[1].get("bracket_leg"):
                log.error("execution: %s leg of %s filled but exit %s was sent as an order; not booked twice",
                          reason, entry.client_order_id, exit_coid)
                return []
            req = _request_from_row(exit_coid, entry.symbol, leg.side, row[0], row[1])
        else:
            ref = entry.take_profit if reason == "take_profit" else entry.stop_loss if reason == "stop_loss" else None
            req = OrderRequest(exit_coid, entry.correlation_id, entry.symbol, leg.side, leg.qty, "exit",
                               leg.broker_order_id, ts, float(ref or leg.avg_fill_price))
            payload = {**_request_payload(req, self.ns), "reason": reason, "bracket_leg": leg.broker_order_id,
                       "entry_client_order_id": entry.client_order_id}
            new_order = OrderWrite(exit_coid, entry.correlation_id, entry.symbol, leg.side, leg.qty, leg.order_type,
                                   leg.status, leg.broker_order_id, datetime.now(UTC), payload)
        inc = leg.filled_qty - q
        new_n = leg.avg_fill_price * leg.filled_qty
        price = (new_n - n) / inc
        self._cum[exit_coid] = (leg.filled_qty, new_n, f)
        self._write_fill(req, f"{exit_coid}:{leg.filled_qty}", inc, price, 0.0, ts, (leg.filled_qty, new_n, f),
                         leg.status, leg.broker_order_id, new_order)
        self.fills += 1
        self._slippage(req, price)
        log.info("execution: %s leg of %s filled at the broker (%.6g @ %.6g): booked as exit %s", reason,
                 entry.client_order_id, leg.filled_qty, leg.avg_fill_price, exit_coid)
        out = [Output(self.orders_topic, self._order_event(req, leg))] if new_order is not None else []
        return out + [self._report_output(req, ts, leg.filled_qty, leg.avg_fill_price, f, leg.status,
                                          leg.broker_order_id, message=f"bracket {reason} leg filled at the broker")]


def _order_row(req: OrderRequest, payload: dict[str, Any]) -> dict[str, Any]:
    """The ``orders`` row (status new) written before ``req`` is sent."""
    return new_order_row(req.client_order_id, req.correlation_id, req.symbol, req.side, req.qty, payload)


def _entry_of(decision: RiskDecision) -> OrderRequest:
    price = decision.notional / decision.qty if decision.qty > 0 and decision.notional > 0 else (
        decision.limit_price or decision.take_profit or 1.0)
    return entry_request(decision, price)


def make_broker(cfg: AwetConfig, broker: str | None = None) -> Any:
    """The venue of ``execution.broker`` (or ``broker``): the restorable paper simulator or
    Alpaca paper behind the three safety gates."""
    kind = broker or cfg.execution.broker
    ex = cfg.execution
    if kind == "paper":
        return RestorableSimulator(ex.slippage_bps, ex.fee_per_order, ex.max_participation)
    if kind == "alpaca":
        return GatedBroker(AlpacaPaperBroker.from_config(ex), ex)
    raise ValueError(f"unknown execution.broker {kind!r}")
