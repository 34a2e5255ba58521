"""Time sanity of every input bar: one rule for every service that reads bars or signals.

A bar is refused (the caller dead-letters it with the reason; no state moves) when
- it starts more than a tolerance AHEAD of the clock: the wall clock when the stream is live,
  the replay clock (the latest bar time accepted so far in its lane, see below) when it replays
  history. Live: ``data.max_clock_skew_s`` (a bar is published when it closes, so its start
  is in the past; the tolerance only covers clock skew between the vendor and us). Replay:
  ``data.max_replay_lead_s`` (must cover the longest natural gap between two bars of one
  symbol: a long weekend of daily bars, a holiday weekend of minute bars);
  The replay clock is kept per *lane*: the bus passes the Kafka partition a bar came from,
  because Kafka orders messages within a partition only. Partitions of one topic progress
  unevenly, and one that another instance of the service has moved on (scale-out) comes back
  weeks ahead of the others; one clock over every partition refused such a partition's bars
  as "ahead of the replay" (seen in a scale-out test). When partitions move (``forget``)
  every lane's clock starts again: its next bar is judged by the wall clock, which still
  refuses a 2099 bar;
- it is OLDER than the symbol's last accepted bar by more than ``data.max_lateness_s``. A
  bar at exactly the last time (a redelivery) passes: the services skip duplicates
  themselves, silently, as they always did.

Why: a single bar stamped 2099 used to be accepted, became every service's "last bar" of the
symbol, and every real bar after it was dropped as stale for the rest of the session.

Which clock: the stream counts as a replay once its latest accepted bar is more than
``data.replay_after_s`` behind the wall clock; before any bar it is live.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from awet_dagster.config import AwetConfig


@dataclass(frozen=True)
class TimeLimits:
    max_clock_skew_s: float = 300.0
    max_replay_lead_s: float = 5 * 86_400.0
    replay_after_s: float = 7 * 86_400.0
    max_lateness_s: float = 0.0

    @classmethod
    def from_config(cls, cfg: AwetConfig) -> TimeLimits:
        data = cfg.data
        return cls(
            max_clock_skew_s=float(data.max_clock_skew_s),
            max_replay_lead_s=float(data.max_replay_lead_s),
            replay_after_s=float(data.replay_after_s),
            max_lateness_s=float(data.max_lateness_s),
        )


class TimeRejected(ValueError):
    """A bar (or signal) outside the time limits; the message says which and by how much.
    The bus dead-letters it with this reason code and the message (no traceback)."""

    dlq_reason = "invalid_time"


def _span(seconds: float) -> str:
    s = abs(seconds)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if s >= size:
            return f"{s / size:,.1f} {unit}"
    return f"{s:.0f} s"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TimeGuard:
    """Per service: each lane's replay clock and each (symbol, bar type)'s last accepted time.

    ``lane``: where the bar came from, the unit Kafka orders (the bus passes (topic,
    partition)); None for a single ordered stream."""

    def __init__(self, limits: TimeLimits = TimeLimits(), now: Callable[[], datetime] = _utc_now) -> None:
        self.limits = limits
        self._now = now
        self._hwm: dict[Hashable, datetime] = {}  # per lane: latest accepted time over its keys
        self._last: dict[tuple[str, str], datetime] = {}
        self.rejected = 0

    def clock(self, lane: Hashable = None) -> tuple[str, datetime]:
        """("live", wall clock) or ("replay", the lane's latest accepted bar time)."""
        wall = self._now()
        hwm = self._hwm.get(lane)
        if hwm is not None and hwm < wall - timedelta(seconds=self.limits.replay_after_s):
            return "replay", hwm
        return "live", wall

    def problem(self, symbol: str, bar_type: str, ts: datetime, lane: Hashable = None) -> str | None:
        """Why ``ts`` is refused for (symbol, bar_type), or None. Changes nothing."""
        mode, clock = self.clock(lane)
        lead = (ts - clock).total_seconds()
        limit = self.limits.max_clock_skew_s if mode == "live" else self.limits.max_replay_lead_s
        if lead > limit:
            what = "data.max_clock_skew_s" if mode == "live" else "data.max_replay_lead_s"
            return (f"{symbol} {bar_type} bar at {ts.isoformat()} is {_span(lead)} ahead of the {mode} clock "
                    f"({clock.isoformat()}; limit {_span(limit)}, {what})")
        last = self._last.get((symbol, bar_type))
        if last is not None:
            late = (last - ts).total_seconds()
            if late > self.limits.max_lateness_s:
                return (f"{symbol} {bar_type} bar at {ts.isoformat()} is {_span(late)} older than the symbol's last "
                        f"bar ({last.isoformat()}; allowed lateness {_span(self.limits.max_lateness_s)}, "
                        f"data.max_lateness_s)")
        return None

    def admit(self, symbol: str, bar_type: str, ts: datetime, lane: Hashable = None) -> None:
        """Accept ``ts`` (moving the clocks) or raise ``TimeRejected`` (moving nothing)."""
        reason = self.problem(symbol, bar_type, ts, lane)
        if reason is not None:
            self.rejected += 1
            raise TimeRejected(reason)
        key = (symbol, bar_type)
        last = self._last.get(key)
        if last is None or ts > last:
            self._last[key] = ts
        hwm = self._hwm.get(lane)
        if hwm is None or ts > hwm:
            self._hwm[lane] = ts

    def admissible(self, symbol: str, bar_type: str, ts: datetime, lane: Hashable = None) -> bool:
        return self.problem(symbol, bar_type, ts, lane) is None

    def forget(self) -> None:
        """Partitions moved between instances: drop the per-symbol times and the lanes' clocks
        (a partition that comes back may have moved on meanwhile)."""
        self._last.clear()
        self._hwm.clear()
