"""The Vault layer: a KV v2 secret whose keys are dotted config keys (or nested mappings).

Used only when VAULT_ADDR and a token (VAULT_TOKEN) are set; a Vault that is configured but
unreachable is an error, not a silent fallback, since it usually holds the secrets.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from awet_dagster.config.layers import ConfigError, Layer, leaves, set_nested
from awet_dagster.config.schema import VaultConfig


def vault_layer(environ: Mapping[str, str], location: VaultConfig) -> Layer | None:
    addr = environ.get("VAULT_ADDR")
    token = environ.get("VAULT_TOKEN")
    if not addr or not token:
        return None
    import hvac  # only when Vault is configured: most runs never need the client
    import requests

    name = f"vault:{location.mount}/{location.path}"
    client = hvac.Client(url=addr, token=token, timeout=location.timeout_s)
    try:
        resp = client.secrets.kv.v2.read_secret_version(
            path=location.path, mount_point=location.mount, raise_on_deleted_version=True
        )
    except hvac.exceptions.InvalidPath:
        raise ConfigError(f"{name}: no secret at {addr} (VAULT_ADDR); create it or unset VAULT_ADDR") from None
    except hvac.exceptions.Forbidden:
        raise ConfigError(f"{name}: permission denied for the token in VAULT_TOKEN") from None
    except (requests.exceptions.RequestException, hvac.exceptions.VaultError) as exc:
        raise ConfigError(f"{name}: cannot read from {addr} (VAULT_ADDR): {type(exc).__name__}: {exc}") from None
    data: dict[str, Any] = (resp.get("data") or {}).get("data") or {}
    values: dict[str, Any] = {}
    for key, value in data.items():
        # "risk.daily_loss_limit" and {"risk": {"daily_loss_limit": ...}} are both accepted.
        path = tuple(key.split("."))
        if isinstance(value, Mapping):
            for sub, leaf in leaves(value, path).items():
                set_nested(values, sub, leaf)
        else:
            set_nested(values, path, value)
    return Layer(name, values, {k: name for k in leaves(values)})
