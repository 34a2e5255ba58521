"""``ExitWatch``: the exit rules of the live loop (Kafka-free), a part of risk's per-bar step.

Runs the core ``ExitMonitor`` (take profit, stop loss, trailing stop, max hold) over the
positions of the ``FillLedger`` it shares with the ``RiskDesk`` (one book: the position risk
sizes against is the one exits watch). The desk calls ``on_bar`` for every scored signal in
the backtest's order: fills of the bar booked, the close marked, then exits, then risk's
decision. So the exits see a bar only after every order decided before it, as in
``run_backtest``; clocked by market.raw (one hop from the source, orders three hops later) a
separate exit monitor passed bars before it knew the position in a free-running replay.

An ExitEvent carries the ENTRY's correlation id (so the exit order id,
``client_order_id(correlation_id, "exit")``, is one per position and every event of the
trade shares one id) and a deterministic event id. A rejected exit order (an exec.done
report, status rejected) releases the position so the rules fire again.

Restart: held-bar counts and the trailing stop's peak are rebuilt from the stored bars (the
closes of the symbol since the position opened, marked again in order) and a position whose
exit order is still working is not re-exited.
"""
from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Protocol

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import ExecutionReport, ExitEvent
from awet_dagster.execution.ids import client_order_id
from awet_dagster.execution.ledger import FillLedger
from awet_dagster.exits.monitor import ExitMonitor

log = logging.getLogger("awet.exits.watch")

_NS = uuid.UUID("9a4e2d17-3b6c-4f0a-8e21-7c5d9b3f1a08")


class ClosesStore(Protocol):
    def closes_between(self, symbol: str, bar_type: str, since: datetime, before: datetime) -> list[float]:
        """Closes of the symbol's stored bars with ``since <= ts < before``, in time order."""
        ...


class ExitWatch:
    def __init__(self, cfg: AwetConfig, store: ClosesStore, ledger: FillLedger) -> None:
        self.db = store
        self.ledger = ledger
        self.monitor = ExitMonitor(cfg.exits)
        self._releases: list[tuple[str, str]] = []
        self._last: dict[str, datetime] = {}
        self._restored: set[str] = set()
        self.counters = {"bars": 0, "exits": 0, "released": 0}

    def start(self) -> None:
        """After the ledger was rebuilt: its positions are restored on their next bar."""
        self._restored = set(self.ledger.portfolio.positions)

    def on_report(self, event: ExecutionReport) -> None:  # the side reader's thread, under side.lock()
        if event.intent == "exit" and event.status == "rejected":
            self._releases.append((event.symbol, event.correlation_id))

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

    def on_bar(self, symbol: str, ts: datetime, bar_type: str, close: float) -> list[ExitEvent]:
        """The exits of the symbol's position on this bar's close (its fills booked; the caller
        holds the side lock). Each exit order is expected in the ledger: its fill is due on the
        symbol's next bar."""
        last = self._last.get(symbol)
        if last is not None and ts <= last:
            return []  # redelivered: its bar was counted
        self._last[symbol] = ts
        self.counters["bars"] += 1
        releases, self._releases = self._releases, []
        for sym, corr in releases:
            self.monitor.release(sym, corr)
            self.counters["released"] += 1
        if symbol in self._restored:
            self._restore(symbol, ts, bar_type)
        pf = self.ledger.portfolio
        pf.mark(symbol, close)
        out = []
        for ev in self.monitor.on_bar({"symbol": symbol, "ts": ts, "bar_type": bar_type, "close": close}, pf):
            e = ev.model_copy(update={"event_id": str(uuid.uuid5(_NS, f"{ev.correlation_id}|{ts.isoformat()}"))})
            self.counters["exits"] += 1
            out.append(e)
            self.ledger.expect(client_order_id(e.correlation_id, "exit"), symbol, ts, "exit", e.correlation_id,
                               qty=e.qty, side=e.side)
        return out
