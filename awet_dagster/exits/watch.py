"""``ExitWatch``: the exit monitor of the live loop (Kafka-free): bars in, ExitEvents out.

Runs the core ``ExitMonitor`` (take profit, stop loss, trailing stop, max hold) over the
positions of an event-time portfolio (``FillLedger``: rebuilt from the stored fills on
``start``, then fed with the fill reports and order events a side reader delivers). Per bar,
as in ``run_backtest``: book the fills up to this bar (waiting, bounded by
``risk.fill_wait_s``, through the ``SideInputs`` port, for the fill an order decided on an
earlier bar of the symbol must bring), mark the close, check the symbol's position. An
ExitEvent carries the ENTRY's correlation id (so the exit order id,
``client_order_id(correlation_id, "exit")``, is one per position and every event of the
trade shares one id) and a deterministic event id. A rejected exit order (an exec.done
report, status rejected) releases the position so the rules fire again.

Limitation (free-running replay only): the live service is clocked by market.raw, one hop
from the source, while orders reach it three hops later. When bars are published faster
than the loop turns around (a replay at full speed), it can pass a symbol's bars before it
learns of the order that opened the position, and the position is only checked from the
symbol's next bar on. With live bars (a minute or a day apart) and with ``awet live
--replay`` in lockstep (its default) the order is known first; the backtest/live parity
test runs in lockstep.

Restart: held-bar counts and the trailing stop's peak are rebuilt from the stored bars (the
closes of the symbol since the position opened, marked again in order) and a position whose
exit order is still working is not re-exited.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import ExecutionReport, MarketRawEvent, OrderEvent
from awet_dagster.execution.ids import client_order_id
from awet_dagster.execution.ledger import FillLedger, StoredFill, StoredOrder
from awet_dagster.exits.monitor import ExitMonitor
from awet_dagster.streaming.events import event_to_bar
from awet_dagster.streaming.outputs import Output
from awet_dagster.streaming.side_inputs import NO_SIDE_INPUTS, SideInputs, wait_or_retry
from awet_dagster.streaming.time_guard import TimeGuard

log = logging.getLogger("awet.exits.watch")

_NS = uuid.UUID("9a4e2d17-3b6c-4f0a-8e21-7c5d9b3f1a08")


class ExitStore(Protocol):
    def ledger_rows(self, namespace: str) -> tuple[list[StoredFill], list[StoredOrder]]: ...

    def closes_between(self, symbol: str, bar_type: str, since: datetime, before: datetime) -> list[float]:
        """Closes of the symbol's stored bars with ``since <= ts < before``, in time order."""
        ...


@dataclass
class InMemoryExitStore:
    """``ExitStore`` in memory: ``bars`` {symbol: [bar mapping]}, ``fills``/``orders`` the ledger rows."""

    bars: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    fills: list[StoredFill] = field(default_factory=list)
    orders: list[StoredOrder] = field(default_factory=list)

    def ledger_rows(self, namespace: str) -> tuple[list[StoredFill], list[StoredOrder]]:
        return list(self.fills), list(self.orders)

    def closes_between(self, symbol: str, bar_type: str, since: datetime, before: datetime) -> list[float]:
        rows = sorted((b for b in self.bars.get(symbol, ()) if b.get("bar_type", bar_type) == bar_type
                       and since <= b["ts"] < before), key=lambda b: b["ts"])
        return [float(b["close"]) for b in rows]


class ExitWatch:
    def __init__(self, cfg: AwetConfig, store: ExitStore, *, exits_topic: str, guard: TimeGuard,
                 namespace: str = "", fill_wait_s: float | None = None, side: SideInputs = NO_SIDE_INPUTS) -> None:
        self.db = store
        self.exits_topic = exits_topic
        self.ns = namespace
        self.guard = guard
        self.fill_wait_s = cfg.risk.fill_wait_s if fill_wait_s is None else fill_wait_s
        self.side = side
        self.ledger = FillLedger(cfg.risk.initial_equity)
        self.monitor = ExitMonitor(cfg.exits)
        self._releases: list[tuple[str, str]] = []
        self._last: dict[str, datetime] = {}
        self._restored: set[str] = set()
        self.counters = {"bars": 0, "exits": 0, "fill_wait_timeouts": 0, "released": 0}

    def start(self) -> None:
        self.ledger.rebuild(*self.db.ledger_rows(self.ns))
        self._restored = set(self.ledger.portfolio.positions)

    def on_side_event(self, event: Any) -> None:  # the side reader's thread, under side.lock()
        if isinstance(event, ExecutionReport):
            self.ledger.on_report(event)
            if event.intent == "exit" and event.status == "rejected":
                self._releases.append((event.symbol, event.correlation_id))
        elif isinstance(event, OrderEvent):
            self.ledger.on_order(event)

    def _restore(self, symbol: str, ts: datetime, bar_type: str) -> None:
        """After a restart: held-bar count, marks and pending exit of a position opened before it.

        The ledger rebuilt the position from its fills, so its peak (best close since entry,
        the trailing stop's reference) and last price are the fill price: the closes of the
        bars held so far are marked again, in order, as the running service marked them."""
        self._restored.discard(symbol)
        pf = self.ledger.portfolio
        pos = pf.position(symbol)
        if pos is None:
            return
        closes = self.db.closes_between(symbol, bar_type, pos.opened_ts, ts)
        for close in closes:
            pf.mark(symbol, close)
        exit_pending = client_order_id(pos.correlation_id, "exit") in self.ledger.outstanding
        self.monitor.restore(symbol, pos.correlation_id, len(closes), exit_pending)

    def handle(self, ev: MarketRawEvent) -> list[Output]:
        symbol, ts = ev.symbol, ev.ts
        last = self._last.get(symbol)
        if last is not None and ts <= last:
            return []  # redelivered / out of order
        self._last[symbol] = ts
        self.counters["bars"] += 1
        with self.side.lock():
            if self.ledger.missing_fills({symbol}, ts):
                if not wait_or_retry(self.side, lambda: not self.ledger.missing_fills({symbol}, ts),
                                     self.fill_wait_s, f"{symbol} at {ts.isoformat()} waited for fills"):
                    self.counters["fill_wait_timeouts"] += 1
                    log.warning("exit_monitor: no fill report for %s at %s within %.1fs", symbol, ts.isoformat(),
                                self.fill_wait_s)
            self.ledger.on_split_factor(symbol, ev.split_factor, ts)
            self.ledger.apply_until(ts, symbol)
            releases, self._releases = self._releases, []
        for sym, corr in releases:
            self.monitor.release(sym, corr)
            self.counters["released"] += 1
        if symbol in self._restored:
            self._restore(symbol, ts, ev.bar_type)
        pf = self.ledger.portfolio
        pf.mark(symbol, ev.close)
        out = []
        for exit_ev in self.monitor.on_bar(event_to_bar(ev), pf):
            e = exit_ev.model_copy(update={"event_id": str(uuid.uuid5(_NS, f"{exit_ev.correlation_id}|{ts.isoformat()}"))})
            self.counters["exits"] += 1
            out.append(Output(self.exits_topic, e))
            # Its fill is due on the symbol's next bar: wait for it there like for any order.
            with self.side.lock():
                self.ledger.expect(client_order_id(e.correlation_id, "exit"), symbol, ts, "exit", e.correlation_id)
        return out
