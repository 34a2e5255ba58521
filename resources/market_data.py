"""Market-data sources for assets: the offline sample by default, vendors by name."""
from typing import Any

from dagster import ConfigurableResource

from awet_dagster.config import AwetConfig, load_config
from awet_dagster.sources.registry import BarSource, get_source


def _secret(value) -> str | None:
    return value.get_secret_value() if value is not None else None


def source_kwargs(name: str, cfg: AwetConfig) -> dict[str, Any]:
    """Credentials and settings each vendor client takes, from the layered config."""
    data = cfg.data
    if name == "polygon":
        return {"polygon_api_key": _secret(data.polygon_api_key)}
    if name == "alpaca":
        return {"alpaca_api_key": _secret(data.alpaca_api_key), "alpaca_secret_key": _secret(data.alpaca_secret_key)}
    return {}


class MarketDataResource(ConfigurableResource):
    """`source` None means `data.source` from config; tests register fakes by name."""

    source: str | None = None

    def source_name(self) -> str:
        return self.source or load_config().data.source

    def client(self) -> BarSource:
        name = self.source_name()
        return get_source(name, **source_kwargs(name, load_config()))
