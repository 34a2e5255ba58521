"""Configuration layers: one source's values (a YAML file, the environment, Vault) as a nested
mapping with the precise origin of every leaf. The loader merges them; each source builds one."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Path_ = tuple[str, ...]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and where it came from."""


@dataclass
class Layer:
    name: str  # e.g. "configs/base.yaml", "env", "vault:secret/awet"
    values: dict[str, Any]  # nested
    origins: dict[Path_, str] = field(default_factory=dict)  # key path -> precise origin


def set_nested(tree: dict[str, Any], parts: Path_, value: Any) -> None:
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[parts[-1]] = value


def leaves(tree: Mapping[str, Any], prefix: Path_ = ()) -> dict[Path_, Any]:
    # Paths are tuples, not dotted strings: topic names such as "market.raw" contain dots.
    out: dict[Path_, Any] = {}
    for k, v in tree.items():
        key = (*prefix, str(k))
        if isinstance(v, Mapping) and v:
            out.update(leaves(v, key))
        else:
            out[key] = v
    return out
