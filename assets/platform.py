"""The platform preflight: every run starts by proving its infrastructure is usable."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from awet_dagster.infra.endpoints import resolve_endpoints
from awet_dagster.infra.probes import broker_reachable
from awet_dagster.storage.db import current_revision, head_revision
from resources.database import DatabaseResource
from resources.settings import SettingsResource


@asset(
    group_name="platform",
    description=(
        "Preflight of the data platform: PostgreSQL reachable with the schema at the Alembic "
        "head, and the Kafka-protocol broker reachable. Fails with the reason otherwise."
    ),
)
def platform_preflight(context: AssetExecutionContext, database: DatabaseResource,
                       settings: SettingsResource) -> MaterializeResult:
    cfg = settings.config
    endpoints = resolve_endpoints(cfg)
    revision = current_revision(database.resolved_url())
    head = head_revision()
    if revision != head:
        raise RuntimeError(f"database schema at {revision!r}, expected head {head!r}: run `awet infra up`")
    if not broker_reachable(endpoints.kafka_bootstrap, timeout_s=5.0):
        raise RuntimeError(f"Kafka broker at {endpoints.kafka_bootstrap} is not reachable: run `awet infra up`")
    context.log.info("schema %s, broker %s", revision, endpoints.kafka_bootstrap)
    return MaterializeResult(
        metadata={
            "schema_revision": revision,
            "kafka_bootstrap": endpoints.kafka_bootstrap,
            "database": MetadataValue.text(_redact(endpoints.database_url)),
            "environment": cfg.env,
        }
    )


def _redact(url: str) -> str:
    # Never show a password in the UI.
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL we cannot parse is shown as its scheme only
        return url.split(":", 1)[0] + "://..."
