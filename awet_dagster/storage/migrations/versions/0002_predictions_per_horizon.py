"""Predictions: one row per (prediction event, horizon).

Revision ID: 0002_predictions_per_horizon
Revises: 0001_initial
Create Date: 2026-12-01

A ``Prediction`` event forecasts several horizons; the live inference service stores each
horizon's quantiles as one row, so the key is (event_id, horizon) - ``event_id`` alone
admitted only one horizon per event. The table had no writer before this revision.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002_predictions_per_horizon"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("predictions_pkey", "predictions", type_="primary")
    op.create_primary_key("pk_predictions", "predictions", ["event_id", "horizon"])


def downgrade() -> None:
    op.drop_constraint("pk_predictions", "predictions", type_="primary")
    # Keeps the shortest horizon of each event, the one the signal engine trades by default.
    op.execute("DELETE FROM predictions p USING predictions q WHERE p.event_id = q.event_id "
               "AND p.horizon > q.horizon")
    op.create_primary_key("predictions_pkey", "predictions", ["event_id"])
