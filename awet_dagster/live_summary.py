"""What a live-loop session did, read back from the trading tables (``awet live --replay``).

Pure core: SQL over a psycopg connection, no Kafka. Dead-letter counts come from the caller
(the loop's tracker) and are merged by ``format_summary``.
Scope: rows written since ``since`` (wall clock), optionally only ``symbols`` and one
state ``namespace`` (``orders.payload->>'ns'``, ``audit_log.details->>'ns'``).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from awet_dagster.risk.portfolio import Fill, Portfolio


def _reason_key(reason: str, symbols: Sequence[str] | None = None) -> str:
    """Group reasons: 'session loss 5.2% >= daily limit' -> 'session loss #% >= daily limit',
    'BAC already has an open position' -> '<symbol> already has an open position'."""
    head = re.split(r"[:(]", reason, maxsplit=1)[0].strip()
    if symbols:
        head = re.sub(r"\b(" + "|".join(map(re.escape, symbols)) + r")\b", "<symbol>", head)
    return re.sub(r"[\d.,%$]+", "#", head)[:60]


def loop_summary(conn: Any, *, since: datetime, initial_equity: float, symbols: Sequence[str] | None = None,
                 namespace: str = "") -> dict[str, Any]:
    syms = list(symbols) if symbols else None
    sym_sql = " AND symbol = ANY(%s)" if syms else ""
    sym_arg: tuple = (syms,) if syms else ()
    out: dict[str, Any] = {}
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE direction <> 'neutral') FROM signals WHERE created_at >= %s" + sym_sql,
        (since, *sym_arg)).fetchone()
    out["signals"], out["signals_directional"] = int(row[0]), int(row[1])
    # Forecasts the served model made (the inference service stores one row per horizon).
    out["predictions"] = int(conn.execute(
        "SELECT count(DISTINCT event_id) FROM predictions WHERE created_at >= %s" + sym_sql,
        (since, *sym_arg)).fetchone()[0])
    approved, rejected = 0, Counter()
    for action, reasons in conn.execute(
            "SELECT action, details->'reasons' FROM audit_log WHERE actor = 'risk' AND ts >= %s "
            "AND COALESCE(details->>'ns', '') = %s" + (" AND subject = ANY(%s)" if syms else ""),
            (since, namespace, *sym_arg)).fetchall():
        if action == "risk.approved":
            approved += 1
        else:
            for r in reasons or ["unknown"]:
                rejected[_reason_key(r, syms)] += 1
    out["approved"], out["rejected_by_reason"] = approved, dict(rejected.most_common())
    orders = conn.execute(
        "SELECT client_order_id, symbol, side, qty, status, COALESCE(payload->>'intent', 'entry'), correlation_id "
        "FROM orders WHERE updated_at >= %s AND COALESCE(payload->>'ns', '') = %s" + sym_sql,
        (since, namespace, *sym_arg)).fetchall()
    ids = [o[0] for o in orders]
    out["orders"] = len(orders)
    out["orders_by_status"] = dict(Counter(o[4] for o in orders))
    out["entries"] = sum(1 for o in orders if o[5] == "entry")
    out["exits"] = sum(1 for o in orders if o[5] == "exit")
    meta = {o[0]: o for o in orders}
    fills = conn.execute(
        "SELECT client_order_id, symbol, qty, price, fee, ts FROM fills WHERE client_order_id = ANY(%s) "
        "ORDER BY ts, symbol, fill_id", (ids,)).fetchall() if ids else []
    out["fills"] = len(fills)
    pf = Portfolio(initial_equity)
    for coid, symbol, qty, price, fee, ts in fills:
        m = meta[coid]
        pf.apply_fill(Fill(coid, symbol, m[2], qty, price, fee, ts, m[6] or coid, m[5]))
    for symbol in list(pf.positions):
        last = conn.execute("SELECT close FROM bars WHERE symbol = %s ORDER BY ts DESC LIMIT 1", (symbol,)).fetchone()
        if last:
            pf.mark(symbol, float(last[0]))
    out["open_positions"] = len(pf.positions)
    out["realised_pnl"] = pf.realised_pnl - pf.fees_paid
    out["fees"] = pf.fees_paid
    out["total_pnl"] = pf.equity - initial_equity
    return out


def format_summary(summary: Mapping[str, Any], *, bars: int, dead_letters: Mapping[str, int]) -> list[str]:
    s = summary
    rej = ", ".join(f"{k}: {v}" for k, v in s["rejected_by_reason"].items()) or "none"
    dlq = ", ".join(f"{k}: {v}" for k, v in sorted(dead_letters.items())) or "none"
    return [
        f"bars            {bars}",
        f"predictions     {s['predictions']}",
        f"signals         {s['signals']} ({s['signals_directional']} with a direction)",
        f"risk            approved {s['approved']}, rejected {sum(s['rejected_by_reason'].values())} ({rej})",
        f"orders          {s['orders']} ({s['entries']} entries, {s['exits']} exits) {s['orders_by_status']}",
        f"fills           {s['fills']}",
        f"exits           {s['exits']}",
        f"open positions  {s['open_positions']}",
        f"pnl             realised {s['realised_pnl']:,.2f} (fees {s['fees']:,.2f}), total {s['total_pnl']:,.2f}",
        f"dead letters    {dlq}",
    ]
