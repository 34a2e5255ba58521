"""Model promotion sensor: with a cursor, it proposes a promotion run (``jobs.promotion``) for
each registered version whose blocking checks passed (and, if configured, was approved)."""
from dagster import RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor

from awet_dagster.model import promotion
from jobs.promotion import promote_model_job
from resources.model_registry import ModelRegistryResource
from resources.settings import SettingsResource


@sensor(job=promote_model_job, minimum_interval_seconds=30,
        description="Promotes registered versions whose blocking checks passed (and, if configured, were approved).")
def model_promotion_sensor(context: SensorEvaluationContext, settings: SettingsResource,
                           model_registry: ModelRegistryResource):
    cfg = settings.config  # loaded per evaluation: a changed environment is seen at the next one
    after = int(context.cursor or 0)
    decisions = promotion.decide(cfg, model_registry.for_config(cfg), after_version=after)
    if not decisions:
        return SkipReason(f"no version newer than v{after}")
    requests, cursor = [], after
    for d in decisions:
        if d.action == "await_approval":
            break  # keep the cursor before it: re-examined once approved
        cursor = int(d.version)
        if d.action == "promote":
            requests.append(RunRequest(run_key=f"promote-v{d.version}", run_config={
                "ops": {"promote_version": {"config": {"version": d.version, "reason": d.reason}}}}))
        else:
            context.log.info("v%s not promoted: %s", d.version, d.reason)
    return SensorResult(run_requests=requests, cursor=str(cursor))
