"""The one place that composes the Dagster layer (loaded by workspace.yaml)."""
import warnings

from dagster import BetaWarning, Definitions, PreviewWarning

# backfill_policy and check kinds are marked beta/preview; we pin the Dagster version.
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)


from assets.alt_data import reddit_mentions
from assets.features import build_features
from assets.market_data import build_raw_bars
from assets.model import build_model_assets
from assets.platform import platform_preflight
from assets.signals import build_alpha_calibration
from jobs.main import build_jobs
from jobs.maintenance import retention_job
from jobs.promotion import approve_model_job, promote_model_job
from jobs.schedules import build_schedules
from resources.database import DatabaseResource
from resources.market_data import MarketDataResource
from sensors.promotion import model_promotion_sensor
from sensors.run_failure import run_failure_audit_sensor

BAR_TYPES = ("daily", "minute")

_jobs = build_jobs(BAR_TYPES)

defs = Definitions(
    assets=[
        platform_preflight,
        reddit_mentions,
        *(build(bar_type) for bar_type in BAR_TYPES
          for build in (build_raw_bars, build_features, build_alpha_calibration)),
        *(a for bar_type in BAR_TYPES for a in build_model_assets(bar_type)),
    ],
    jobs=[*_jobs, retention_job, promote_model_job, approve_model_job],
    sensors=[model_promotion_sensor, run_failure_audit_sensor],
    schedules=build_schedules(next(j for j in _jobs if j.name == "daily_pipeline")),
    resources={"database": DatabaseResource(), "market_data": MarketDataResource()},
)
