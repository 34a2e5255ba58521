"""The feature set: one spec, a batch (polars) and a streaming implementation, scaling."""
from awet_dagster.features.batch import compute_features
from awet_dagster.features.scaling import Scaler, fit_scaler
from awet_dagster.features.spec import (
    FEATURE_COLUMNS,
    FEATURE_SET_VERSION,
    FEATURES,
    MAX_WARMUP,
    FeatureSpec,
)
from awet_dagster.features.streaming import FeatureState

__all__ = [
    "FEATURES",
    "FEATURE_COLUMNS",
    "FEATURE_SET_VERSION",
    "MAX_WARMUP",
    "FeatureSpec",
    "FeatureState",
    "Scaler",
    "compute_features",
    "fit_scaler",
]
