"""Schedules: daily incremental ingestion (off by default) and the retention job."""
from dagster import DefaultScheduleStatus, RunRequest, ScheduleDefinition, ScheduleEvaluationContext, schedule

from awet_dagster.config import AwetConfig
from jobs.maintenance import retention_job


def build_schedules(daily_pipeline_job, cfg: AwetConfig):

    @schedule(
        name="daily_incremental_ingest",
        cron_schedule=cfg.schedules.daily_ingest_cron,
        job=daily_pipeline_job,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING if cfg.schedules.daily_ingest_enabled
        else DefaultScheduleStatus.STOPPED,
        description="Re-ingest every configured symbol's daily bars and features after the close.",
    )
    def daily_incremental_ingest(context: ScheduleEvaluationContext):
        keys = list(cfg.data.symbols)  # daily partitions are the configured symbols (as loaded)
        return RunRequest(
            run_key=context.scheduled_execution_time.strftime("%Y-%m-%d"),
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        )

    retention = ScheduleDefinition(
        name="retention",
        job=retention_job,
        cron_schedule=cfg.retention.schedule_cron,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING if cfg.retention.schedule_enabled
        else DefaultScheduleStatus.STOPPED,
        description="Delete rows past their retention window (plain PostgreSQL has no TimescaleDB policies).",
    )
    return [daily_incremental_ingest, retention]
