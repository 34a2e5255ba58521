"""Maintenance jobs: data retention when the database has no TimescaleDB policies."""
from datetime import datetime, timezone

from dagster import OpExecutionContext, job, op

from awet_dagster.storage.db import make_engine, timescaledb_enabled
from awet_dagster.storage.retention import apply_retention
from resources.database import DatabaseResource
from resources.settings import SettingsResource


@op(description="Delete minute bars, signals and audit rows older than the configured retention.")
def apply_retention_op(context: OpExecutionContext, database: DatabaseResource, settings: SettingsResource) -> dict:
    cfg = settings.config
    engine = make_engine(database.resolved_url())
    try:
        with engine.connect() as conn:
            if timescaledb_enabled(conn):
                context.log.info("TimescaleDB present: its policies cover signals/audit; minute bars still here")
        deleted = apply_retention(engine, cfg.retention, datetime.now(timezone.utc))
    finally:
        engine.dispose()
    context.log.info("retention deleted %s", deleted)
    return deleted


@job(description="Apply the retention windows of `retention.*` (minute bars 90 d, signals 180 d, audit 365 d).")
def retention_job():
    apply_retention_op()
