"""Initial schema: market data, features, predictions, signals, trading state, audit.

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-25

When the server offers TimescaleDB (an external DATABASE_URL), ``bars``, ``signals`` and
``audit_log`` become hypertables and ``signals`` / ``audit_log`` get retention policies.
Otherwise (the embedded server has no TimescaleDB) they are plain tables with ts indexes,
and ``storage.retention.apply_retention`` is the retention job.

Minute-bar retention is ALWAYS the job: a TimescaleDB retention policy drops whole chunks
and cannot keep the daily bars that share the table.

Hypertables require the time column in every unique key, hence ``signals`` is keyed by
(event_id, ts) and ``audit_log`` by (id, ts) in both modes, so that the schema (and the
``ON CONFLICT`` targets used by writers) is the same with or without TimescaleDB.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.TIMESTAMP(timezone=True)
F64 = sa.Float(precision=53)  # double precision
NOW = sa.text("now()")

# Defaults of cfg.retention; a migration must not depend on runtime configuration.
SIGNALS_RETENTION = "180 days"
AUDIT_RETENTION = "365 days"

TABLES = [  # creation order; dropped in reverse
    "bars",
    "rejected_bars",
    "features",
    "predictions",
    "signals",
    "orders",
    "fills",
    "positions",
    "risk_state",
    "audit_log",
    "walk_forward_results",
    "dead_letters",
    "reddit_mentions",
]
HYPERTABLES = {"bars": "7 days", "signals": "7 days", "audit_log": "30 days"}  # chunk interval


def _enable_timescaledb() -> bool:
    """CREATE EXTENSION timescaledb when available; False (plain tables) otherwise."""
    bind = op.get_bind()
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    ).scalar()
    if not available:
        return False
    # Available but not in shared_preload_libraries makes CREATE EXTENSION fail: fall back
    # to plain tables instead of failing the migration (savepoint keeps the txn usable).
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
        return True
    except sa.exc.DBAPIError:
        return False


def upgrade() -> None:
    op.create_table(
        "bars",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("bar_type", sa.Text, nullable=False),
        sa.Column("ts", TS, nullable=False),  # bar start instant, UTC
        sa.Column("open", F64, nullable=False),
        sa.Column("high", F64, nullable=False),
        sa.Column("low", F64, nullable=False),
        sa.Column("close", F64, nullable=False),
        sa.Column("volume", F64, nullable=False),
        sa.Column("bid", F64),
        sa.Column("ask", F64),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("ingested_at", TS, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("symbol", "bar_type", "ts", name="pk_bars"),
        sa.CheckConstraint("bar_type IN ('minute', 'daily')", name="ck_bars_bar_type"),
    )
    op.create_index("ix_bars_ts", "bars", ["ts"])

    op.create_table(
        "rejected_bars",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("symbol", sa.Text),  # nullable: the rejected row may lack it
        sa.Column("bar_type", sa.Text),
        sa.Column("ts", TS),
        sa.Column("raw", JSONB),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("source", sa.Text),
        sa.Column("rejected_at", TS, nullable=False, server_default=NOW),
    )
    op.create_index("ix_rejected_bars_rejected_at", "rejected_bars", ["rejected_at"])
    op.create_index("ix_rejected_bars_symbol_ts", "rejected_bars", ["symbol", "ts"])

    op.create_table(
        "features",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("bar_type", sa.Text, nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("feature_set_version", sa.Text, nullable=False),
        sa.Column("values", JSONB, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("symbol", "bar_type", "ts", "feature_set_version", name="pk_features"),
    )
    op.create_index("ix_features_ts", "features", ["ts"])

    op.create_table(
        "predictions",
        sa.Column("event_id", sa.Text, primary_key=True),  # UUID string of the event
        sa.Column("correlation_id", sa.Text),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("horizon", sa.Integer, nullable=False),
        sa.Column("q10", F64),
        sa.Column("q50", F64),
        sa.Column("q90", F64),
        sa.Column("model_version", sa.Text),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
    )
    op.create_index("ix_predictions_symbol_ts", "predictions", ["symbol", "ts"])
    op.create_index("ix_predictions_ts", "predictions", ["ts"])
    op.create_index("ix_predictions_correlation_id", "predictions", ["correlation_id"])

    op.create_table(
        "signals",
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("correlation_id", sa.Text),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("direction", sa.Text, nullable=False),
        sa.Column("score", F64),
        sa.Column("confidence", F64),
        sa.Column("payload", JSONB),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("event_id", "ts", name="pk_signals"),
    )
    op.create_index("ix_signals_ts", "signals", ["ts"])
    op.create_index("ix_signals_symbol_ts", "signals", ["symbol", "ts"])
    op.create_index("ix_signals_correlation_id", "signals", ["correlation_id"])

    op.create_table(
        "orders",
        sa.Column("client_order_id", sa.Text, primary_key=True),  # idempotency key
        sa.Column("correlation_id", sa.Text),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("side", sa.Text, nullable=False),
        sa.Column("qty", F64, nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("broker_order_id", sa.Text),
        sa.Column("submitted_at", TS),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
        sa.Column("payload", JSONB),
    )
    op.create_index("ix_orders_symbol", "orders", ["symbol"])
    op.create_index("ix_orders_status", "orders", ["status"])
    op.create_index("ix_orders_submitted_at", "orders", ["submitted_at"])
    op.create_index("ix_orders_correlation_id", "orders", ["correlation_id"])

    op.create_table(
        "fills",
        sa.Column("fill_id", sa.Text, primary_key=True),
        sa.Column(
            "client_order_id",
            sa.Text,
            sa.ForeignKey("orders.client_order_id", name="fk_fills_order"),
            nullable=False,
        ),
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("qty", F64, nullable=False),
        sa.Column("price", F64, nullable=False),
        sa.Column("fee", F64, nullable=False, server_default=sa.text("0")),
        sa.Column("ts", TS, nullable=False),
    )
    op.create_index("ix_fills_client_order_id", "fills", ["client_order_id"])
    op.create_index("ix_fills_ts", "fills", ["ts"])

    op.create_table(
        "positions",
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("qty", F64, nullable=False),
        sa.Column("avg_price", F64, nullable=False),
        sa.Column("opened_at", TS),
        sa.Column("high_water", F64),  # for trailing stops
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
    )

    op.create_table(
        "risk_state",  # key/value; the kill switch lives here
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", JSONB, nullable=False),
        sa.Column("updated_at", TS, nullable=False, server_default=NOW),
    )

    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("ts", TS, nullable=False, server_default=NOW),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("subject", sa.Text),
        sa.Column("correlation_id", sa.Text),
        sa.Column("details", JSONB),
        sa.PrimaryKeyConstraint("id", "ts", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_ts", "audit_log", ["ts"])
    op.create_index("ix_audit_log_correlation_id", "audit_log", ["correlation_id"])

    op.create_table(
        "walk_forward_results",
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("fold", sa.Integer, nullable=False),
        sa.Column("model_name", sa.Text, nullable=False),
        sa.Column("metrics", JSONB, nullable=False),
        sa.Column("created_at", TS, nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("run_id", "fold", "model_name", name="pk_walk_forward_results"),
    )
    op.create_index("ix_walk_forward_results_created_at", "walk_forward_results", ["created_at"])

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("partition", sa.Integer),
        sa.Column("offset", sa.BigInteger),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.LargeBinary),  # bytea: the original message, undecoded
        sa.Column("headers", JSONB),
        sa.Column("ts", TS, nullable=False, server_default=NOW),
    )
    op.create_index("ix_dead_letters_ts", "dead_letters", ["ts"])
    op.create_index("ix_dead_letters_topic", "dead_letters", ["topic"])

    op.create_table(
        "reddit_mentions",
        sa.Column("symbol", sa.Text, nullable=False),
        sa.Column("ts", TS, nullable=False),
        sa.Column("mentions", sa.Integer, nullable=False),
        sa.Column("sentiment", F64),
        sa.Column("source", sa.Text),
        sa.PrimaryKeyConstraint("symbol", "ts", name="pk_reddit_mentions"),
    )
    op.create_index("ix_reddit_mentions_ts", "reddit_mentions", ["ts"])

    if _enable_timescaledb():
        for table, chunk in HYPERTABLES.items():
            op.execute(
                f"SELECT create_hypertable('{table}', 'ts', chunk_time_interval => INTERVAL '{chunk}', "
                "create_default_indexes => FALSE, if_not_exists => TRUE)"
            )
        op.execute(f"SELECT add_retention_policy('signals', INTERVAL '{SIGNALS_RETENTION}', if_not_exists => TRUE)")
        op.execute(f"SELECT add_retention_policy('audit_log', INTERVAL '{AUDIT_RETENTION}', if_not_exists => TRUE)")


def downgrade() -> None:
    # Dropping a hypertable also drops its chunks and retention policy. The timescaledb
    # extension itself is left installed: other databases/schemas may use it.
    for table in reversed(TABLES):
        op.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')
