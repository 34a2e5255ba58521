"""``PostgresSignalStore``: the signal scorer's storage port (``awet_dagster.signals.scorer.SignalStore``)
over ``bars``, ``calibrations`` and ``signals``. ``connect``: returns the psycopg connection to use."""
from __future__ import annotations

from collections.abc import Sequence

from awet_dagster.contracts import ScoredSignal
from awet_dagster.storage.bar_history import PostgresBarHistory
from awet_dagster.storage.calibrations import StoredCalibration, latest_calibration


class PostgresSignalStore(PostgresBarHistory):

    def latest_alpha_calibration(self, bar_type: str) -> StoredCalibration | None:
        return latest_calibration(self._connect(), "alpha", bar_type)

    def write_signals(self, signals: Sequence[ScoredSignal]) -> int:
        conn = self._connect()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO signals (event_id, correlation_id, symbol, ts, direction, score, confidence, payload)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s,%s::jsonb) ON CONFLICT DO NOTHING",
                [(s.event_id, s.correlation_id, s.ticker, s.ts, s.ensemble_direction, s.signal_score,
                  s.ensemble_confidence, s.model_dump_json()) for s in signals])
        return len(signals)
