"""The ``calibrations`` table: Platt calibrators fitted outside a model run (the alpha-only
ensemble's, by the ``<bar_type>/alpha_calibration`` asset). Each fit is a new row; readers
take the newest of a kind and bar type."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from awet_dagster.signals.calibration import PlattCalibrator


@dataclass(frozen=True)
class StoredCalibration:
    id: int
    kind: str
    bar_type: str
    calibrator: PlattCalibrator
    n_calls: int
    hit_rate: float

    @property
    def name(self) -> str:
        """How a signal names it in ``ScoredSignal.calibrator`` (after "platt:")."""
        return f"{self.kind}:{self.bar_type}:{self.id}"


def store_calibration(conn, kind: str, bar_type: str, calibrator: PlattCalibrator, *, n_calls: int,
                      hit_rate: float, details: dict[str, Any] | None = None) -> StoredCalibration:
    """Insert one fit; returns it with its id. The caller owns the transaction."""
    row = conn.execute(
        "INSERT INTO calibrations (kind, bar_type, method, a, b, n_calls, hit_rate, details) "
        "VALUES (%s, %s, 'platt', %s, %s, %s, %s, %s::jsonb) RETURNING id",
        (kind, bar_type, calibrator.a, calibrator.b, n_calls, hit_rate, json.dumps(details or {}))).fetchone()
    return StoredCalibration(int(row[0]), kind, bar_type, calibrator, n_calls, hit_rate)


def latest_calibration(conn, kind: str, bar_type: str) -> StoredCalibration | None:
    row = conn.execute(
        "SELECT id, a, b, n_calls, hit_rate FROM calibrations WHERE kind = %s AND bar_type = %s "
        "ORDER BY id DESC LIMIT 1", (kind, bar_type)).fetchone()
    if row is None:
        return None
    return StoredCalibration(int(row[0]), kind, bar_type, PlattCalibrator(float(row[1]), float(row[2])),
                             int(row[3]), float(row[4]))
