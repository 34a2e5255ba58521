"""Live inference core, by module: ``predictors`` (where the serving model comes from),
``calibrations`` (each version's Platt calibrator), ``windows`` (per-symbol feature windows),
``quantiles`` (model output -> contract quantiles).

Pure core (no Kafka, no Dagster). The live ``inference`` service (``live.services.inference``)
wires these to the ``engineered`` and ``predictions`` topics.

- ``PredictorSource.current() -> (version, predictor) | None``: the model to serve now.
  ``ChampionSource`` polls the registry's ``champion`` alias every ``poll_s`` seconds
  and hot-swaps to a new version (download + load happen before the swap; a failure keeps
  the previous model); its ``oos_sharpe`` is the served version's walk-forward median OOS
  Sharpe (None when unknown). ``StaticPredictorSource`` is the test double / fixed-model source.
- ``FeatureWindows``: the last N feature rows per (symbol, bar_type), oldest first, turned
  into the (lookback, n_features) window a predictor's preprocessing expects.
- ``to_quantiles``: the predictor's per-horizon {quantile: forward log return} ->
  contract q10/q50/q90 as simple returns (monotone map, so the order is kept; crossed
  model quantiles are sorted, the contract requires q10 <= q50 <= q90).
"""
from awet_dagster.inference.calibrations import ModelCalibrations
from awet_dagster.inference.predictors import ChampionSource, ModelSource, Predictor, PredictorSource, StaticPredictorSource
from awet_dagster.inference.quantiles import simple_return_quantiles, to_quantiles
from awet_dagster.inference.windows import FeatureWindows

__all__ = [
    "FeatureWindows",
    "ChampionSource",
    "ModelSource",
    "ModelCalibrations",
    "Predictor",
    "PredictorSource",
    "StaticPredictorSource",
    "simple_return_quantiles",
    "to_quantiles",
]
