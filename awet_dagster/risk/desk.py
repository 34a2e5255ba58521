"""``RiskDesk``: the risk component of the live loop (Kafka-free): scored signals in,
decisions out, every decision audited.

One ``BarStep`` (``risk.step``: ledger, risk engine, exit rules, paper venue) per process, the
object ``run_backtest`` drives too:
- state: kill switch and daily anchors in the store's risk state, read through a 1 s cache
  (``CachedRiskStateStore``) so a tripped kill switch survives restarts and an operator's
  ``awet kill-switch trip`` is seen within a second without a query per bar;
- portfolio: a ``FillLedger`` rebuilt from the stored fills and orders on ``start``, then
  fed with the fill reports and order events a side reader delivers (``on_side_event``); the
  exit rules (``exits.watch.ExitWatch``) watch the positions of the same book;
- clock: EVERY scored signal (one per bar, passed or not) first books the fills of the bar,
  then marks it (``engine.on_bar``: return history for CVaR, marks, loss limits), then its
  symbol's position is checked for an exit on the close (ExitEvents to ``exits_topic``), then,
  only for tradable ones, risk decides: the order of ``run_backtest``'s loop body;
- fills, without waiting: with the paper venue (``execution.broker: paper``) the desk computes
  them itself (``execution.shadow.ShadowVenue``: the same simulator over the orders it placed,
  filled on the bar's open and volume the signal carries), so its book at a bar is the
  backtest's whatever the timing of execution's reports; those reports are booked too,
  whichever comes first (the ledger takes cumulative quantities). With Alpaca a fill is known
  only from its report: a bar of a symbol with an order decided earlier waits for it, bounded
  (``fill_wait_s``, through the ``SideInputs`` port; an order still unreported then counts as
  in flight: pending order, pending exposure at its decision price, as ``run_backtest``
  counts working orders). An order approved earlier in the SAME batch is not published yet
  (decisions go out after the batch's audit), so its fill cannot come: the signal raises
  ``PublishFirst`` instead of waiting in vain (the bus publishes the batch so far and hands
  the signal back);
- idempotence: the decision of a signal is stored in its audit record; a redelivered signal
  re-emits the stored decision instead of deciding again (a second look would see its own
  order as "pending" and reject it);
- batching: ``prepare`` (before a batch) warms up every new symbol of the batch and loads the
  stored decisions of its tradable signals, one query each; ``write_audit`` writes the batch's
  audit records in one transaction, BEFORE any of its decisions is published.
Decision event ids are deterministic (uuid5 of the signal's event id).

Metrics (``metrics``: ``awet_dagster.observability.metrics.ServiceMetrics`` or None): after every signal's bar is
marked, the kill switch gauge, realised/unrealised/total PnL, exposure per symbol and in
total, and the session's PnL vs its anchor; fresh rejections by reason code. Set once at
start as well, so they are exported before the first signal.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import BarClock, ExecutionReport, OrderEvent, RiskDecision, ScoredSignal
from awet_dagster.execution.ids import client_order_id
from awet_dagster.execution.ledger import FillLedger
from awet_dagster.execution.shadow import ShadowVenue
from awet_dagster.exits.watch import ExitWatch
from awet_dagster.observability.metrics import ServiceMetrics
from awet_dagster.risk.engine import RiskEngine
from awet_dagster.risk.state import CachedRiskStateStore
from awet_dagster.risk.step import BarStep
from awet_dagster.risk.store import AuditRecord, RiskStore
from awet_dagster.signals.engine import signal_passed
from awet_dagster.sources.corporate_actions import adjusted_close
from awet_dagster.streaming.outputs import Output, PublishFirst
from awet_dagster.streaming.sequencer import EventTimeSequencer
from awet_dagster.streaming.side_inputs import NO_SIDE_INPUTS, SideInputs, wait_or_retry
from awet_dagster.streaming.time_guard import TimeGuard

log = logging.getLogger("awet.risk.desk")

_NS = uuid.UUID("3c1b7a0e-5f7d-4d1e-8f55-1b2a9c0d4e61")


class RiskDesk:
    def __init__(self, cfg: AwetConfig, store: RiskStore, *, approved_topic: str, rejected_topic: str,
                 exits_topic: str, guard: TimeGuard, namespace: str = "", fill_wait_s: float | None = None,
                 metrics: ServiceMetrics | None = None,
                 side: SideInputs = NO_SIDE_INPUTS, sequencer: EventTimeSequencer | None = None) -> None:
        self.cfg = cfg
        # Event-time order of the input (risk.event_order "clock"): the bus hands signals over
        # through it; the clocks come with the side events. What it released is stored with each
        # batch's audit and resumed at start (a restart does not wait for handled times' clocks).
        self.sequencer = sequencer
        self._released_saved: dict[str, datetime] = {}
        self.metrics = metrics
        self.db = store
        self.approved_topic, self.rejected_topic, self.exits_topic = approved_topic, rejected_topic, exits_topic
        self.ns = namespace
        self.guard = guard
        self.side = side
        self.ledger = FillLedger(cfg.risk.initial_equity)
        self.fill_wait_s = cfg.risk.fill_wait_s if fill_wait_s is None else fill_wait_s
        self.store = CachedRiskStateStore(store.state)
        self.engine = RiskEngine.from_config(cfg, self.ledger.portfolio, self.store)
        self.exits = ExitWatch(cfg, store, self.ledger)
        # Venue None: one whose fills only its reports tell (Alpaca).
        self.step = BarStep(self.ledger, self.engine, self.exits, ShadowVenue.for_venue(cfg))
        self._ts: datetime | None = None
        self._seen: set[str] = set()  # symbols with a bar at _ts (whose fills are due at it)
        self._warm: set[tuple[str, str]] = set()  # (symbol, bar type) with CVaR history loaded
        # Batch state: decisions stored for the batch's signals (looked up by the pre-pass),
        # decisions made in this batch, audit records to write before publishing.
        self._looked_up: set[str] = set()
        self._stored: dict[str, dict] = {}
        self._audit: list[AuditRecord] = []
        self._in_batch = False
        self._unpublished: set[str] = set()  # client order ids of this batch's approvals and exits
        self.counters = {"signals": 0, "evaluated": 0, "approved": 0, "rejected": 0, "replayed": 0,
                         "fill_wait_timeouts": 0}

    @property
    def shadow(self) -> ShadowVenue | None:
        """The paper venue risk computes fills with (None: fills come from reports alone)."""
        return self.step.venue

    # ------------------------------------------------------------------ start-up / side inputs
    def start(self) -> None:
        self.ledger.rebuild(*self.db.ledger_rows(self.ns))
        if self.shadow is not None:
            self.shadow.restore(self.ledger)
        self.exits.start()
        if self.sequencer is not None:
            self._released_saved = self.store.get_released()
            self.sequencer.resume(self._released_saved)
        for symbol, ts in self.db.recent_entries(self.ns):  # the throttle: orders per minute / day / cooldown
            self.engine.throttle.record(symbol, ts)
        self._publish(None)

    def on_side_event(self, event: Any) -> None:  # the side reader's thread, under side.lock()
        if isinstance(event, ExecutionReport):
            self.ledger.on_report(event)
            if self.shadow is not None and event.venue != self.shadow.sim.venue:
                # Risk's configuration says paper, execution trades elsewhere: its fills cannot
                # be computed here. From now on they come from the reports alone.
                log.error("risk: execution reports fills from venue %r but execution.broker here is paper: "
                          "risk stops computing fills (fix the configuration: both must read one)", event.venue)
                self.step.venue = None
            if self.shadow is not None:
                self.shadow.on_report(event)
            self.exits.on_report(event)
        elif isinstance(event, OrderEvent):
            self.ledger.on_order(event)
        elif isinstance(event, BarClock) and self.sequencer is not None:
            self.sequencer.on_clock(event.bar_type, event.ts, event.symbols)

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

    # ------------------------------------------------------------------ batch pre-pass / audit
    def prepare(self, signals: Sequence[tuple[ScoredSignal, tuple[str, int]]]) -> None:
        """Before a batch (its signals with their (topic, partition) lanes): one query for the
        history of the batch's new symbols, one for the stored decisions of its tradable
        signals (redeliveries)."""
        self._in_batch = True
        self._unpublished.clear()
        self._audit.clear()
        self._looked_up.clear()
        self._stored.clear()
        new: dict[tuple[str, str], datetime] = {}
        tradable: dict[str, str] = {}  # signal event id -> correlation id
        for sig, lane in signals:
            if not self.guard.admissible(sig.symbol, "signal", sig.ts, lane):
                continue  # dead-lettered by the handler; must not set the warm-up point
            if (sig.symbol, sig.bar_type) not in self._warm:
                new.setdefault((sig.symbol, sig.bar_type), sig.ts)
            if signal_passed(sig):
                tradable[sig.event_id] = sig.correlation_id
        if new:
            self._warm_up_many(new)
        if tradable:
            for details in self.db.stored_decisions(sorted(set(tradable.values()))):
                if details.get("signal_event_id") in tradable and details.get("decision"):
                    self._stored[details["signal_event_id"]] = details["decision"]
            self._looked_up.update(tradable)

    def write_audit(self) -> int:
        """The batch's audit records, in one transaction, before its decisions are published."""
        self._in_batch = False
        self._unpublished.clear()
        rows, self._audit = self._audit, []
        n = self.db.record_audits(rows) if rows else 0
        if self.sequencer is not None:
            released = self.sequencer.released()
            if released != self._released_saved:
                self.store.set_released(released)
                self._released_saved = released
        return n

    def _warm_up_many(self, first_ts: dict[tuple[str, str], datetime]) -> None:
        """CVaR history of each new (symbol, bar type): the bars of the type being traded (the
        signal's), one query per bar type."""
        by_type: dict[str, dict[str, datetime]] = {}
        for (symbol, bar_type), ts in first_ts.items():
            by_type.setdefault(bar_type, {})[symbol] = ts
        for bar_type, wanted in by_type.items():
            history = self.db.last_bars_many(wanted, bar_type, self.cfg.risk.cvar_lookback_bars + 1)
            for symbol in wanted:
                for b in history.get(symbol, []):
                    self.engine.history.update(symbol, b["ts"], adjusted_close(b))  # CVaR on adjusted returns
                self._warm.add((symbol, bar_type))

    def _stored_decision(self, signal: ScoredSignal) -> dict | None:
        if signal.event_id in self._stored:
            return self._stored[signal.event_id]
        if signal.event_id in self._looked_up:
            return None  # the pre-pass looked: not decided before
        if self._in_batch:
            log.warning("risk: signal %s was not seen by the batch pre-pass", signal.event_id)
        # Handled outside a batch (tests, tools): the pre-pass's lookup for this one signal.
        for details in self.db.stored_decisions([signal.correlation_id]):
            if details.get("signal_event_id") == signal.event_id and details.get("decision"):
                return details["decision"]
        return None

    # ------------------------------------------------------------------ handler
    def handle(self, signal: ScoredSignal) -> list[Output]:
        outputs = self._handle(signal)
        if not self._in_batch:  # called without the batch hooks: store before publishing
            self.write_audit()
        return outputs

    def _book_bar(self, signal: ScoredSignal) -> None:
        """Book the fills up to the signal's bar (the caller holds the side lock): a split
        carried through first, then the shadow venue's fills of this bar, then every fill of
        (ts, symbol) <= the bar's, in that order."""
        symbol, ts = signal.symbol, signal.ts
        if self.shadow is None:
            self._await_reported_fills(symbol, ts)
        self.step.fills(symbol, ts, signal.split_factor, signal.open, signal.volume)

    def _await_reported_fills(self, symbol: str, ts: datetime) -> None:
        """A venue whose fills only its reports tell: wait (bounded) for those this bar must
        bring, the fills at ts of orders of the symbols seen at ts decided before it."""
        if self._ts != ts:
            self._ts, self._seen = ts, set()
        self._seen.add(symbol)
        seen = frozenset(self._seen)
        missing = self.ledger.missing_fills(seen, ts)
        held = self._unpublished.intersection(missing)
        if held:
            raise PublishFirst(f"{symbol} at {ts.isoformat()} needs the fill of {sorted(held)}, decided in this batch")
        if missing:
            ok = wait_or_retry(self.side, lambda: not self.ledger.missing_fills(seen, ts), self.fill_wait_s,
                               f"{symbol} at {ts.isoformat()} waited for fills")
            if not ok:
                self.counters["fill_wait_timeouts"] += 1
                log.warning("risk: no fill report for %s at %s within %.1fs; deciding without it",
                            self.ledger.missing_fills(seen, ts), ts.isoformat(), self.fill_wait_s)

    def _handle(self, signal: ScoredSignal) -> list[Output]:
        symbol, ts = signal.symbol, signal.ts
        if (symbol, signal.bar_type) not in self._warm:
            self._warm_up_many({(symbol, signal.bar_type): ts})
        with self.side.lock():
            self._book_bar(signal)
        self.counters["signals"] += 1
        self.step.mark(symbol, ts, signal.price, signal.price * signal.adj_factor)
        with self.side.lock():
            exits = [event for event, _ in self.step.exits_on(symbol, ts, signal.bar_type, signal.price)]
            # After the exits, as the backtest asks: an exit order just placed is working.
            in_flight = self.step.in_flight(symbol)
        if self._in_batch:
            self._unpublished.update(client_order_id(e.correlation_id, "exit") for e in exits)
        outputs = [Output(self.exits_topic, e) for e in exits]
        self._publish(ts)
        if not signal_passed(signal):
            return outputs
        stored = self._stored_decision(signal)
        if stored is not None:
            decision = RiskDecision.model_validate(stored)
            self.counters["replayed"] += 1
            if decision.approved:
                self.engine.throttle.record(symbol, ts)
                self._expect(decision, signal.price)
        else:
            outcome = self.step.evaluate(signal, in_flight)
            decision = outcome.decision.model_copy(update={"event_id": str(uuid.uuid5(_NS, signal.event_id))})
            stored = decision.model_dump(mode="json")
            audit = dict(outcome.audit, event_id=decision.event_id, decision=stored, ns=self.ns)
            self._audit.append(AuditRecord("risk", "risk.approved" if decision.approved else "risk.rejected",
                                           symbol, signal.correlation_id, audit, datetime.now(UTC)))
            self._stored[signal.event_id] = stored  # a duplicate later in this batch replays it
            self.counters["evaluated"] += 1
            if decision.approved:
                self._expect(decision, signal.price)
            elif self.metrics is not None:
                for reason in decision.reasons:
                    self.metrics.risk_rejection(reason)
                self._publish(ts)  # evaluate may have tripped the kill switch
        self.counters["approved" if decision.approved else "rejected"] += 1
        return outputs + [Output(self.approved_topic if decision.approved else self.rejected_topic, decision)]

    def _expect(self, d: RiskDecision, reference_price: float) -> None:
        """An approved entry is working from now (``BarStep.place_entry``)."""
        if self._in_batch:
            self._unpublished.add(client_order_id(d.correlation_id, "entry"))
        with self.side.lock():
            self.step.place_entry(d, reference_price)
