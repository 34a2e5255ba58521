"""Credential handling for vendor clients: accept plain or secret strings, never echo them."""
from __future__ import annotations

from typing import Any

from awet_dagster.sources.errors import MissingCredentials


def reveal(value: Any) -> str | None:
    """Plain value of a str or a pydantic `SecretStr`-like object (None/blank -> None)."""
    if value is None:
        return None
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    text = str(value).strip()
    return text or None


def require(vendor: str, **settings: Any) -> dict[str, str]:
    """Revealed values of `settings`; raises naming (never showing) the missing ones."""
    revealed = {name: reveal(value) for name, value in settings.items()}
    missing = [name for name, value in revealed.items() if value is None]
    if missing:
        raise MissingCredentials(
            f"{vendor}: missing credential(s) {missing}; set data.<name> in the config "
            f"(environment AWET__DATA__{missing[0].upper()}) or in Vault"
        )
    return revealed  # type: ignore[return-value]
