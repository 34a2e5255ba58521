"""Reddit mentions keyed by bucket length: the streamed hourly buckets beside the daily ones.

Revision ID: 0007_reddit_bucket
Revises: 0006_calibrations
Create Date: 2026-12-03

Until now every row was a daily bucket (the Dagster asset's): an hourly bucket starting at
00:00 would have overwritten the day's row. Rows get ``bucket`` ('1d' for all existing
ones, which is what they are) and the key becomes (symbol, bucket, ts).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_reddit_bucket"
down_revision: str | Sequence[str] | None = "0006_calibrations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("reddit_mentions", sa.Column("bucket", sa.Text, nullable=False, server_default="1d"))
    op.create_check_constraint("ck_reddit_mentions_bucket", "reddit_mentions", "bucket IN ('1h', '1d')")
    op.drop_constraint("pk_reddit_mentions", "reddit_mentions", type_="primary")
    op.create_primary_key("pk_reddit_mentions", "reddit_mentions", ["symbol", "bucket", "ts"])


def downgrade() -> None:
    # Hourly rows have no place in the old key: they are dropped (the daily ones stay).
    op.execute("DELETE FROM reddit_mentions WHERE bucket <> '1d'")
    op.drop_constraint("pk_reddit_mentions", "reddit_mentions", type_="primary")
    op.create_primary_key("pk_reddit_mentions", "reddit_mentions", ["symbol", "ts"])
    op.drop_constraint("ck_reddit_mentions_bucket", "reddit_mentions", type_="check")
    op.drop_column("reddit_mentions", "bucket")
