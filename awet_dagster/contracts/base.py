"""Base pieces shared by every event contract.

Why these rules:
- ``frozen`` + ``extra="forbid"``: an event is a fact that was published; nobody may mutate it
  after the fact, and a typo'd or unknown field from a producer must fail loudly at the
  boundary instead of being silently dropped.
- ``allow_inf_nan=False``: NaN/inf are not valid JSON numbers and always mean an upstream bug
  (an indicator still warming up, a division by zero); reject them where they enter the bus.
- Timestamps must be timezone-aware; naive datetimes are rejected (we cannot guess which
  zone a producer meant), aware ones in other zones are converted to UTC so equality,
  ordering and the wire format are uniform (``...Z``).
"""

from __future__ import annotations

import os
import random
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError


def ensure_utc(value: datetime) -> datetime:
    """Reject naive datetimes; convert aware ones to UTC."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(
            "naive datetime rejected: timestamps must be timezone-aware "
            "(e.g. '2024-01-02T14:30:00Z' or datetime(..., tzinfo=UTC))"
        )
    return value.astimezone(UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


class _EventIds:
    """Random version-4 UUIDs without a syscall per id.

    ``uuid.uuid4()`` reads ``os.urandom`` for every id; in the live process that is a
    GIL release + re-acquire per event among eight busy threads (measured: 8.5% of the
    live loop's samples). Event ids must be unique, not unpredictable, so a Mersenne
    Twister seeded once from ``os.urandom`` (122 random bits per id) serves; it is re-seeded
    in a forked child so parent and child never share a sequence.
    """

    def __init__(self) -> None:
        self._seed()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._seed)

    def _seed(self) -> None:
        self._bits = random.Random(os.urandom(32)).getrandbits

    def __call__(self) -> str:
        return str(uuid.UUID(int=self._bits(128), version=4))


new_event_id = _EventIds()


#: A timezone-aware timestamp normalised to UTC.
UtcDatetime = Annotated[datetime, AfterValidator(ensure_utc)]

#: Non-empty string without surrounding whitespace ("" and "  " are rejected).
NonEmptyStr = Annotated[str, StringConstraints(min_length=1, pattern=r"^\S(.*\S)?$")]

#: Ticker symbol as used across the platform (e.g. "AAPL", "BRK.B", "BTC/USD").
Symbol = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9.\-/^=_]+$")]

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
UnitFloat = Annotated[float, Field(ge=0, le=1)]

BarType = Literal["minute", "daily"]
Direction = Literal["long", "short", "flat"]
Side = Literal["buy", "sell"]
Venue = Literal["paper", "alpaca"]


#: The pydantic error type of a message whose ``schema_version`` this consumer does not read.
UNSUPPORTED_VERSION = "unsupported_schema_version"


class ContractModel(BaseModel):
    """Strict, immutable model used for events and their nested parts."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, validate_default=True)


class BaseEvent(ContractModel):
    """Fields every event on the bus carries.

    ``correlation_id`` ties all events caused by one originating bar together (the bus
    helper also copies it into a Kafka header). ``schema_version`` is a per-model constant:
    each subclass redeclares it as ``Literal[N]`` so a message written by an incompatible
    producer is rejected instead of being misread.
    """

    #: Set by subclasses to the topic-independent event name (for headers / logs).
    event_type: ClassVar[str] = "base"

    event_id: NonEmptyStr = Field(default_factory=new_event_id, description="uuid4 string unless set")
    correlation_id: NonEmptyStr = Field(description="id shared by all events caused by one originating bar")
    schema_version: Literal[1] = 1
    produced_at: UtcDatetime = Field(default_factory=utc_now, description="when the producer built the event (UTC)")

    @model_validator(mode="before")
    @classmethod
    def _known_major_version(cls, data: Any) -> Any:
        """A message of another major version is refused with a reason naming both versions
        (the bus dead-letters it as ``unsupported_version``), not as a puzzle of renamed
        fields. Absent means "the version this consumer reads" (the field's default)."""
        if isinstance(data, dict) and "schema_version" in data:
            theirs, ours = data["schema_version"], cls.model_fields["schema_version"].default
            if theirs != ours:
                raise PydanticCustomError(
                    UNSUPPORTED_VERSION,
                    "{event_type} schema_version {theirs} is not supported: this consumer reads major version "
                    "{ours} (upgrade the consumer, or re-publish the message in version {ours})",
                    {"event_type": cls.event_type, "theirs": theirs, "ours": ours},
                )
        return data

    def kafka_key(self) -> bytes | None:
        """Partitioning key: outputs are keyed by symbol so one symbol stays ordered."""
        symbol: Any = getattr(self, "symbol", None)
        return symbol.encode() if isinstance(symbol, str) else None
