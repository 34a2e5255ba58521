"""Typed, layered, frozen configuration (see loader.py for the precedence)."""
from awet_dagster.config.loader import (
    ConfigError,
    LoadedConfig,
    effective_values,
    find_config_dir,
    load_config,
    load_config_with_sources,
)
from awet_dagster.config.schema import AwetConfig, TopicConfig

__all__ = [
    "AwetConfig",
    "ConfigError",
    "LoadedConfig",
    "TopicConfig",
    "effective_values",
    "find_config_dir",
    "load_config",
    "load_config_with_sources",
]
