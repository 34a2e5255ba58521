"""Errors raised by market-data sources.

One small hierarchy so callers (assets, the CLI) can tell "fix your config" from
"try again later" without knowing which vendor client raised.
"""
from __future__ import annotations


class SourceError(Exception):
    """Base class for every error a market-data source raises."""


class SchemaError(SourceError, ValueError):
    """A frame does not match the bar schema (missing or uncastable column)."""


class MissingCredentials(SourceError):
    """A source needs credentials that were not supplied (names the setting, never the value)."""


class AuthenticationFailed(SourceError):
    """The vendor rejected the supplied credentials (HTTP 401/403)."""


class SourceUnavailable(SourceError):
    """The vendor could not be reached or returned no data (network down, timeouts, empty reply)."""


class NoData(SourceUnavailable):
    """The vendor answered and has no bars in the range (a weekend, a window before the first
    bar): an error for a backfill, "nothing new yet" for a poller."""


class RateLimited(SourceUnavailable):
    """The vendor kept answering 429 after every retry."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnknownSource(SourceError, KeyError):
    """`get_source` was asked for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""
