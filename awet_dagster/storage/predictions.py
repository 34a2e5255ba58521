"""``PostgresPredictionStore``: the forecaster's storage port
(``awet_dagster.inference.forecaster.PredictionStore``) over ``bars`` and ``predictions``.
``connect``: returns the psycopg connection to use."""
from __future__ import annotations

from collections.abc import Sequence

from awet_dagster.contracts import Prediction
from awet_dagster.storage.bar_history import PostgresBarHistory


class PostgresPredictionStore(PostgresBarHistory):

    def write_predictions(self, predictions: Sequence[Prediction]) -> int:
        conn = self._connect()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO predictions (event_id, correlation_id, symbol, ts, horizon, q10, q50, q90, "
                "model_version) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
                [(p.event_id, p.correlation_id, p.symbol, p.ts, h, q.q10, q.q50, q.q90, p.model_version)
                 for p in predictions for h, q in p.quantiles.items()])
        return len(predictions)
