"""Model promotion jobs: one performs a promotion (audited; launched by the promotion sensor),
one lets an operator approve a version from the Dagster UI launchpad."""
from dagster import Config, OpExecutionContext, job, op

from awet_dagster.model import promotion
from resources.database import DatabaseResource
from resources.model_registry import ModelRegistryResource
from resources.settings import SettingsResource


class VersionConfig(Config):
    version: str
    reason: str = ""
    operator: str = ""


@op(description="Set the champion alias to the given version and record who/what/why in the audit log.")
def promote_version(context: OpExecutionContext, config: VersionConfig, database: DatabaseResource,
                    settings: SettingsResource, model_registry: ModelRegistryResource) -> str:
    cfg = settings.config
    registry = model_registry.for_config(cfg)
    decisions = {d.version: d for d in promotion.decide(cfg, registry)}
    decision = decisions.get(config.version)
    if decision is None or decision.action != "promote":
        raise ValueError(f"version {config.version} is not eligible: {decision.reason if decision else 'unknown or not newer'}")
    with database.connect() as conn:
        ref = promotion.promote(cfg, registry, conn, config.version, actor=config.operator or f"dagster:{context.run_id[:8]}",
                                reason=config.reason or decision.reason)
    context.log.info("champion is now %s v%s", ref.name, ref.version)
    return ref.version


@job(description="Promote a registered model version to champion (launched by the promotion sensor).")
def promote_model_job():
    promote_version()


@op(description="Record an operator's approval of a version (needed when promotion.require_approval).")
def approve_version(context: OpExecutionContext, config: VersionConfig, database: DatabaseResource,
                    settings: SettingsResource, model_registry: ModelRegistryResource) -> str:
    cfg = settings.config
    with database.connect() as conn:
        promotion.approve(cfg, model_registry.for_config(cfg), conn, config.version, operator=config.operator, note=config.reason)
    context.log.info("version %s approved by %s", config.version, config.operator)
    return config.version


@job(description="Approve a candidate version for promotion: set `version` and `operator` in the launchpad.")
def approve_model_job():
    approve_version()
