"""The configuration as a Dagster resource: loaded once per run (code defaults < configs/*.yaml <
environment < Vault) and handed to the run's assets and ops as a frozen ``AwetConfig``.

``run_config(run_id)`` is that one load, shared by every resource of the run in this process
(settings, database, market data): Dagster builds each resource on its own, so without it a run
read the YAML, environment and Vault three times."""
from __future__ import annotations

import threading
from collections import OrderedDict

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from awet_dagster.config import AwetConfig, load_config


_RUNS: OrderedDict[str, AwetConfig] = OrderedDict()  # run id -> its configuration (newest last)
_KEEP = 8  # runs remembered per process (a run's resources are built at its start)
_lock = threading.Lock()


def run_config(run_id: str | None) -> AwetConfig:
    """The configuration of run ``run_id``, loaded on the first call for it in this process;
    outside a run (None), a fresh load."""
    if run_id is None:
        return load_config()
    with _lock:
        cfg = _RUNS.get(run_id)
        if cfg is None:
            cfg = _RUNS[run_id] = load_config()
            while len(_RUNS) > _KEEP:
                _RUNS.popitem(last=False)
        return cfg


class SettingsResource(ConfigurableResource):
    """``config``: the run's configuration. Loaded in ``setup_for_execution`` (once per run and
    process); used outside a run (a direct call in a test), on first use."""

    _config: AwetConfig | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._config = run_config(context.run_id)

    @property
    def config(self) -> AwetConfig:
        if self._config is None:
            self._config = load_config()
        return self._config
