"""``execution``: risk.approved + exec.exits (+ market.raw for fills) -> exec.orders, exec.done.

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
Fills: every fill is written (``fills``, order status, ``positions``) in one transaction,
then reported on exec.done as a CUMULATIVE ExecutionReport (filled_qty / avg_price / fee
so far; consumers derive the increment, idempotently). Event ids are deterministic.

Restart: ``reconcile`` against the broker (logged; our open orders the broker lost are
marked ``expired``); the simulator (an in-process venue) is restored from the orders and
fills tables (orders that reached it: broker id set), and the state of recently updated
orders is re-announced on exec.done (a crash may have hit between a fill's DB write and
its report). So a restart neither duplicates nor loses an order or a fill.

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
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from awet_dagster.contracts import ExecutionReport, ExitEvent, MarketRawEvent, OrderEvent, RiskDecision
from awet_dagster.contracts.topics import EXEC_DONE, EXEC_EXITS, EXEC_ORDERS, MARKET_RAW, RISK_APPROVED
from awet_dagster.execution import (
    AlpacaPaperBroker,
    BrokerOrder,
    BrokerUnavailable,
    GatedBroker,
    OrderRequest,
    OrderRouter,
    PaperSimulator,
    client_order_id,
    entry_request,
    execution_report,
    exit_request,
    reconcile,
)
from awet_dagster.risk.portfolio import Fill
from awet_dagster.storage.trading import PostgresOrderStore
from awet_dagster.streaming import event_to_bar
from live.bus import MessageContext, Output, RetryLater
from live.services._common import LazyConnection, LiveService, contract_of, db_settings, make_bus
from live.services._ledger import CLOSED, FillLedger

log = logging.getLogger("awet.live.execution")

NAME = "execution"
BAR_BUFFER = 64  # bars kept per symbol for catch-up fills (older ones: read from the bars table)
_NS = uuid.UUID("0b7f3c52-6a55-4a8e-9d0c-5d2f1e7a9c40")


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
    """PaperSimulator that can be restored from the orders table after a restart and fill
    one order against an already-seen bar (catch-up). Fill model unchanged (super().on_bar)."""

    def restore(self, req: OrderRequest, broker_order_id: str, filled_qty: float, avg: float | None,
                fees: float, status: str) -> None:
        from awet_dagster.execution.simulator import _Working

        order = BrokerOrder(req.client_order_id, broker_order_id, req.symbol, req.side, req.qty, filled_qty, avg,
                            status, "bracket" if req.take_profit else "simple")
        self._orders[req.client_order_id] = _Working(req, order, fees)

    def fill_only(self, bar: dict, coids: set[str]) -> list[Fill]:
        """``on_bar`` restricted to ``coids`` (the other orders already saw this bar)."""
        saved = self._orders
        self._orders = {k: v for k, v in saved.items() if k in coids}
        try:
            fills = self.on_bar(bar)
            updated = self._orders
        finally:
            self._orders = saved
        self._orders.update(updated)
        return fills


def _request_payload(req: OrderRequest, ns: str) -> dict[str, Any]:
    return {"ns": ns, "intent": req.intent, "ts": req.ts.isoformat(), "correlation_id": req.correlation_id,
            "source_event_id": req.source_event_id, "reference_price": req.reference_price,
            "take_profit": req.take_profit, "stop_loss": req.stop_loss}


def _request_from_row(coid: str, symbol: str, side: str, qty: float, payload: dict) -> OrderRequest:
    return OrderRequest(coid, payload["correlation_id"], symbol, side, qty, payload.get("intent", "entry"),
                        payload.get("source_event_id") or coid, datetime.fromisoformat(payload["ts"]),
                        float(payload.get("reference_price") or 1.0), payload.get("take_profit"),
                        payload.get("stop_loss"))


class Executor:
    """The execution service's state and handlers (``component`` of the LiveService)."""

    def __init__(self, cfg: Any, conn: LazyConnection, broker: Any, *, orders_topic: str, done_topic: str,
                 namespace: str = "", dry_run: bool = False,
                 on_submit: Callable[[OrderRequest, BrokerOrder], None] | None = None, metrics: Any = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._received: dict[str, deque] = {}  # symbol -> (bar ts, wall-clock receipt), for bar_to_order
        self.conn = conn
        self.broker = broker
        self.router = OrderRouter(broker, dry_run=dry_run)
        self.venue = broker.venue
        if metrics is not None:
            metrics.venue_ready(self.venue)  # order/error/slippage series at 0 from the start
        self.dry_run = dry_run
        self.orders_topic, self.done_topic = orders_topic, done_topic
        self.ns = namespace
        self.on_submit = on_submit
        self.ledger = FillLedger(cfg.risk.initial_equity)  # our positions (positions table)
        self.requests: dict[str, OrderRequest] = {}  # open orders we track
        self._cum: dict[str, tuple[float, float, float]] = {}  # coid -> qty, notional, fees reported
        self._bars: dict[str, deque] = {}
        self.submitted = 0
        self.adopted = 0
        self.fills = 0
        self.errors = 0
        self.reconcile_report = None

    @property
    def sim(self) -> RestorableSimulator | None:
        return self.broker if isinstance(self.broker, RestorableSimulator) else None

    def _db(self) -> Any:
        return self.conn.get()

    # ------------------------------------------------------------------ start-up
    def start(self) -> list[Output]:
        """Restore state from the DB, reconcile with the broker, re-announce recent states."""
        import psycopg

        outputs: list[Output] = []
        try:
            conn = self._db()
            self.ledger.rebuild(conn, self.ns)
            rows = conn.execute(
                "SELECT o.client_order_id, o.symbol, o.side, o.qty, o.status, o.broker_order_id, o.payload, "
                "COALESCE(SUM(f.qty), 0), COALESCE(SUM(f.qty * f.price), 0), COALESCE(SUM(f.fee), 0), MAX(f.ts), "
                "o.updated_at FROM orders o LEFT JOIN fills f USING (client_order_id) "
                "WHERE COALESCE(o.payload->>'ns', '') = %s GROUP BY o.client_order_id", (self.ns,)).fetchall()
        except psycopg.OperationalError as exc:
            self.conn.reset()
            raise RetryLater(f"orders table unavailable: {exc}") from exc
        recent = datetime.now(UTC) - timedelta(days=1)
        for coid, symbol, side, qty, status, boid, payload, fq, fn, ff, last_ts, updated in rows:
            if not payload or "ts" not in payload:
                continue
            req = _request_from_row(coid, symbol, side, qty, payload)
            if fq > 0:
                self._cum[coid] = (fq, fn, ff)
            if status not in CLOSED and boid is not None:
                self.requests[coid] = req
                if self.sim is not None:
                    self.sim.restore(req, boid, fq, fn / fq if fq else None, ff,
                                     "partially_filled" if fq > 0 else "accepted")
            if fq > 0 and updated is not None and updated >= recent:
                st = "filled" if math.isclose(fq, qty) else status if status in CLOSED else "partially_filled"
                outputs.append(self._report_output(req, last_ts, fq, fn / fq, ff, st, boid))
        try:
            rep = reconcile(self.broker, PostgresOrderStore(self._db()))
        except BrokerUnavailable as exc:
            log.warning("execution: reconciliation skipped, broker unavailable: %s", exc)
        else:
            self.reconcile_report = rep
            if not rep.in_sync:
                log.warning("execution: reconcile: adopt %d order(s), %d not open at broker, positions %s",
                            len(rep.adopt_orders), len(rep.not_open_at_broker), dict(rep.position_mismatches))
            mine = {c for c in rep.not_open_at_broker if c in self.requests or self.sim is None}
            for coid in sorted(mine):
                try:
                    final = self.broker.get_order_by_client_id(coid)
                except BrokerUnavailable:
                    continue
                status = final.status if final is not None else "expired"
                self._set_status(coid, status, final.broker_order_id if final else None)
                if final is None or final.status in CLOSED:
                    self.requests.pop(coid, None)
        return outputs

    # ------------------------------------------------------------------ handlers
    def handle(self, event: Any, ctx: MessageContext) -> list[Output]:
        import psycopg

        try:
            return self._handle(event)
        except psycopg.OperationalError as exc:
            # A DB outage must not dead-letter an order: redeliver once the DB is back.
            self.conn.reset()
            raise RetryLater(f"database unavailable: {exc}") from exc

    def _handle(self, event: Any) -> list[Output]:
        if isinstance(event, MarketRawEvent):
            return self.on_bar(event)
        if isinstance(event, RiskDecision):
            if not event.approved:
                return []
            price = event.notional / event.qty if event.qty > 0 and event.notional > 0 else (
                event.limit_price or event.take_profit or 1.0)
            return self.place(entry_request(event, price))
        if isinstance(event, ExitEvent):
            out = self.cancel_entry(event)
            return out + self.place(exit_request(event))
        raise TypeError(f"unexpected event {type(event).__name__}")

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
        if self.sim is not None:
            return self._book(self.sim.on_bar(bar))
        return self._poll_broker(ev.symbol, ev.ts)

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

    def place(self, req: OrderRequest) -> list[Output]:
        import psycopg

        coid = req.client_order_id
        try:
            store = PostgresOrderStore(self._db())
            row = self._db().execute("SELECT status, broker_order_id FROM orders WHERE client_order_id = %s",
                                     (coid,)).fetchone()
            if row is None:
                store.record_order(client_order_id=coid, correlation_id=req.correlation_id, symbol=req.symbol,
                                   side=req.side, qty=req.qty, order_type="market", status="new",
                                   broker_order_id=None, submitted_at=None,
                                   payload=_request_payload(req, self.ns))
        except psycopg.OperationalError as exc:
            self.conn.reset()
            raise RetryLater(f"orders table unavailable: {exc}") from exc
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
    def _broker_error(self, exc: BaseException) -> None:
        if self.metrics is not None:
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
        self._db().execute(
            "UPDATE orders SET status = %s, broker_order_id = %s, submitted_at = COALESCE(submitted_at, now()), "
            "updated_at = now() WHERE client_order_id = %s",
            (order.status, order.broker_order_id, req.client_order_id))
        self.ledger.expect(req.client_order_id, req.symbol, req.ts, req.intent, req.correlation_id)

    def _set_status(self, coid: str, status: str, broker_order_id: str | None) -> None:
        self._db().execute(
            "UPDATE orders SET status = %s, broker_order_id = COALESCE(%s, broker_order_id), updated_at = now() "
            "WHERE client_order_id = %s", (status, broker_order_id, coid))

    def _order_event(self, req: OrderRequest, order: BrokerOrder | None, status: str | None = None) -> OrderEvent:
        from awet_dagster.execution import order_event

        ev = order_event(req, order, venue=self.venue, dry_run=self.dry_run, status=status)
        return ev.model_copy(update={"event_id": _eid("order", req.client_order_id, ev.status)})

    def _report_output(self, req: OrderRequest, ts: datetime, cum_qty: float, avg: float | None, fees: float,
                       status: str, broker_order_id: str | None) -> Output:
        rep = execution_report(req, ts=ts, filled_qty=min(cum_qty, req.qty), avg_price=avg, fee=fees,
                               status=status, venue=self.venue, dry_run=self.dry_run,
                               broker_order_id=broker_order_id)
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
            from awet_dagster.storage.bars import BAR_COLUMNS

            rows = self._db().execute(
                f"SELECT {', '.join(BAR_COLUMNS)} FROM bars WHERE symbol = %s AND bar_type = %s AND ts > %s "
                "AND ts < %s ORDER BY ts LIMIT %s",
                (req.symbol, buf[0]["bar_type"], req.ts, buf[0]["ts"], BAR_BUFFER)).fetchall()
            late = [dict(zip(BAR_COLUMNS, r, strict=True)) for r in rows] + late
        fills: list[Fill] = []
        for bar in late:
            fills.extend(sim.fill_only(bar, {req.client_order_id}))
            order = sim.get_order_by_client_id(req.client_order_id)
            if order is None or not order.is_open:
                break
        return self._book(fills)

    def _book(self, fills: Sequence[Fill]) -> list[Output]:
        import psycopg

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
            try:
                conn = self._db()
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO fills (fill_id, client_order_id, symbol, qty, price, fee, ts) "
                        "VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (fill_id) DO NOTHING",
                        (f"{coid}:{fill.ts.isoformat()}", coid, fill.symbol, fill.qty, fill.price, fill.fee, fill.ts))
                    conn.execute("UPDATE orders SET status = %s, updated_at = now() WHERE client_order_id = %s",
                                 (status, coid))
                    self.ledger.on_report(execution_report(req, ts=fill.ts, filled_qty=q, avg_price=n / q, fee=f,
                                                           status=status, venue=self.venue, dry_run=self.dry_run))
                    self.ledger.apply_until(fill.ts, fill.symbol)
                    pos = self.ledger.portfolio.position(fill.symbol)
                    PostgresOrderStore(conn).upsert_position(
                        fill.symbol, pos.qty if pos else 0.0, pos.avg_price if pos else 0.0,
                        pos.opened_ts if pos else None, pos.peak_price if pos else None)
            except psycopg.OperationalError as exc:
                self.conn.reset()
                raise RetryLater(f"fills table unavailable: {exc}") from exc
            self.fills += 1
            self._slippage(req, fill.price)
            if status == "filled":
                self.requests.pop(coid, None)
            out.append(self._report_output(req, fill.ts, q, n / q, f, status, boid))
        return out

    def _poll_broker(self, symbol: str, ts: datetime) -> list[Output]:
        """Alpaca: look up our open orders of ``symbol`` on each of its bars; report new fills."""
        out: list[Output] = []
        for coid, req in list(self.requests.items()):
            if req.symbol != symbol:
                continue
            try:
                order = self.broker.get_order_by_client_id(coid)
            except Exception as exc:  # noqa: BLE001 - BrokerUnavailable/Rejected: try on the next bar
                self.errors += 1
                self._broker_error(exc)
                log.warning("execution: status of %s unknown: %s", coid, exc)
                continue
            if order is None:
                continue
            q, n, f = self._cum.get(coid, (0.0, 0.0, 0.0))
            if order.filled_qty > q + 1e-9 and order.avg_fill_price is not None:
                inc = order.filled_qty - q
                new_n = order.avg_fill_price * order.filled_qty
                price = (new_n - n) / inc
                self._cum[coid] = (order.filled_qty, new_n, f)
                self._db().execute(
                    "INSERT INTO fills (fill_id, client_order_id, symbol, qty, price, fee, ts) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (fill_id) DO NOTHING",
                    (f"{coid}:{order.filled_qty}", coid, symbol, inc, price, 0.0, ts))
                self._set_status(coid, order.status, order.broker_order_id)
                self._slippage(req, price)
                out.append(self._report_output(req, ts, order.filled_qty, order.avg_fill_price, f, order.status,
                                               order.broker_order_id))
            elif order.status in CLOSED:
                self._set_status(coid, order.status, order.broker_order_id)
                out.append(self._report_output(req, ts, q, n / q if q else None, f, order.status,
                                               order.broker_order_id))
            if order.status in CLOSED:
                self.requests.pop(coid, None)
        return out


def make_broker(cfg: Any, broker: str | None = None) -> Any:
    kind = broker or cfg.execution.broker
    ex = cfg.execution
    if kind == "paper":
        return RestorableSimulator(ex.slippage_bps, ex.fee_per_order, ex.max_participation)
    if kind == "alpaca":
        return GatedBroker(AlpacaPaperBroker.from_config(ex), ex)
    raise ValueError(f"unknown execution.broker {kind!r}")


def build(cfg: Any, endpoints: Any, *, approved_topic: str = RISK_APPROVED, exits_topic: str = EXEC_EXITS,
          market_topic: str = MARKET_RAW, orders_topic: str = EXEC_ORDERS, done_topic: str = EXEC_DONE,
          group: str | None = None, name: str = NAME, namespace: str = "", broker: Any = None,
          on_submit: Callable[[OrderRequest, BrokerOrder], None] | None = None, tracker: Any = None,
          metrics: Any = None, **bus_kwargs: Any) -> LiveService:
    """``broker``: an instance (tests) or None (from ``execution.broker``). ``namespace``
    scopes the rows this instance restores (tests sharing one database). ``metrics``: a
    ``live.metrics.ServiceMetrics`` for the trading metrics (the runner passes it)."""
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    b = broker if broker is not None and not isinstance(broker, str) else make_broker(cfg, broker)
    # The simulator is not a real venue: its orders are not "dry-run" orders.
    dry_run = bool(cfg.execution.dry_run) if b.venue == "alpaca" else False
    ex = Executor(cfg, conn, b, orders_topic=orders_topic, done_topic=done_topic, namespace=namespace,
                  dry_run=dry_run, on_submit=on_submit, metrics=metrics)
    for topic, model in ((orders_topic, OrderEvent), (done_topic, ExecutionReport)):
        if contract_of(topic, model) is not model:
            raise ValueError(f"topic {topic!r} does not carry {model.__name__}")
    if tracker is not None:
        bus_kwargs.setdefault("on_metrics", tracker.hook(name, [market_topic, approved_topic, exits_topic]))
    svc = make_bus(
        cfg, endpoints, name=name,
        topics={market_topic: contract_of(market_topic, MarketRawEvent),
                approved_topic: contract_of(approved_topic, RiskDecision),
                exits_topic: contract_of(exits_topic, ExitEvent)},
        handler=ex.handle, group=group, resources=[conn], component=ex, **bus_kwargs,
    )
    try:
        recovered = ex.start()
        for out in recovered:
            svc.producer.send(out.topic, out.event, key=out.key)
        if recovered:
            svc.producer.flush(30)
            log.info("execution: re-announced %d recent order state(s)", len(recovered))
    except Exception:
        svc.close()
        raise
    return svc
