"""Corporate-action factors beside the raw prices of every bar.

Revision ID: 0004_bar_factors
Revises: 0003_dead_letters_and_gaps
Create Date: 2026-12-03

``bars`` keeps the RAW prices a broker trades at and now also the factors to today's basis
(``awet_dagster/sources/corporate_actions.py``): raw x ``adj_factor`` = the split- and
dividend-adjusted price research uses, volume / ``split_factor`` = the split-adjusted volume.
Existing rows get 1.0 (unadjusted, what they were).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_bar_factors"
down_revision: str | Sequence[str] | None = "0003_dead_letters_and_gaps"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for col in ("adj_factor", "split_factor"):
        op.add_column("bars", sa.Column(col, sa.Float, nullable=False, server_default=sa.text("1.0")))
        op.create_check_constraint(f"ck_bars_{col}_positive", "bars", f"{col} > 0")


def downgrade() -> None:
    for col in ("adj_factor", "split_factor"):
        op.drop_constraint(f"ck_bars_{col}_positive", "bars", type_="check")
        op.drop_column("bars", col)
