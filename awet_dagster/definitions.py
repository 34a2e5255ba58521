"""The one place that composes the Dagster layer (loaded by workspace.yaml)."""
from __future__ import annotations

from dagster import Definitions

from assets.platform import platform_preflight
from jobs.main import main_job
from resources.database import DatabaseResource

defs = Definitions(
    assets=[platform_preflight],
    jobs=[main_job],
    resources={"database": DatabaseResource()},
)
