"""The main job: every stage of the platform in dependency order.

`awet run` launches it against the project's Dagster instance, so its runs, materializations
and checks can be browsed in `awet ui` afterwards.
"""
from __future__ import annotations

from dagster import AssetSelection, define_asset_job, in_process_executor

MAIN_JOB_NAME = "awet_main"

# In-process: a step subprocess costs seconds each on 2 cores (measured 22 s for a tiny job).
main_job = define_asset_job(
    MAIN_JOB_NAME,
    selection=AssetSelection.all(),
    executor_def=in_process_executor,
    description="Ingest → features → train → walk-forward gate → ONNX → MLflow → promotion.",
)
