"""Timeouts, retries and backoff shared by the vendor clients.

Vendors throttle (429) and hiccup (5xx, slow replies); a bounded retry with exponential
backoff, honouring Retry-After, turns those into either data or one clear error. URLs
in messages are stripped of their query string: it may carry an API key.
"""
from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import requests

from awet_dagster.sources.errors import RateLimited, SourceUnavailable

T = TypeVar("T")
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class RetryPolicy:
    timeout_s: float = 10.0  # per request (connect and read)
    max_retries: int = 4  # retries after the first try (config: data.max_retries)
    backoff_base_s: float = 0.5  # wait before retry k (k = 1, 2, ...) is base * 2**(k-1)
    backoff_max_s: float = 30.0  # also caps a vendor's Retry-After
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def backoff(self, retry_number: int, retry_after_s: float | None = None) -> float:
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.backoff_max_s)
        return min(self.backoff_base_s * 2 ** (retry_number - 1), self.backoff_max_s)


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


_URL_QUERY = re.compile(r"(https?://[^\s?#]+)[?#]\S*")


def describe_error(exc: BaseException, limit: int = 200) -> str:
    """An exception's text for a message: URL query strings (keys, tokens) cut, length capped."""
    text = _URL_QUERY.sub(r"\1", str(exc)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - (now or datetime.now(timezone.utc))).total_seconds(), 0.0)


class RetryingSession(requests.Session):
    """A requests session with a default timeout and bounded retries.

    Returns the response for any status outside `retry_statuses` (the caller decides what
    a 4xx means); raises `RateLimited` / `SourceUnavailable` once retries are spent. Used
    directly by the Polygon client and installed into alpaca-py's client, whose own
    session has no timeout at all.
    """

    def __init__(self, vendor: str, policy: RetryPolicy, sleep: Sleep = time.sleep) -> None:
        super().__init__()
        self.vendor = vendor
        self.policy = policy
        self._sleep = sleep
        #: Called with (kind, detail) for EVERY failed attempt, retried or not: "timeout",
        #: "connection" or "http_<status>" (a retryable status). Errors absorbed by the
        #: retries are then still seen (logged, counted) by the owner.
        self.on_failure: Callable[[str, str], None] | None = None

    def _failed(self, kind: str, detail: str) -> None:
        if self.on_failure is not None:
            try:
                self.on_failure(kind, detail)
            except Exception:  # noqa: BLE001 - reporting must never break the request
                pass

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.policy.timeout_s)
        where = f"{self.vendor} {method!s} {redact_url(str(url))}"
        last_status: int | None = None
        last_error = ""
        retry_after: float | None = None
        for attempt in range(1, self.policy.max_attempts + 1):
            retry_after = None
            try:
                response = super().request(method, url, *args, **kwargs)
            except requests.Timeout:
                last_error, last_status = f"no reply within {kwargs['timeout']} s", None
                self._failed("timeout", f"{where}: {last_error}")
            except requests.ConnectionError as exc:
                # str(exc) may embed the full URL (and key): keep only the exception kind.
                last_error, last_status = f"connection failed ({type(exc).__name__})", None
                self._failed("connection", f"{where}: {last_error}")
            else:
                if response.status_code not in self.policy.retry_statuses:
                    return response
                last_status = response.status_code
                last_error = f"HTTP {response.status_code}"
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                self._failed(f"http_{response.status_code}", f"{where}: {last_error}"
                             + (f" (Retry-After {retry_after:g} s)" if retry_after is not None else ""))
                response.close()
            if attempt < self.policy.max_attempts:
                self._sleep(self.policy.backoff(attempt, retry_after))
        message = f"{where}: {last_error} after {self.policy.max_attempts} attempt(s)"
        # No exception chaining: a requests error's text can hold the full URL (and key).
        if last_status == 429:
            raise RateLimited(message, retry_after_s=retry_after) from None
        raise SourceUnavailable(message) from None


def call_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy,
    classify: Callable[[BaseException], str | None],
    sleep: Sleep = time.sleep,
) -> T:
    """Call `fn` until it succeeds, retrying errors `classify` names.

    `classify(exc)` returns "rate_limited" or "unavailable" for transient errors, None for
    errors that must propagate at once (bad credentials, bad request).
    """
    kind: str | None = None
    last: BaseException | None = None
    retry_after: float | None = None
    for attempt in range(1, policy.max_attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classify decides, unknown kinds re-raise
            kind = classify(exc)
            if kind is None:
                raise
            last = exc
        # praw's TooManyRequests carries the vendor's Retry-After as `retry_after`.
        retry_after = parse_retry_after(str(getattr(last, "retry_after", "") or ""))
        if attempt < policy.max_attempts:
            sleep(policy.backoff(attempt, retry_after))
    message = f"{what}: {type(last).__name__} after {policy.max_attempts} attempt(s)"
    if last is not None and describe_error(last):
        message += f" ({describe_error(last)})"
    if kind == "rate_limited":
        raise RateLimited(message, retry_after_s=retry_after) from last
    raise SourceUnavailable(message) from last
