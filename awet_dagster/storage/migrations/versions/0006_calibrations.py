"""Calibrations fitted outside a model run: the alpha-only ensemble's Platt calibrator.

Revision ID: 0006_calibrations
Revises: 0005_contracts_v2
Create Date: 2026-12-03

A model's calibrator is logged with its MLflow run; the alpha-only ensemble has no model,
so its calibrator (fitted on backtest outcomes by the ``<bar_type>/alpha_calibration``
asset) lives here. Each fit is a new row: the live signal service uses the newest of its
kind and bar type, and a signal names it (``platt:alpha:<bar_type>:<id>``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006_calibrations"
down_revision: str | Sequence[str] | None = "0005_contracts_v2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calibrations",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("bar_type", sa.Text, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("a", sa.Float, nullable=False),
        sa.Column("b", sa.Float, nullable=False),
        sa.Column("n_calls", sa.Integer, nullable=False),
        sa.Column("hit_rate", sa.Float, nullable=False),
        sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("fitted_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.CheckConstraint("kind IN ('alpha')", name="ck_calibrations_kind"),
        sa.CheckConstraint("bar_type IN ('minute', 'daily')", name="ck_calibrations_bar_type"),
        sa.CheckConstraint("method IN ('platt')", name="ck_calibrations_method"),
    )
    op.create_index("ix_calibrations_kind_bar_type_id", "calibrations", ["kind", "bar_type", "id"])


def downgrade() -> None:
    op.drop_index("ix_calibrations_kind_bar_type_id", table_name="calibrations")
    op.drop_table("calibrations")
