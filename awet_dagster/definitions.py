"""The one place that composes the Dagster layer (loaded by workspace.yaml)."""
import warnings

from dagster import BetaWarning, Definitions, PreviewWarning

from awet_dagster.config import load_config

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
from resources.model_registry import ModelRegistryResource
from resources.settings import SettingsResource
from sensors.promotion import model_promotion_sensor
from sensors.run_failure import run_failure_audit_sensor

BAR_TYPES = ("daily", "minute")

# Loaded once, when the code location loads: partitions, job and schedule settings. Each run
# loads its own (SettingsResource), so a changed environment takes effect at the next run.
_cfg = load_config()
_jobs = build_jobs(BAR_TYPES, _cfg)

defs = Definitions(
    assets=[
        platform_preflight,
        reddit_mentions,
        *(a for bar_type in BAR_TYPES
          for a in (build_raw_bars(bar_type, _cfg), build_features(bar_type, _cfg), build_alpha_calibration(bar_type))),
        *(a for bar_type in BAR_TYPES for a in build_model_assets(bar_type)),
    ],
    jobs=[*_jobs, retention_job, promote_model_job, approve_model_job],
    sensors=[model_promotion_sensor, run_failure_audit_sensor],
    schedules=build_schedules(next(j for j in _jobs if j.name == "daily_pipeline"), _cfg),
    resources={"database": DatabaseResource(), "market_data": MarketDataResource(), "settings": SettingsResource(),
               "model_registry": ModelRegistryResource()},
)
