"""librdkafka configuration builders for the live services.

Inputs are plain mappings so this module does not depend on the config package's shape:
the caller passes ``cfg.kafka.client`` (extra librdkafka settings for every client),
``cfg.kafka.consumer`` / ``cfg.kafka.producer`` (role-specific settings) and builds the group
id from ``cfg.kafka.group_prefix``. Later arguments override earlier ones, except the
settings the bus's at-least-once guarantee depends on (see ``_FORCED_CONSUMER``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Test profile: a group join takes ~3 s instead of ~23 s. NOT production defaults: a 6 s
#: session timeout evicts consumers on a GC pause or a slow handler. The fetch wait is for
#: Kafka, which answers a waiting fetch as soon as data arrives; tansu answers only when the
#: wait is over (round trips ~4 ms p50 with 5 ms, ~250 ms with the default 500,
#: ../shared/notes/embedded-infra.md): tests on tansu set it to 5 ms (tests/conftest.py), and
#: configs/dev.yaml keeps 5 ms for a development broker that may be tansu.
FAST_DEV_CONSUMER_SETTINGS: Mapping[str, Any] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "max.poll.interval.ms": 10000,
    "fetch.wait.max.ms": 100,
}

#: Producer settings matching the dev profile: send immediately (the bus flushes per batch
#: anyway, so lingering only adds latency).
FAST_DEV_PRODUCER_SETTINGS: Mapping[str, Any] = {"linger.ms": 0}

_CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "auto.offset.reset": "earliest",
    # A stuck broker connection must surface as an error, never a silent hang.
    "socket.timeout.ms": 30000,
}

# The bus commits offsets itself, only after outputs are delivered; librdkafka's
# auto-commit (or auto offset store) would commit before that and break at-least-once.
_FORCED_CONSUMER: Mapping[str, Any] = {"enable.auto.commit": False, "enable.auto.offset.store": False}

_PRODUCER_DEFAULTS: Mapping[str, Any] = {
    # acks=all + idempotence: no duplicates from producer retries, no loss on leader change.
    "acks": "all",
    "enable.idempotence": True,
    # Bound how long a message may sit undelivered before its callback reports an error.
    "message.timeout.ms": 30000,
    "socket.timeout.ms": 30000,
}


def group_id(prefix: str, service: str) -> str:
    """Consumer group of a service: ``<prefix>.<service>`` (prefix separates environments)."""
    if not service:
        raise ValueError("service name must be non-empty")
    return f"{prefix}.{service}" if prefix else service


def consumer_config(
    bootstrap: str,
    group: str,
    *,
    client: Mapping[str, Any] | None = None,
    consumer: Mapping[str, Any] | None = None,
    client_id: str | None = None,
) -> dict[str, Any]:
    """Consumer config: defaults < ``client`` < ``consumer``; auto-commit is always off."""
    if not bootstrap:
        raise ValueError("bootstrap servers must be non-empty")
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "group.id": group, **_CONSUMER_DEFAULTS}
    if client_id:
        conf["client.id"] = client_id
    conf.update(client or {})
    conf.update(consumer or {})
    for key, value in _FORCED_CONSUMER.items():
        if key in conf and conf[key] not in (value, str(value).lower()):
            raise ValueError(f"{key}={conf[key]!r} is not allowed: the bus commits offsets itself")
        conf[key] = value
    return conf


def producer_config(
    bootstrap: str,
    *,
    client: Mapping[str, Any] | None = None,
    producer: Mapping[str, Any] | None = None,
    client_id: str | None = None,
) -> dict[str, Any]:
    """Producer config: defaults (acks=all, idempotent) < ``client`` < ``producer``."""
    if not bootstrap:
        raise ValueError("bootstrap servers must be non-empty")
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, **_PRODUCER_DEFAULTS}
    if client_id:
        conf["client.id"] = client_id
    conf.update(client or {})
    conf.update(producer or {})
    return conf
