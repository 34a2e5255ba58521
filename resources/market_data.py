"""Market-data sources for assets: the offline sample by default, vendors by name."""
from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from awet_dagster.config import AwetConfig, load_config
from resources.settings import run_config
from awet_dagster.sources.registry import BarSource, get_source
from awet_dagster.sources.settings import source_kwargs

__all__ = ["MarketDataResource", "source_kwargs"]  # source_kwargs: re-exported for old imports


class MarketDataResource(ConfigurableResource):
    """`source` None means `data.source` from config; tests register fakes by name."""

    source: str | None = None

    _cfg: AwetConfig | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._cfg = run_config(context.run_id)  # the run's one load: data.source, the vendors' credentials

    def _config(self) -> AwetConfig:
        if self._cfg is None:  # used outside a run
            self._cfg = load_config()
        return self._cfg

    def source_name(self) -> str:
        return self.source or self._config().data.source

    def client(self) -> BarSource:
        name = self.source_name()
        return get_source(name, **source_kwargs(name, self._config()))
