"""A local fake of the Alpaca paper trading REST API, for tests (no network).

Serves on 127.0.0.1:<ephemeral port> with a ThreadingHTTPServer and returns the JSON shapes
Alpaca returns (orders with string quantities, nested bracket legs, positions, account).
Behaviour that matters for safety is real: a duplicate client_order_id gets 422, unknown
ids 404, missing keys 401, canceling a filled/canceled order 422, and a closing order for
more shares than are AVAILABLE (held minus what open closing orders reserve, e.g. the
working legs of a filled bracket) 403 with Alpaca's code 40310000 "insufficient qty".
Bracket orders carry two legs (take-profit `limit`, stop-loss `stop`) with their own ids:
`held` until the parent fills, then working; a leg that fills cancels its sibling (OCO).
Legs are not listed on their own, only under their parent (`nested`), but are served by
`GET /v2/orders/{id}` (legs rolled up under a parent with `?nested=true`) and can be
canceled. `fill()` fills an order or a leg at a price and moves the position; `legs()`
returns a parent's legs. Tests script failures per route with `fail_next`:
- an int status (500, 503, 429...): answered with that status, nothing created;
- "timeout": the reply is delayed past the client's timeout, nothing created;
- "create_then_timeout" / "create_then_500": the order IS created, then the reply is lost
  (slow) or an error - what makes blind retries duplicate orders.
`submissions[client_order_id]` counts orders actually created; `requests` logs every call.

    with FakeAlpaca() as fake:
        broker = AlpacaPaperBroker("key", "secret", base_url=fake.url, timeout_s=0.5)
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

OPEN = {"new", "accepted", "partially_filled", "pending_new"}
CANCELABLE = OPEN | {"held", "accepted_for_bidding", "pending_replace"}
RESERVING = CANCELABLE | {"pending_cancel"}  # statuses whose unfilled qty holds the shares


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _order_json(body: dict[str, Any], order_id: str, client_order_id: str, *, status: str = "accepted",
                order_class: str = "simple", order_type: str = "market", side: str | None = None,
                qty: Any = None, limit_price: Any = None, stop_price: Any = None) -> dict[str, Any]:
    now = _now()
    typ = order_type
    return {
        "id": order_id, "client_order_id": client_order_id, "created_at": now, "updated_at": now,
        "submitted_at": now, "filled_at": None, "expired_at": None, "canceled_at": None, "failed_at": None,
        "replaced_at": None, "replaced_by": None, "replaces": None,
        "asset_id": "b0b6dd9d-8b9b-48a9-ba46-b9d54906e415", "symbol": body["symbol"], "asset_class": "us_equity",
        "notional": None, "qty": str(qty if qty is not None else body.get("qty")), "filled_qty": "0",
        "filled_avg_price": None, "order_class": order_class, "order_type": typ, "type": typ,
        "side": side or body["side"], "position_intent": None, "time_in_force": body.get("time_in_force", "day"),
        "limit_price": None if limit_price is None else str(limit_price),
        "stop_price": None if stop_price is None else str(stop_price), "status": status,
        "extended_hours": False, "legs": None, "trail_percent": None, "trail_price": None, "hwm": None,
        "subtag": None, "source": None, "expires_at": None,
    }


class FakeAlpaca:
    def __init__(self, api_key: str = "key", delay_s: float = 1.0, cancel_reads: int = 0,
                 retry_after_s: float | None = None) -> None:
        self.api_key = api_key
        self.retry_after_s = retry_after_s  # a scripted 429 carries Retry-After: this many seconds
        self.delay_s = delay_s  # how long a "timeout" reply stalls (tests use a shorter client timeout)
        # > 0: a cancel is asynchronous like at Alpaca: `pending_cancel` (shares still held)
        # until this many more GET requests were served, then `canceled`.
        self.cancel_reads = cancel_reads
        self._pending_cancel: dict[str, int] = {}
        self.orders: dict[str, dict[str, Any]] = {}  # id -> order json (top-level orders)
        self.leg_orders: dict[str, dict[str, Any]] = {}  # leg id -> leg json (the same dict as in its parent)
        self.by_client_id: dict[str, str] = {}
        self.positions: list[dict[str, Any]] = []
        self.parent_of: dict[str, str] = {}  # leg id -> parent id
        self.submissions: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []
        self._failures: dict[tuple[str, str], deque] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------------ control
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeAlpaca:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, method: str, path: str, *actions: int | str) -> None:
        with self._lock:
            self._failures.setdefault((method, path), deque()).extend(actions)

    def set_position(self, symbol: str, qty: float, avg_entry_price: float) -> None:
        side = "long" if qty >= 0 else "short"
        self.positions[:] = [p for p in self.positions if p["symbol"] != symbol]
        if qty == 0:
            return
        self.positions.append({
            "asset_id": str(uuid.uuid4()), "symbol": symbol, "exchange": "NASDAQ", "asset_class": "us_equity",
            "asset_marginable": True, "avg_entry_price": str(avg_entry_price), "qty": str(abs(qty)) if side == "long"
            else str(qty), "qty_available": str(abs(qty)), "side": side,
            "market_value": str(abs(qty) * avg_entry_price), "cost_basis": str(abs(qty) * avg_entry_price),
            "unrealized_pl": "0", "unrealized_plpc": "0", "unrealized_intraday_pl": "0",
            "unrealized_intraday_plpc": "0", "current_price": str(avg_entry_price),
            "lastday_price": str(avg_entry_price), "change_today": "0",
        })

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p in self.requests if m == method and p == path)

    def order(self, order: str) -> dict[str, Any]:
        """An order (or leg) by id or client_order_id."""
        oid = self.by_client_id.get(order, order)
        return self.orders.get(oid) or self.leg_orders[oid]

    def legs(self, order: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(take-profit leg, stop-loss leg) of a bracket, by its id or client_order_id."""
        tp, sl = self.order(order)["legs"]
        return tp, sl

    def position_qty(self, symbol: str) -> float:
        for p in self.positions:
            if p["symbol"] == symbol:
                return float(p["qty"]) if p["side"] == "long" else -abs(float(p["qty"]))
        return 0.0

    def fill(self, order: str, price: float, qty: float | None = None, at: datetime | None = None) -> dict[str, Any]:
        """Fill `qty` (default: the rest) of an order or leg at `price`, like the venue would:
        the position moves; a filled bracket parent's legs start working; a leg that fills
        completely cancels its sibling. ``at``: the venue's fill time (default now), what a
        complete fill reports as ``filled_at``."""
        with self._lock:
            o = self.order(order)
            oid = o["id"]
            if o["status"] not in CANCELABLE:
                raise ValueError(f"order {oid} is {o['status']}, cannot fill")
            total, done = float(o["qty"]), float(o["filled_qty"])
            q = total - done if qty is None else float(qty)
            new = done + q
            avg = price if done == 0 else (float(o["filled_avg_price"]) * done + price * q) / new
            now = _now()
            full = new >= total - 1e-9
            stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if at is not None else now
            o.update(filled_qty=_num(new), filled_avg_price=_num(avg), updated_at=now,
                     status="filled" if full else "partially_filled", filled_at=stamp if full else None)
            self._move_position(o["symbol"], q if o["side"] == "buy" else -q, price)
            if full and o.get("legs"):
                tp, sl = o["legs"]
                tp["status"], sl["status"] = "new", "held"  # the stop waits on the limit (OCO)
            parent = self.parent_of.get(oid)
            if full and parent is not None:
                for sib in self.orders[parent]["legs"]:
                    if sib["id"] != oid and sib["status"] in CANCELABLE:
                        sib.update(status="canceled", canceled_at=now, updated_at=now)
            return o

    def _cancel(self, o: dict[str, Any]) -> None:
        now = _now()
        if self.cancel_reads > 0:
            o.update(status="pending_cancel", updated_at=now)
            self._pending_cancel[o["id"]] = self.cancel_reads
        else:
            o.update(status="canceled", canceled_at=now, updated_at=now)

    def _tick(self) -> None:
        """A GET was served: asynchronous cancels move on."""
        with self._lock:
            for oid, left in list(self._pending_cancel.items()):
                if left <= 1:
                    del self._pending_cancel[oid]
                    o = self.orders.get(oid) or self.leg_orders[oid]
                    o.update(status="canceled", canceled_at=_now(), updated_at=_now())
                else:
                    self._pending_cancel[oid] = left - 1

    def _move_position(self, symbol: str, signed: float, price: float) -> None:
        old = self.position_qty(symbol)
        new = old + signed
        if abs(new) < 1e-9:
            self.set_position(symbol, 0, price)
            return
        avg = price
        if old != 0 and (old > 0) == (new > 0):
            prev = next(float(p["avg_entry_price"]) for p in self.positions if p["symbol"] == symbol)
            avg = (old * prev + signed * price) / new if abs(new) > abs(old) else prev
        self.set_position(symbol, new, avg)

    def _reserved(self, symbol: str, side: str) -> float:
        """Shares held for open closing orders of `symbol` on `side` (legs once their parent filled)."""
        total = 0.0
        for oid, o in (*self.orders.items(), *self.leg_orders.items()):
            if o["symbol"] != symbol or o["side"] != side or o["status"] not in RESERVING:
                continue
            parent = self.parent_of.get(oid)
            if parent is not None and self.orders[parent]["status"] not in ("filled", "partially_filled"):
                continue
            total += float(o["qty"]) - float(o["filled_qty"])
        return total

    def _available(self, symbol: str) -> float:
        pos = self.position_qty(symbol)
        return max(abs(pos) - self._reserved(symbol, "sell" if pos > 0 else "buy"), 0.0)

    # ------------------------------------------------------------------ server
    def _next_failure(self, method: str, path: str) -> int | str | None:
        with self._lock:
            q = self._failures.get((method, path))
            return q.popleft() if q else None

    def _create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        coid = body.get("client_order_id") or str(uuid.uuid4())
        with self._lock:
            if coid in self.by_client_id:
                return 422, {"code": 40010001, "message": "client_order_id must be unique"}
            pos, qty = self.position_qty(body["symbol"]), float(body.get("qty") or 0)
            closing = (pos > 0 and body["side"] == "sell") or (pos < 0 and body["side"] == "buy")
            if closing and qty > self._available(body["symbol"]) + 1e-9:
                return 403, {"code": 40310000, "message": f"insufficient qty available for order (requested: "
                                                          f"{_num(qty)}, available: {_num(self._available(body['symbol']))})",
                             "symbol": body["symbol"]}
            oid = str(uuid.uuid4())
            order_class = body.get("order_class", "simple")
            order = _order_json(body, oid, coid, order_class=order_class)
            if order_class == "bracket":
                exit_side = "sell" if body["side"] == "buy" else "buy"
                order["legs"] = [
                    _order_json(body, str(uuid.uuid4()), str(uuid.uuid4()), status="held", order_type="limit",
                                side=exit_side, limit_price=body["take_profit"]["limit_price"]),
                    _order_json(body, str(uuid.uuid4()), str(uuid.uuid4()), status="held", order_type="stop",
                                side=exit_side, stop_price=body["stop_loss"]["stop_price"]),
                ]
                for leg in order["legs"]:
                    self.leg_orders[leg["id"]] = leg
                    self.parent_of[leg["id"]] = oid
            self.orders[oid] = order
            self.by_client_id[coid] = oid
            self.submissions[coid] += 1
            return 200, order

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, status: int, payload: Any = None) -> None:
                data = b"" if payload is None else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    if status == 429 and fake.retry_after_s is not None:
                        self.send_header("Retry-After", f"{fake.retry_after_s:g}")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def _route(self, method: str) -> None:
                parts = urlsplit(self.path)
                path, query = parts.path, parse_qs(parts.query)
                fake.requests.append((method, path))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                if self.headers.get("APCA-API-KEY-ID") != fake.api_key:
                    return self._send(401, {"code": 40110000, "message": "request is not authorized"})
                failure = fake._next_failure(method, path)
                if isinstance(failure, int):
                    return self._send(failure, {"code": failure * 100000, "message": "scripted failure"})
                if failure == "timeout":
                    time.sleep(fake.delay_s)
                    return self._send(503, {"message": "too late"})
                if method == "GET":
                    fake._tick()
                if method == "POST" and path == "/v2/orders":
                    status, payload = fake._create(body)
                    if failure == "create_then_timeout":
                        time.sleep(fake.delay_s)
                    if failure == "create_then_500":
                        return self._send(500, {"code": 50000000, "message": "internal error"})
                    return self._send(status, payload)
                if method == "GET" and path == "/v2/orders:by_client_order_id":
                    oid = fake.by_client_id.get((query.get("client_order_id") or [""])[0])
                    if oid is None:
                        return self._send(404, {"code": 40410000, "message": "order not found"})
                    return self._send(200, fake.orders[oid])
                if method == "GET" and path == "/v2/orders":
                    status = (query.get("status") or ["open"])[0]
                    orders = [o for o in fake.orders.values() if status == "all" or (o["status"] in OPEN) ==
                              (status == "open")]
                    return self._send(200, orders)
                if method == "GET" and path.startswith("/v2/orders/"):
                    order = fake.orders.get(path.rsplit("/", 1)[1]) or fake.leg_orders.get(path.rsplit("/", 1)[1])
                    if order is None:
                        return self._send(404, {"code": 40410000, "message": "order not found"})
                    nested = (query.get("nested") or ["false"])[0].lower() == "true"
                    return self._send(200, order if nested else {**order, "legs": None})
                if method == "DELETE" and path.startswith("/v2/orders/"):
                    oid = path.rsplit("/", 1)[1]
                    with fake._lock:
                        order = fake.orders.get(oid) or fake.leg_orders.get(oid)
                        if order is None:
                            return self._send(404, {"code": 40410000, "message": "order not found"})
                        if order["status"] not in CANCELABLE:
                            return self._send(422, {"code": 42210000, "message": "order is not cancelable"})
                        for o in (order, *(order.get("legs") or ())):  # an open parent takes its legs
                            if o["status"] in CANCELABLE:
                                fake._cancel(o)
                    return self._send(204)
                if method == "GET" and path == "/v2/positions":
                    with fake._lock:
                        out = [{**p, "qty_available": _num(fake._available(p["symbol"]))} for p in fake.positions]
                    return self._send(200, out)
                if method == "GET" and path == "/v2/account":
                    return self._send(200, {
                        "id": "11111111-2222-3333-4444-555555555555", "account_number": "PA3FAKE", "status": "ACTIVE",
                        "currency": "USD", "cash": "100000", "portfolio_value": "100000", "equity": "100000",
                        "last_equity": "100000", "buying_power": "200000", "pattern_day_trader": False,
                        "trading_blocked": False, "transfers_blocked": False, "account_blocked": False,
                        "shorting_enabled": True, "multiplier": "2", "created_at": "2024-01-02T14:30:00Z"})
                return self._send(404, {"code": 40410000, "message": f"no route {method} {path}"})

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_DELETE(self) -> None:
                self._route("DELETE")

        return Handler
