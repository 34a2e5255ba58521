"""``exit_monitor``: market.raw (+ exec.done / exec.orders) -> exec.exits.

Runs the core ``ExitMonitor`` (take profit, stop loss, trailing stop, max hold) over the
positions of an event-time portfolio (``awet_dagster.execution.ledger.FillLedger``: rebuilt from the fills
table on start, updated from exec.done by a side ``TopicTail``). Per bar, as in
``run_backtest``: book the fills up to this bar (waiting, bounded by ``risk.fill_wait_s``,
for the fill an order decided on an earlier bar of the symbol must bring), mark the close,
check the symbol's position. An ExitEvent carries the ENTRY's correlation id (so the
exit order id, ``client_order_id(correlation_id, "exit")``, is one per position and every
event of the trade shares one id) and a deterministic event id. A rejected exit order
(exec.done, status rejected) releases the position so the rules fire again.

Limitation (free-running replay only): this service is clocked by market.raw, one hop
from the source, while orders reach it three hops later. When bars are published faster
than the loop turns around (a replay at full speed), it can pass a symbol's bars before
it learns of the order that opened the position, and the position is only checked from
the symbol's next bar on. With live bars (a minute or a day apart) and with
``awet live --replay`` in lockstep (its default) the order is known first; the
backtest/live parity test runs in lockstep.

Restart: held-bar counts and the trailing stop's peak are rebuilt from the bars table (the
bars of the symbol since the position opened, marked again in order) and a position whose
exit order is still working is not re-exited.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import ExecutionReport, ExitEvent, MarketRawEvent, OrderEvent
from awet_dagster.contracts.topics import EXEC_DONE, EXEC_EXITS, EXEC_ORDERS, MARKET_RAW
from awet_dagster.execution import client_order_id
from awet_dagster.execution.ledger import FillLedger
from awet_dagster.exits import ExitMonitor
from awet_dagster.storage.trading import ledger_rows
from awet_dagster.streaming import event_to_bar
from live.bus import MessageContext, Output, RetryLater
from live.services._common import LazyConnection, LiveService, contract_of, db_settings, time_guard
from live.services._ledger import build_with_fill_tail, wait_for_fills
from live.tail import TopicTail

log = logging.getLogger("awet.live.exit_monitor")

NAME = "exit_monitor"
_NS = uuid.UUID("9a4e2d17-3b6c-4f0a-8e21-7c5d9b3f1a08")


class ExitService:
    def __init__(self, cfg: AwetConfig, conn: LazyConnection, *, exits_topic: str, namespace: str = "",
                 fill_wait_s: float | None = None) -> None:
        self.cfg = cfg
        self.conn = conn
        self.exits_topic = exits_topic
        self.ns = namespace
        self.guard = time_guard(cfg)
        self.fill_wait_s = cfg.risk.fill_wait_s if fill_wait_s is None else fill_wait_s
        self.stopping: Callable[[], bool] = lambda: False  # the bus's stop request (build_with_fill_tail)
        self.ledger = FillLedger(cfg.risk.initial_equity)
        self.monitor = ExitMonitor(cfg.exits)
        self.tail: TopicTail | None = None
        self._releases: list[tuple[str, str]] = []
        self._last: dict[str, datetime] = {}
        self._restored: set[str] = set()
        self.counters = {"bars": 0, "exits": 0, "fill_wait_timeouts": 0, "released": 0}

    def start(self) -> None:
        self.ledger.rebuild(*ledger_rows(self.conn.get(), self.ns))
        self._restored = set(self.ledger.portfolio.positions)

    def on_side_event(self, topic: str, event: Any, ts_ms: int) -> None:  # tail thread, under the lock
        if isinstance(event, ExecutionReport):
            self.ledger.on_report(event)
            if event.intent == "exit" and event.status == "rejected":
                self._releases.append((event.symbol, event.correlation_id))
        elif isinstance(event, OrderEvent):
            self.ledger.on_order(event)

    def handle(self, event: MarketRawEvent, ctx: MessageContext) -> list[Output]:
        import psycopg

        try:
            return self._handle(event)
        except psycopg.OperationalError as exc:
            self.conn.reset()
            raise RetryLater(f"database unavailable: {exc}") from exc

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
        closes = self.conn.get().execute(
            "SELECT close FROM bars WHERE symbol = %s AND bar_type = %s AND ts >= %s AND ts < %s ORDER BY ts",
            (symbol, bar_type, pos.opened_ts, ts)).fetchall()
        for (close,) in closes:
            pf.mark(symbol, float(close))
        key = (symbol, pos.correlation_id)
        self.monitor._bars_held[key] = len(closes)
        exit_coid = client_order_id(pos.correlation_id, "exit")
        if exit_coid in self.ledger.outstanding:
            self.monitor._pending.add(key)

    def _handle(self, ev: MarketRawEvent) -> list[Output]:
        symbol, ts = ev.symbol, ev.ts
        last = self._last.get(symbol)
        if last is not None and ts <= last:
            return []  # redelivered / out of order
        self._last[symbol] = ts
        self.counters["bars"] += 1
        tail = self.tail
        if tail is not None:
            with tail.cond:
                if self.ledger.missing_fills({symbol}, ts):
                    if not wait_for_fills(tail.cond, lambda: not self.ledger.missing_fills({symbol}, ts),
                                          self.fill_wait_s, self.stopping):
                        if self.stopping():  # redelivered to the next start, not judged without its fills
                            raise RetryLater(f"stopping while {symbol} at {ts.isoformat()} waited for fills")
                        self.counters["fill_wait_timeouts"] += 1
                        log.warning("exit_monitor: no fill report for %s at %s within %.1fs", symbol,
                                    ts.isoformat(), self.fill_wait_s)
                self.ledger.on_split_factor(symbol, ev.split_factor, ts)
                self.ledger.apply_until(ts, symbol)
                releases, self._releases = self._releases, []
        else:
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
            args = (client_order_id(e.correlation_id, "exit"), symbol, ts, "exit", e.correlation_id)
            if tail is not None:
                with tail.cond:
                    self.ledger.expect(*args)
            else:
                self.ledger.expect(*args)
        return out


def build(cfg: AwetConfig, endpoints: Any, *, input_topic: str = MARKET_RAW, output_topic: str = EXEC_EXITS,
          done_topic: str = EXEC_DONE, orders_topic: str = EXEC_ORDERS, group: str | None = None,
          name: str = NAME, namespace: str = "", fill_wait_s: float | None = None, tracker: Any = None,
          **bus_kwargs: Any) -> LiveService:
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    state = ExitService(cfg, conn, exits_topic=output_topic, namespace=namespace, fill_wait_s=fill_wait_s)
    if contract_of(output_topic, ExitEvent) is not ExitEvent:
        raise ValueError(f"topic {output_topic!r} does not carry ExitEvent")
    return build_with_fill_tail(cfg, endpoints, name=name, state=state, conn=conn, input_topic=input_topic,
                                input_contract=MarketRawEvent, done_topic=done_topic, orders_topic=orders_topic,
                                group=group, tracker=tracker, bus_kwargs=bus_kwargs)
