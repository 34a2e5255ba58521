"""The configuration as a Dagster resource: loaded once per run (code defaults < configs/*.yaml <
environment < Vault) and handed to the run's assets and ops as a frozen ``AwetConfig``."""
from __future__ import annotations

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from awet_dagster.config import AwetConfig, load_config


class SettingsResource(ConfigurableResource):
    """``config``: the run's configuration. Loaded in ``setup_for_execution`` (once per run and
    process); used outside a run (a direct call in a test), on first use."""

    _config: AwetConfig | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._config = load_config()

    @property
    def config(self) -> AwetConfig:
        if self._config is None:
            self._config = load_config()
        return self._config
