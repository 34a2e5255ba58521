"""Dead letters recorded (which service refused which message, why); calendar gaps recorded.

Revision ID: 0003_dead_letters_and_gaps
Revises: 0002_predictions_per_horizon
Create Date: 2026-12-03

The table existed (the runbook pointed at it) but nothing wrote it. Every live service now
records each message it dead-letters (``live.services._common.DeadLetterRecorder``): the
original topic, partition and offset, the service, the reason code and the error. One row per
(topic, partition, offset, service): a redelivered poison message is not recorded twice.

``bar_gaps``: bars missing against the exchange calendar, per symbol and session (minute bars)
or per symbol (daily: ``session`` = the first missing one), written by the raw_bars asset for
the partitions it loads, tolerated or not, so an operator sees them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_dead_letters_and_gaps"
down_revision: str | Sequence[str] | None = "0002_predictions_per_horizon"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("service", sa.Text, nullable=False, server_default=""))
    op.add_column("dead_letters", sa.Column("error_type", sa.Text))
    op.add_column("dead_letters", sa.Column("error", sa.Text))
    op.add_column("dead_letters", sa.Column("correlation_id", sa.Text))
    op.add_column("dead_letters", sa.Column("dlq_topic", sa.Text))
    op.create_index("ux_dead_letters_message", "dead_letters", ["topic", "partition", "offset", "service"],
                    unique=True)
    op.create_index("ix_dead_letters_service", "dead_letters", ["service"])
    op.create_table(
        "bar_gaps",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("bar_type", sa.Text, nullable=False),
        sa.Column("session", sa.Date, nullable=False),
        sa.Column("missing", sa.Integer, nullable=False),
        sa.Column("expected", sa.Integer, nullable=False),
        sa.Column("first_missing", sa.DateTime(timezone=True)),
        sa.Column("tolerated", sa.Boolean, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("symbol", "bar_type", "session", name="pk_bar_gaps"),
    )


def downgrade() -> None:
    op.drop_table("bar_gaps")
    op.drop_index("ix_dead_letters_service", "dead_letters")
    op.drop_index("ux_dead_letters_message", "dead_letters")
    for col in ("dlq_topic", "correlation_id", "error", "error_type", "service"):
        op.drop_column("dead_letters", col)
