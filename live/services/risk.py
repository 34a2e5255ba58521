"""``risk``: signals.scored -> risk.approved | risk.rejected, every decision audited.

One ``RiskEngine`` per process, as in ``run_backtest``:
- state: kill switch and daily anchors in ``risk_state`` (``PostgresRiskStateStore``, so a
  tripped kill switch survives restarts; read through a 1 s cache so an operator's
  ``awet kill-switch trip`` is seen within a second without a query per bar);
- portfolio: rebuilt from the ``fills``/``orders`` tables on start, then updated from
  ``exec.done`` (read by a side ``TopicTail``, see ``awet_dagster.execution.ledger.FillLedger``) — decided:
  consume exec.done rather than share memory with the execution service, so the two can
  run in different processes;
- clock: EVERY scored signal (one per bar, passed or not) marks the bar
  (``engine.on_bar``: return history for CVaR, marks, loss limits); only tradable ones are
  evaluated (the backtest's rule). Before that, fills are booked in event order: when a
  symbol that already has a bar at this ts has an order decided earlier, the bar waits
  (``risk.fill_wait_s``, bounded) for that order's fill report — so sizing sees the same
  equity, positions and pending orders as the backtest did at that bar;
- idempotence: the decision of a signal is stored in its ``audit_log`` record; a
  redelivered signal re-emits the stored decision instead of deciding again (a second
  look would see its own order as "pending" and reject it).
- batching: a bus batch costs two round trips, not two per signal. The pre-pass
  (``prepare``, the bus's ``before_batch``) warms up every new symbol of the batch and
  loads the stored decisions of its tradable signals, one query each; the batch's audit
  records are written in one transaction by ``write_audit`` (``before_produce``), i.e.
  still BEFORE any of the batch's decisions is published.
Decision event ids are deterministic (uuid5 of the signal's event id).

Metrics (``metrics``: the runner's ``ServiceMetrics``): after every signal's bar is marked,
the kill switch gauge (the cached store read the engine just made), realised/unrealised/
total PnL, exposure per symbol and in total, and the session's PnL vs its anchor; fresh
rejections by reason code. Set once at start as well (kill switch, PnL, exposure), so they
are exported before the first signal. They only refresh when a signal arrives: a kill
switch tripped by an operator between bars shows at the next bar (plus the 1 s cache).
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from confluent_kafka import Message

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import ExecutionReport, OrderEvent, RiskDecision, ScoredSignal
from awet_dagster.contracts.topics import EXEC_DONE, EXEC_ORDERS, RISK_APPROVED, RISK_REJECTED, SIGNALS_SCORED
from awet_dagster.execution import client_order_id
from awet_dagster.execution.ledger import FillLedger
from awet_dagster.risk import RiskEngine
from awet_dagster.risk.state import KillSwitchState
from awet_dagster.signals import signal_passed
from awet_dagster.storage.trading import (
    AuditRecord,
    PostgresRiskStateStore,
    audit_details_by_correlation,
    ledger_rows,
    record_audits,
)
from awet_dagster.streaming import read_last_bars_many
from awet_dagster.sources.corporate_actions import adjusted_close
from live.bus import MessageContext, Output, RetryLater
from live.services._common import (
    time_guard,
    LazyConnection,
    LiveService,
    contract_of,
    db_outage_is_retry,
    db_settings,
    decoded,
    lane_of,
)
from live.services._ledger import build_with_fill_tail, wait_for_fills
from live.tail import TopicTail

log = logging.getLogger("awet.live.risk")

NAME = "risk"
_NS = uuid.UUID("3c1b7a0e-5f7d-4d1e-8f55-1b2a9c0d4e61")


class CachedRiskStateStore:
    """``PostgresRiskStateStore`` with an optional key namespace (tests sharing one DB) and
    a read cache: anchors are immutable once set; the kill switch is re-read after ``ttl_s``.
    Writes go straight to the table. ``conn``: a LazyConnection."""

    def __init__(self, conn: LazyConnection, namespace: str = "", ttl_s: float = 1.0) -> None:
        self._conn = conn
        self._namespace = namespace
        self._ttl = ttl_s
        self._kill: tuple[float, KillSwitchState] | None = None
        self._anchors: dict[date, float] = {}

    def _store(self) -> PostgresRiskStateStore:
        return PostgresRiskStateStore(self._conn.get(), self._namespace)

    def get_kill_switch(self) -> KillSwitchState:
        now = time.monotonic()
        if self._kill is None or now - self._kill[0] >= self._ttl:
            self._kill = (now, self._store().get_kill_switch())
        return self._kill[1]

    def set_kill_switch(self, state: KillSwitchState) -> None:
        self._store().set_kill_switch(state)
        self._kill = (time.monotonic(), state)

    def get_daily_anchor(self, session: date) -> float | None:
        value = self._anchors.get(session)
        if value is None:
            value = self._store().get_daily_anchor(session)
            if value is not None:
                self._anchors[session] = value
        return value

    def set_daily_anchor(self, session: date, equity: float) -> None:
        self._store().set_daily_anchor(session, equity)
        self._anchors[session] = float(equity)


class RiskService:
    """State and handler of the risk service (the LiveService's ``component``)."""

    def __init__(self, cfg: AwetConfig, conn: LazyConnection, *, approved_topic: str, rejected_topic: str,
                 namespace: str = "", fill_wait_s: float | None = None,
                 metrics: Any = None, input_model: type[ScoredSignal] = ScoredSignal) -> None:
        self.cfg = cfg
        self.input_model = input_model
        self.metrics = metrics
        self.conn = conn
        self.approved_topic, self.rejected_topic = approved_topic, rejected_topic
        self.ns = namespace
        self.guard = time_guard(cfg)
        self.fill_wait_s = cfg.risk.fill_wait_s if fill_wait_s is None else fill_wait_s
        self.stopping: Callable[[], bool] = lambda: False  # the bus's stop request (build_with_fill_tail)
        self.ledger = FillLedger(cfg.risk.initial_equity)
        self.store = CachedRiskStateStore(conn, namespace)
        self.engine = RiskEngine.from_config(cfg, self.ledger.portfolio, self.store)
        self.tail: TopicTail | None = None
        self._ts: datetime | None = None
        self._seen: set[str] = set()
        self._warm: set[tuple[str, str]] = set()  # (symbol, bar type) with CVaR history loaded
        # Batch state: decisions stored for the batch's signals (looked up by the pre-pass),
        # decisions made in this batch, audit records to write before publishing.
        self._looked_up: set[str] = set()
        self._stored: dict[str, dict] = {}
        self._audit: list[AuditRecord] = []
        self._in_batch = False
        self.counters = {"signals": 0, "evaluated": 0, "approved": 0, "rejected": 0, "replayed": 0,
                         "fill_wait_timeouts": 0}

    # ------------------------------------------------------------------ start-up
    def start(self) -> None:
        conn = self.conn.get()
        self.ledger.rebuild(*ledger_rows(conn, self.ns))
        rows = conn.execute(
            "SELECT symbol, payload->>'ts' FROM orders WHERE COALESCE(payload->>'ns', '') = %s "
            "AND payload->>'intent' = 'entry' AND updated_at > now() - interval '2 days' ORDER BY 2",
            (self.ns,)).fetchall()
        for symbol, ts in rows:  # the throttle counts orders per minute / symbol-day / cooldown
            if ts:
                self.engine.throttle.record(symbol, datetime.fromisoformat(ts))
        self._publish(None)

    def _publish(self, ts: datetime | None) -> None:
        """Kill switch, PnL and exposure gauges from the store and the portfolio."""
        m = self.metrics
        if m is None:
            return
        pf = self.ledger.portfolio
        m.set_kill_switch(self.store.get_kill_switch().tripped)
        m.set_pnl(pf.realised_pnl, pf.unrealised_pnl)
        m.set_exposure({sym: pos.market_value for sym, pos in pf.positions.items()})
        if ts is not None:
            m.set_daily_pnl(pf.equity - self.engine.anchor(ts))

    def on_side_event(self, topic: str, event: Any, ts_ms: int) -> None:  # tail thread, under the lock
        if isinstance(event, ExecutionReport):
            self.ledger.on_report(event)
        elif isinstance(event, OrderEvent):
            self.ledger.on_order(event)

    # ------------------------------------------------------------------ batch pre-pass / audit
    def _db(self, fn, *args: Any) -> Any:
        """Run a DB step; an outage becomes RetryLater (the batch is redelivered, not lost)."""
        with db_outage_is_retry(self.conn, "database unavailable"):
            return fn(*args)

    def prepare(self, batch: Sequence[Message]) -> None:
        """One query for the history of the batch's new symbols, one for the stored
        decisions of its tradable signals (redeliveries)."""
        self._in_batch = True
        self._audit.clear()
        self._looked_up.clear()
        self._stored.clear()
        new: dict[tuple[str, str], datetime] = {}
        tradable: dict[str, str] = {}  # signal event id -> correlation id
        for msg, sig in decoded(batch, self.input_model):
            if not self.guard.admissible(sig.symbol, "signal", sig.ts, lane_of(msg)):
                continue  # dead-lettered by the handler; must not set the warm-up point
            if (sig.symbol, sig.bar_type) not in self._warm:
                new.setdefault((sig.symbol, sig.bar_type), sig.ts)
            if signal_passed(sig):
                tradable[sig.event_id] = sig.correlation_id
        if new:
            self._db(self._warm_up_many, new)
        if tradable:
            found = self._db(audit_details_by_correlation, self.conn.get(), "risk", sorted(set(tradable.values())),
                             "decision")
            for details in found:
                if details.get("signal_event_id") in tradable and details.get("decision"):
                    self._stored[details["signal_event_id"]] = details["decision"]
            self._looked_up.update(tradable)

    def write_audit(self, contexts: Sequence[MessageContext] = ()) -> int:
        """The batch's audit records, in one transaction, before its decisions are published."""
        self._in_batch = False
        rows, self._audit = self._audit, []
        return self._db(record_audits, self.conn.get(), rows) if rows else 0

    def _warm_up_many(self, first_ts: dict[tuple[str, str], datetime]) -> None:
        """CVaR history of each new (symbol, bar type): the bars of the type being traded (the
        signal's), one query per bar type."""
        by_type: dict[str, dict[str, datetime]] = {}
        for (symbol, bar_type), ts in first_ts.items():
            by_type.setdefault(bar_type, {})[symbol] = ts
        for bar_type, wanted in by_type.items():
            history = read_last_bars_many(self.conn.get(), wanted, bar_type, self.cfg.risk.cvar_lookback_bars + 1)
            for symbol in wanted:
                self._feed_history(symbol, bar_type, history.get(symbol, []))

    def _warm_up(self, symbol: str, bar_type: str, ts: datetime) -> None:
        if (symbol, bar_type) not in self._warm:
            self._warm_up_many({(symbol, bar_type): ts})

    def _feed_history(self, symbol: str, bar_type: str, bars: list[dict]) -> None:
        for b in bars:
            self.engine.history.update(symbol, b["ts"], adjusted_close(b))  # CVaR on adjusted returns
        self._warm.add((symbol, bar_type))

    def _stored_decision(self, signal: ScoredSignal) -> dict | None:
        if signal.event_id in self._stored:
            return self._stored[signal.event_id]
        if signal.event_id in self._looked_up:
            return None  # the pre-pass looked: not decided before
        if self._in_batch:
            log.warning("risk: signal %s was not seen by the batch pre-pass", signal.event_id)
        # Handled outside a bus batch (tests, tools): the pre-pass's lookup for this one signal.
        for details in audit_details_by_correlation(self.conn.get(), "risk", [signal.correlation_id], "decision"):
            if details.get("signal_event_id") == signal.event_id and details.get("decision"):
                return details["decision"]
        return None

    # ------------------------------------------------------------------ handler
    def handle(self, signal: ScoredSignal, ctx: MessageContext) -> list[Output]:
        outputs = self._db(self._handle, signal)
        if not self._in_batch:  # called without the bus's batch hooks: store before publishing
            self.write_audit()
        return outputs

    def _book_until(self, symbol: str, ts: datetime, split_factor: float = 1.0) -> tuple[bool, dict[str, float]]:
        """Book fills up to (ts, symbol), waiting (bounded) for those this bar must bring;
        (an order of the symbol is working, the entries in flight by symbol). A split
        (``split_factor`` changed) is carried through first."""
        tail = self.tail
        if self._ts != ts:
            self._ts, self._seen = ts, set()
        self._seen.add(symbol)
        seen = frozenset(self._seen)
        if tail is None:
            self.ledger.on_split_factor(symbol, split_factor, ts)
            self.ledger.apply_until(ts, symbol)
            return self.ledger.pending_order(symbol), self.ledger.pending_exposure()
        with tail.cond:
            if self.ledger.missing_fills(seen, ts):
                ok = wait_for_fills(tail.cond, lambda: not self.ledger.missing_fills(seen, ts), self.fill_wait_s,
                                    self.stopping)
                if not ok and self.stopping():
                    # Redelivered to the next start instead of decided without its fills.
                    raise RetryLater(f"stopping while {symbol} at {ts.isoformat()} waited for fills")
                if not ok:
                    self.counters["fill_wait_timeouts"] += 1
                    log.warning("risk: no fill report for %s at %s within %.1fs; deciding without it",
                                self.ledger.missing_fills(seen, ts), ts.isoformat(), self.fill_wait_s)
            self.ledger.on_split_factor(symbol, split_factor, ts)
            self.ledger.apply_until(ts, symbol)
            return self.ledger.pending_order(symbol), self.ledger.pending_exposure()

    def _handle(self, signal: ScoredSignal) -> list[Output]:
        symbol, ts = signal.symbol, signal.ts
        self.counters["signals"] += 1
        self._warm_up(symbol, signal.bar_type, ts)
        pending, in_flight = self._book_until(symbol, ts, signal.split_factor)
        self.engine.on_bar(symbol, ts, signal.price, signal.price * signal.adj_factor)
        self._publish(ts)
        if not signal_passed(signal):
            return []
        stored = self._stored_decision(signal)
        if stored is not None:
            decision = RiskDecision.model_validate(stored)
            self.counters["replayed"] += 1
            if decision.approved:
                self.engine.throttle.record(symbol, ts)
                self._expect(decision)
        else:
            outcome = self.engine.evaluate(signal, has_pending_order=pending, pending_exposure=in_flight)
            decision = outcome.decision.model_copy(update={"event_id": str(uuid.uuid5(_NS, signal.event_id))})
            stored = decision.model_dump(mode="json")
            audit = dict(outcome.audit, event_id=decision.event_id, decision=stored, ns=self.ns)
            self._audit.append(AuditRecord("risk", "risk.approved" if decision.approved else "risk.rejected",
                                           symbol, signal.correlation_id, audit, datetime.now(UTC)))
            self._stored[signal.event_id] = stored  # a duplicate later in this batch replays it
            self.counters["evaluated"] += 1
            if decision.approved:
                self._expect(decision)
            elif self.metrics is not None:
                for reason in decision.reasons:
                    self.metrics.risk_rejection(reason)
                self._publish(ts)  # evaluate may have tripped the kill switch
        self.counters["approved" if decision.approved else "rejected"] += 1
        return [Output(self.approved_topic if decision.approved else self.rejected_topic, decision)]

    def _expect(self, d: RiskDecision) -> None:
        coid = client_order_id(d.correlation_id, "entry")
        price = d.notional / d.qty if d.qty > 0 else None
        if self.tail is not None:
            with self.tail.cond:
                self.ledger.expect(coid, d.symbol, d.ts, "entry", d.correlation_id, qty=d.qty, price=price,
                                     side=d.side)
        else:
            self.ledger.expect(coid, d.symbol, d.ts, "entry", d.correlation_id, qty=d.qty, price=price,
                                     side=d.side)


def build(cfg: AwetConfig, endpoints: Any, *, input_topic: str = SIGNALS_SCORED, approved_topic: str = RISK_APPROVED,
          rejected_topic: str = RISK_REJECTED, done_topic: str = EXEC_DONE, orders_topic: str = EXEC_ORDERS,
          group: str | None = None, name: str = NAME, namespace: str = "",
          fill_wait_s: float | None = None, tracker: Any = None, metrics: Any = None,
          **bus_kwargs: Any) -> LiveService:
    """``metrics``: a ``live.metrics.ServiceMetrics`` for the trading gauges (the runner passes it)."""
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    svc_state = RiskService(cfg, conn, approved_topic=approved_topic, rejected_topic=rejected_topic,
                            namespace=namespace, fill_wait_s=fill_wait_s,
                            metrics=metrics, input_model=contract_of(input_topic, ScoredSignal))
    for topic in (approved_topic, rejected_topic):
        if contract_of(topic, RiskDecision) is not RiskDecision:
            raise ValueError(f"topic {topic!r} does not carry RiskDecision")
    return build_with_fill_tail(cfg, endpoints, name=name, state=svc_state, conn=conn, input_topic=input_topic,
                                input_contract=ScoredSignal, done_topic=done_topic, orders_topic=orders_topic,
                                group=group, tracker=tracker, bus_kwargs=bus_kwargs)

