"""Alpaca PAPER trading broker over alpaca-py's `TradingClient(paper=True)`.

Transport: alpaca-py's REST session has no timeout and retries 429/504 itself with a fixed
3 s sleep, blind to whether a timed-out POST created the order. We therefore
- install `_TradingSession` (built on `sources.retry.RetryingSession`): every request gets
  the timeout; GETs are retried with backoff there, but a POST /orders is tried ONCE;
- switch alpaca-py's own retry off (`_retry = 0`);
- retry submits here: before each resubmission the order is looked up by client_order_id
  (a timed-out or 5xx'd POST may have reached Alpaca), and a 422 "client_order_id must be
  unique" is answered by adopting the existing order. So a retry never duplicates an order.
The paper-endpoint gate is enforced in the constructor: a non-paper URL cannot be used.

Bracket lifecycle. Entries with take-profit and stop-loss go out as `OrderClass.BRACKET`
market orders: Alpaca creates two legs (a `limit` take-profit and a `stop` stop-loss,
each with its own order id), `held` until the parent fills, then working as one-cancels-
other. While they work they RESERVE the position's shares: a market exit for those shares
is refused (403, "insufficient qty available") and, if it went through, a leg firing later
would open the opposite position. Hence
- `get_bracket` reads an order WITH its legs (`GET /v2/orders/{id}?nested=true`), parsed
  into `BrokerOrder.legs` (`order_type` / `exit_reason` name the leg);
- `cancel_bracket` cancels the parent if still open (its legs go with it) and every open
  leg, then re-reads until none is open any more (a cancel is asynchronous at Alpaca:
  `pending_cancel` still holds the shares). A leg that filled meanwhile is returned
  filled: the caller books it as the exit instead of selling again.
Cancels are DELETEs tried once per call (like a POST): on a timeout/5xx/429 the order is
looked up before the next try, so a cancel that did land is not repeated; 404/422 (gone,
no longer cancelable: filled, already canceled) end the cancel and the re-read tells the
state. Errors are classified like submits: `BrokerUnavailable` (no answer after every
try: state unknown, do not sell), `BrokerRejected` (any other 4xx).
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import requests

from awet_dagster.execution.broker import BrokerRejected, BrokerUnavailable, UnsafeEndpoint
from awet_dagster.execution.gates import paper_endpoint_gate
from awet_dagster.execution.orders import BrokerOrder, BrokerPosition, OrderRequest
from awet_dagster.sources.errors import RateLimited, SourceUnavailable
from awet_dagster.sources.retry import RetryingSession, RetryPolicy, Sleep

PAPER_URL = "https://paper-api.alpaca.markets"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: on_error(kind, client_order_id or "", detail): every failed broker call (AlpacaPaperBroker._error).
ErrorHook = Callable[[str, str, str], None]

# Alpaca order status -> contract OrderStatus.
_STATUS = {
    "new": "new", "accepted": "accepted", "pending_new": "accepted", "accepted_for_bidding": "accepted",
    "held": "accepted", "calculated": "accepted", "pending_cancel": "accepted", "pending_replace": "accepted",
    "partially_filled": "partially_filled", "filled": "filled", "done_for_day": "expired",
    "expired": "expired", "canceled": "canceled", "replaced": "canceled", "stopped": "accepted",
    "suspended": "accepted", "rejected": "rejected",
}


class _TradingSession(RetryingSession):
    """Timeout on everything; retries only for reads (GET/HEAD)."""

    def __init__(self, policy: RetryPolicy, sleep: Sleep) -> None:
        super().__init__("alpaca-trading", policy, sleep)
        self._once = RetryingSession("alpaca-trading", replace(policy, max_retries=0), sleep)

    def report_to(self, on_failure: Callable[[str, str], None]) -> None:
        self.on_failure = self._once.on_failure = on_failure

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if str(method).upper() in ("GET", "HEAD"):
            return super().request(method, url, *args, **kwargs)
        return self._once.request(method, url, *args, **kwargs)

    def close(self) -> None:
        self._once.close()
        super().close()


def _f(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def parse_order(raw: dict[str, Any]) -> BrokerOrder:
    """Alpaca order JSON (legs, when present, parsed recursively)."""
    return BrokerOrder(
        client_order_id=raw["client_order_id"],
        broker_order_id=str(raw["id"]),
        symbol=raw["symbol"],
        side=raw["side"],
        qty=float(raw.get("qty") or 0.0),
        filled_qty=float(raw.get("filled_qty") or 0.0),
        avg_fill_price=_f(raw.get("filled_avg_price")),
        status=_STATUS.get(raw["status"], "accepted"),
        order_class=raw.get("order_class") or "simple",
        order_type=raw.get("order_type") or raw.get("type") or "market",
        legs=tuple(parse_order(leg) for leg in raw.get("legs") or ()),
        filled_at=_ts(raw.get("filled_at")),
    )


def _ts(value: Any) -> datetime | None:
    """An Alpaca RFC 3339 timestamp (``...Z``, up to nanoseconds) as an aware datetime."""
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python parses at most microseconds: keep 6 fraction digits, then the offset
        frac = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{frac[:6]}{rest[len(frac):]}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class AlpacaPaperBroker:
    venue = "alpaca"

    def __init__(
        self,
        api_key: str,
        secret_key: str,
        *,
        base_url: str = PAPER_URL,
        timeout_s: float = 10.0,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        sleep: Sleep = time.sleep,
        on_error: ErrorHook | None = None,
    ) -> None:
        gate = paper_endpoint_gate(base_url)
        if not gate.passed:
            raise UnsafeEndpoint(gate.reason)
        from alpaca.trading.client import TradingClient

        self.base_url = base_url.rstrip("/")
        self.policy = RetryPolicy(timeout_s=timeout_s, max_retries=max_retries, backoff_base_s=backoff_base_s)
        self._sleep = sleep
        client = TradingClient(api_key=api_key, secret_key=secret_key, paper=True, raw_data=True,
                               url_override=None if self.base_url == PAPER_URL else self.base_url)
        if not hasattr(client, "_session") or not hasattr(client, "_retry"):
            # alpaca-py changed its internals: refuse to run without our timeout/retry policy.
            raise BrokerUnavailable("alpaca-py TradingClient internals changed; cannot enforce timeouts")
        session = _TradingSession(self.policy, sleep)
        session.report_to(lambda kind, detail: self._error(kind, detail))
        client._session = session
        client._retry = 0
        self._client = client
        self.errors: Counter[str] = Counter()  # every failed call, by kind (see _error)
        self.on_error = on_error
        self._for = threading.local()  # the client order id the current call is about

    @classmethod
    def from_config(cls, cfg, sleep: Sleep = time.sleep, on_error: ErrorHook | None = None) -> AlpacaPaperBroker:
        """From `ExecutionConfig` (keys must be set)."""
        if cfg.alpaca_api_key is None or cfg.alpaca_secret_key is None:
            raise BrokerRejected("execution.alpaca_api_key / alpaca_secret_key are not set")
        return cls(cfg.alpaca_api_key.get_secret_value(), cfg.alpaca_secret_key.get_secret_value(),
                   base_url=cfg.alpaca_base_url, timeout_s=cfg.request_timeout_s, max_retries=cfg.max_retries,
                   sleep=sleep, on_error=on_error)

    # ------------------------------------------------------------------ errors
    def _error(self, kind: str, detail: str, client_order_id: str | None = None) -> None:
        """Every failed call, retried or not, once: counted in ``errors`` and handed to
        ``on_error(kind, client_order_id, detail)`` (the execution service logs it with the
        order's id and counts it in awet_broker_api_errors_total{venue, kind}). Kinds:
        ``timeout``, ``connection``, ``http_<status>``, ``cancel_unconfirmed``."""
        self.errors[kind] += 1
        if self.on_error is not None:
            try:
                self.on_error(kind, client_order_id or getattr(self._for, "coid", "") or "", detail)
            except Exception:  # noqa: BLE001 - reporting must never break an order
                pass

    @contextmanager
    def _about(self, client_order_id: str):
        prev = getattr(self._for, "coid", None)
        self._for.coid = client_order_id
        try:
            yield
        finally:
            self._for.coid = prev

    # ------------------------------------------------------------------ orders
    def _order_request(self, order: OrderRequest):
        from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
        from alpaca.trading.requests import MarketOrderRequest, StopLossRequest, TakeProfitRequest

        extra: dict[str, Any] = {}
        if order.intent == "entry" and order.take_profit is not None and order.stop_loss is not None:
            # Alpaca rejects sub-penny prices for stocks >= $1.
            extra = dict(order_class=OrderClass.BRACKET,
                         take_profit=TakeProfitRequest(limit_price=round(order.take_profit, 2)),
                         stop_loss=StopLossRequest(stop_price=round(order.stop_loss, 2)))
        return MarketOrderRequest(symbol=order.symbol, qty=order.qty,
                                  side=OrderSide.BUY if order.side == "buy" else OrderSide.SELL,
                                  time_in_force=TimeInForce.DAY, client_order_id=order.client_order_id, **extra)

    def submit(self, order: OrderRequest) -> BrokerOrder:
        with self._about(order.client_order_id):
            return self._submit(order)

    def _submit(self, order: OrderRequest) -> BrokerOrder:
        from alpaca.common.exceptions import APIError

        request = self._order_request(order)
        last = ""
        retry_after: float | None = None
        for attempt in range(1, self.policy.max_attempts + 1):
            if attempt > 1:
                # A 429's Retry-After is honoured (capped by the policy's backoff_max_s).
                self._sleep(self.policy.backoff(attempt - 1, retry_after))
                retry_after = None
                try:
                    found = self.get_order_by_client_id(order.client_order_id)
                except BrokerUnavailable as exc:
                    last = str(exc)
                    continue  # cannot tell whether it exists: do not resubmit blind
                if found is not None:
                    return found
            try:
                return parse_order(self._client.submit_order(request))
            except RateLimited as exc:  # reported by the session (http_429)
                retry_after = exc.retry_after_s
                last = str(exc)
            except SourceUnavailable as exc:  # timeout, connection error, 5xx (one try each; reported)
                last = str(exc)
            except APIError as exc:
                status = exc.status_code
                if status == 422 and "client_order_id" in str(exc):
                    found = self.get_order_by_client_id(order.client_order_id)
                    if found is not None:
                        return found  # already there: submit is idempotent
                self._error(f"http_{status}", f"submit refused: {exc}")
                raise BrokerRejected(f"alpaca refused {order.client_order_id}: HTTP {status} {exc}") from None
        raise BrokerUnavailable(f"alpaca submit {order.client_order_id}: {last} "
                                f"after {self.policy.max_attempts} attempt(s)")

    def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        from alpaca.common.exceptions import APIError

        try:
            with self._about(client_order_id):
                return parse_order(self._client.get_order_by_client_id(client_order_id))
        except APIError as exc:
            if exc.status_code == 404:
                return None
            self._error(f"http_{exc.status_code}", f"order lookup refused: {exc}", client_order_id)
            raise BrokerRejected(f"alpaca order lookup {client_order_id}: HTTP {exc.status_code}") from None
        except SourceUnavailable as exc:
            raise BrokerUnavailable(str(exc)) from None

    def list_open_orders(self) -> list[BrokerOrder]:
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest

        try:
            raw = self._client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500, nested=True))
        except SourceUnavailable as exc:
            raise BrokerUnavailable(str(exc)) from None
        return [parse_order(o) for o in raw]

    def list_positions(self) -> list[BrokerPosition]:
        try:
            raw = self._client.get_all_positions()
        except SourceUnavailable as exc:
            raise BrokerUnavailable(str(exc)) from None
        out = []
        for p in raw:
            qty = abs(float(p["qty"])) * (-1 if p.get("side") == "short" else 1)
            out.append(BrokerPosition(p["symbol"], qty, float(p["avg_entry_price"])))
        return out

    def cancel(self, client_order_id: str) -> BrokerOrder | None:
        with self._about(client_order_id):
            return self._cancel(client_order_id)

    def _cancel(self, client_order_id: str) -> BrokerOrder | None:
        found = self.get_order_by_client_id(client_order_id)
        if found is None or not found.is_open:
            return found
        self._cancel_id(found.broker_order_id, client_order_id)
        return self.get_order_by_client_id(client_order_id)

    # ------------------------------------------------------------------ brackets
    def get_order(self, broker_order_id: str, *, nested: bool = True) -> BrokerOrder | None:
        """By Alpaca order id; ``nested``: with its legs (a leg's id works too)."""
        from alpaca.common.exceptions import APIError
        from alpaca.trading.requests import GetOrderByIdRequest

        try:
            return parse_order(self._client.get_order_by_id(broker_order_id,
                                                            filter=GetOrderByIdRequest(nested=nested)))
        except APIError as exc:
            if exc.status_code == 404:
                return None
            self._error(f"http_{exc.status_code}", f"order lookup {broker_order_id} refused: {exc}")
            raise BrokerRejected(f"alpaca order lookup {broker_order_id}: HTTP {exc.status_code}") from None
        except SourceUnavailable as exc:
            raise BrokerUnavailable(str(exc)) from None

    def get_bracket(self, client_order_id: str, broker_order_id: str | None = None) -> BrokerOrder | None:
        """Our order with its legs; ``broker_order_id`` (when known) saves the lookup by client id."""
        if broker_order_id is None:
            found = self.get_order_by_client_id(client_order_id)
            if found is None:
                return None
            broker_order_id = found.broker_order_id
        return self.get_order(broker_order_id, nested=True)

    def cancel_bracket(self, client_order_id: str, broker_order_id: str | None = None) -> BrokerOrder | None:
        """Cancel the order if still open (its legs go with it) and every open leg; return
        the order with its legs once nothing of it is open any more. Raises
        ``BrokerUnavailable`` when the venue cannot be reached or the cancels are not
        confirmed after every re-read (the legs may still hold the shares)."""
        with self._about(client_order_id):
            return self._cancel_bracket(client_order_id, broker_order_id)

    def _cancel_bracket(self, client_order_id: str, broker_order_id: str | None) -> BrokerOrder | None:
        order = self.get_bracket(client_order_id, broker_order_id)
        if order is None or not any(o.is_open for o in (order, *order.legs)):
            return order
        if order.is_open:
            self._cancel_id(order.broker_order_id, client_order_id)
            order = self.get_order(order.broker_order_id, nested=True) or order
        for leg in order.legs:  # legs of a filled parent (or ones the parent's cancel left)
            if leg.is_open:
                self._cancel_id(leg.broker_order_id, f"{client_order_id} {leg.order_type} leg")
        for attempt in range(1, self.policy.max_attempts + 1):  # a cancel is asynchronous: confirm it
            order = self.get_order(order.broker_order_id, nested=True) or order
            if not any(o.is_open for o in (order, *order.legs)):
                return order
            if attempt < self.policy.max_attempts:
                self._sleep(self.policy.backoff(attempt))
        self._error("cancel_unconfirmed", f"cancel of {client_order_id} and its legs not confirmed")
        raise BrokerUnavailable(f"alpaca cancel of {client_order_id} and its legs not confirmed after "
                                f"{self.policy.max_attempts} look-up(s)")

    def _cancel_id(self, broker_order_id: str, what: str) -> None:
        """DELETE one order, retried only after a look-up shows it still open; 404/422
        (gone / not cancelable any more: filled, canceled) end it quietly."""
        from alpaca.common.exceptions import APIError

        last = ""
        for attempt in range(1, self.policy.max_attempts + 1):
            if attempt > 1:
                self._sleep(self.policy.backoff(attempt - 1))
                try:
                    found = self.get_order(broker_order_id, nested=False)
                except BrokerUnavailable as exc:
                    last = str(exc)
                    continue
                if found is None or not found.is_open:
                    return
            try:
                self._client.cancel_order_by_id(broker_order_id)
                return
            except SourceUnavailable as exc:  # timeout, connection error, 5xx, 429 (one try each; reported)
                last = str(exc)
            except APIError as exc:
                if exc.status_code in (404, 422):
                    return
                self._error(f"http_{exc.status_code}", f"cancel of {what} refused: {exc}")
                raise BrokerRejected(f"alpaca refused to cancel {what}: HTTP {exc.status_code} {exc}") from None
        raise BrokerUnavailable(f"alpaca cancel {what}: {last} after {self.policy.max_attempts} attempt(s)")

    def account(self) -> dict[str, Any]:
        try:
            return dict(self._client.get_account())
        except SourceUnavailable as exc:
            raise BrokerUnavailable(str(exc)) from None
