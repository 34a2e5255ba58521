"""Per-source constructor arguments from the layered config.

Shared by the Dagster resource (`resources/market_data.py`) and the command line, so
`awet replay --source X` builds X exactly as a backfill does.
"""
from __future__ import annotations

from typing import Any

from awet_dagster.config import AwetConfig


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def source_kwargs(name: str, cfg: AwetConfig) -> dict[str, Any]:
    """Credentials and settings the source registered as `name` takes, from `cfg`."""
    data = cfg.data
    if name == "polygon":
        return {"polygon_api_key": _secret(data.polygon_api_key)}
    if name == "alpaca":
        return {"alpaca_api_key": _secret(data.alpaca_api_key), "alpaca_secret_key": _secret(data.alpaca_secret_key)}
    if name == "lean":
        return {"lean_root": data.lean_root}
    return {}
