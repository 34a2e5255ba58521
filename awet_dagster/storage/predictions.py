"""``PostgresPredictionStore``: the forecaster's storage port
(``awet_dagster.inference.forecaster.PredictionStore``) over ``bars`` and ``predictions``.
``connect``: returns the psycopg connection to use."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from awet_dagster.contracts import Prediction
from awet_dagster.storage.bars import read_last_bars_many


class PostgresPredictionStore:
    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect

    def last_bars_many(self, wanted: Mapping[str, datetime], bar_type: str,
                       limit: int) -> dict[str, list[dict[str, Any]]]:
        return read_last_bars_many(self._connect(), wanted, bar_type, limit)

    def write_predictions(self, predictions: Sequence[Prediction]) -> int:
        conn = self._connect()
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO predictions (event_id, correlation_id, symbol, ts, horizon, q10, q50, q90, "
                "model_version) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING",
                [(p.event_id, p.correlation_id, p.symbol, p.ts, h, q.q10, q.q50, q.q90, p.model_version)
                 for p in predictions for h, q in p.quantiles.items()])
        return len(predictions)
