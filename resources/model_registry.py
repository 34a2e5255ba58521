"""The model registry as a Dagster resource: ``for_config(cfg)`` is the run's
``awet_dagster.model.registry.ModelRegistry`` (an MlflowClient bound to the configuration's
stores; MLflow's process-wide state is never changed). One registry per run and store; a
test may hand in a resource whose ``for_config`` returns the in-memory ``FakeModelRegistry``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dagster import ConfigurableResource
from pydantic import PrivateAttr

from awet_dagster.config import AwetConfig

if TYPE_CHECKING:
    from awet_dagster.model.registry import ModelRegistry


class ModelRegistryResource(ConfigurableResource):
    _registries: dict[tuple, Any] = PrivateAttr(default_factory=dict)

    def for_config(self, cfg: AwetConfig) -> ModelRegistry:
        key = (cfg.mlflow_tracking_uri, cfg.mlflow.registry_uri, cfg.mlflow_artifact_root, cfg.mlflow.experiment,
               cfg.mlflow.model_name, cfg.mlflow.champion_alias)
        if key not in self._registries:
            # Imported on first use: the model package costs ~2 s to import (onnxruntime, the
            # feature kernels); loading the code location (UI, daemon) does not pay for it.
            from awet_dagster.model.registry import ModelRegistry

            self._registries[key] = ModelRegistry(cfg)
        return self._registries[key]
