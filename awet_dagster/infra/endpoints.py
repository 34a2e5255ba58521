"""Endpoints of the infrastructure: recorded by `awet infra up`, resolved by everyone else.

``<home>/endpoints.json`` holds only the embedded servers that `awet infra up` started
(never an external ``DATABASE_URL``, which may carry a password).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotation only: the config schema imports infra (the Kafka JVM defaults)
    from awet_dagster.config import AwetConfig

from awet_dagster.infra.paths import layout
from awet_dagster.infra.processes import InfraError, is_alive


@dataclass(frozen=True)
class Endpoints:
    database_url: str  # libpq form postgresql://... (storage.db.make_engine adapts it)
    kafka_bootstrap: str  # host:port
    # What `awet infra up` started and owns: {"postgres": {"pid", "create_time", ...},
    # "broker": {...}}. Empty when both endpoints are external.
    started: dict[str, Any] = field(default_factory=dict)
    # Lines the caller should show (why the broker is not the one asked for); not recorded.
    notices: tuple[str, ...] = ()

    @property
    def broker_kind(self) -> str:
        """"kafka" or "tansu" for an embedded broker, "external" for KAFKA_BOOTSTRAP."""
        entry = self.started.get("broker")
        return str(entry.get("name", "")) if entry else "external"


def write_endpoints(path: Path, ep: Endpoints) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    data = asdict(ep)
    data.pop("notices", None)
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def read_endpoints(path: Path) -> Endpoints | None:
    try:
        data = json.loads(path.read_text())
        return Endpoints(
            database_url=data.get("database_url") or "",
            kafka_bootstrap=data.get("kafka_bootstrap") or "",
            started=dict(data.get("started") or {}),
        )
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, AttributeError):
        return None


def external_database_url(cfg: AwetConfig) -> str | None:
    """``cfg.database.url`` (SecretStr or str) when set, else None."""
    url = cfg.database.url
    if url is None:
        return None
    value = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    return value or None


def external_kafka_bootstrap(cfg: AwetConfig) -> str | None:
    value = cfg.kafka.bootstrap
    return value or None


def resolve_endpoints(cfg: AwetConfig, need: tuple[str, ...] = ("postgres", "broker")) -> Endpoints:
    """External endpoints from config when set, else those recorded by `awet infra up`.

    Raises InfraError with the command to run when an embedded endpoint in `need` is not
    recorded, or recorded but its server is no longer running. A component left out of
    `need` is returned as recorded (or "") without being checked.
    """
    db = external_database_url(cfg)
    kafka = external_kafka_bootstrap(cfg)
    if (db or "postgres" not in need) and (kafka or "broker" not in need):
        return Endpoints(db or "", kafka or "", {})

    home = layout(cfg)
    recorded = read_endpoints(home.endpoints_file)
    hint = f"run `awet infra up` (AWET home: {home.home}) or set DATABASE_URL and KAFKA_BOOTSTRAP"
    if recorded is None:
        raise InfraError(f"No local infrastructure is recorded; {hint}.")
    started: dict[str, Any] = {}
    for name, needed in (("postgres", not db and "postgres" in need), ("broker", not kafka and "broker" in need)):
        if not needed:
            continue
        entry = recorded.started.get(name)
        if not entry or not is_alive(entry.get("pid"), entry.get("create_time")):
            raise InfraError(f"The embedded {name} recorded in {home.endpoints_file} is not running; {hint}.")
        started[name] = entry
    return Endpoints(
        database_url=db or recorded.database_url,
        kafka_bootstrap=kafka or recorded.kafka_bootstrap,
        started=started,
    )


def redact_url(url: str) -> str:
    """Hide the password of a URL (status output, logs)."""
    return re.sub(r"(://[^:/@]+):[^/]*@", r"\1:***@", url)


def resolve_database_url(cfg: AwetConfig) -> str:
    """The database URL alone (commands that need no broker)."""
    return resolve_endpoints(cfg, need=("postgres",)).database_url
