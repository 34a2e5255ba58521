"""Local infrastructure (embedded PostgreSQL + tansu broker) for development and tests.

Pure core: imports neither dagster nor confluent_kafka.
"""

from awet_dagster.infra.endpoints import Endpoints, read_endpoints, resolve_endpoints
from awet_dagster.infra.manager import infra_down, infra_status, infra_up
from awet_dagster.infra.paths import awet_home
from awet_dagster.infra.processes import InfraError

__all__ = [
    "Endpoints",
    "InfraError",
    "awet_home",
    "infra_down",
    "infra_status",
    "infra_up",
    "read_endpoints",
    "resolve_endpoints",
]
