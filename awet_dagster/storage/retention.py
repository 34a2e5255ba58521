"""Retention job: delete rows older than the configured ages.

Needed without TimescaleDB (plain tables, no retention policies) and, in every mode, for
minute bars: a TimescaleDB policy drops whole chunks and cannot spare the daily bars
that share the ``bars`` table. Running it where policies exist is harmless.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

# (table, extra predicate, retention attribute). Table names are constants, never input.
_RULES: tuple[tuple[str, str, str], ...] = (
    ("bars", "bar_type = 'minute' AND ", "minute_bars_days"),
    ("signals", "", "signals_days"),
    ("audit_log", "", "audit_days"),
)


def apply_retention(engine: Engine, retention_cfg: Any, now: datetime) -> dict[str, int]:
    """Delete expired rows in one transaction; returns {table: rows deleted}.

    A row expires when ``ts < now - <days>`` (strictly older than the window).
    ``retention_cfg`` is ``cfg.retention`` (minute_bars_days, signals_days, audit_days).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("apply_retention needs a timezone-aware `now` (UTC)")
    deleted: dict[str, int] = {}
    with engine.begin() as conn:
        for table, predicate, attr in _RULES:
            days = int(getattr(retention_cfg, attr))
            if days <= 0:
                raise ValueError(f"retention.{attr} must be positive, got {days}")
            cutoff = now - timedelta(days=days)
            result = conn.execute(
                sa.text(f"DELETE FROM {table} WHERE {predicate}ts < :cutoff"), {"cutoff": cutoff}
            )
            deleted[table] = result.rowcount
    return deleted
