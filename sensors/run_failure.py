"""Run-failure sensor: every failed Dagster run lands in the audit log (who/what/why), so an
operator sees pipeline failures next to trading decisions, and `awet status` users can find it."""
from dagster import RunFailureSensorContext, run_failure_sensor

from awet_dagster.config import load_config
from awet_dagster.infra.endpoints import resolve_database_url
from awet_dagster.storage.db import connect
from awet_dagster.storage.trading import record_audit


@run_failure_sensor(description="Records every failed run (job, run id, failing steps, error) in the audit log.")
def run_failure_audit_sensor(context: RunFailureSensorContext) -> None:
    run = context.dagster_run
    failure = context.failure_event
    message = failure.message if failure else "unknown"
    steps = [e.step_key for e in context.get_step_failure_events()]
    context.log.warning("run %s of %s failed at %s: %s", run.run_id, run.job_name, steps, message)
    cfg = load_config()
    with connect(resolve_database_url(cfg), connect_timeout_s=cfg.database.connect_timeout_s) as conn:
        record_audit(conn, actor="dagster", action="dagster.run_failure", subject=run.job_name,
                     details={"run_id": run.run_id, "failed_steps": steps, "message": message[:2000]})
