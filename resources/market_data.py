"""Market-data sources for assets: the offline sample by default, vendors by name."""
from dagster import ConfigurableResource

from awet_dagster.config import load_config
from awet_dagster.sources.registry import BarSource, get_source
from awet_dagster.sources.settings import source_kwargs

__all__ = ["MarketDataResource", "source_kwargs"]  # source_kwargs: re-exported for old imports


class MarketDataResource(ConfigurableResource):
    """`source` None means `data.source` from config; tests register fakes by name."""

    source: str | None = None

    def source_name(self) -> str:
        return self.source or load_config().data.source

    def client(self) -> BarSource:
        name = self.source_name()
        return get_source(name, **source_kwargs(name, load_config()))
