"""Alembic environment: online migrations only (the schema uses server features).

A connection may be handed over in ``config.attributes["connection"]`` (storage.db does
so); otherwise ``sqlalchemy.url`` from the config / alembic.ini is used, then env
``DATABASE_URL``.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from awet_dagster.storage.db import MIGRATION_LOCK_TIMEOUT, make_engine

config = context.config
target_metadata = None  # hand-written migrations; no autogenerate from models


def _configure_and_run(connection: sa.engine.Connection) -> None:
    # Bounded waits: DDL blocked by another session fails instead of hanging.
    connection.execute(sa.text(f"SET lock_timeout = '{MIGRATION_LOCK_TIMEOUT}'"))
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError(
            "No database URL: set sqlalchemy.url in alembic.ini, or DATABASE_URL "
            "(the embedded server's URL is in .awet/endpoints.json after `awet infra up`)."
        )
    engine = make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            _configure_and_run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("Offline (--sql) migrations are not supported: the schema depends on server extensions.")
run_migrations_online()
