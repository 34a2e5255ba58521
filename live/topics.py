"""Kafka topic administration (idempotent creation of topics and their dead-letter twins)."""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

DEFAULT_DLQ_SUFFIX = ".dlq"


def _admin(bootstrap: str, timeout_s: float) -> AdminClient:
    ms = int(timeout_s * 1000)
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            # Bound every network wait by the caller's timeout (the defaults are minutes).
            "socket.timeout.ms": ms,
            "socket.connection.setup.timeout.ms": ms,
        }
    )


def topic_partitions(bootstrap: str, *, timeout_s: float = 10.0) -> dict[str, int]:
    """{topic: partition count} for every non-internal topic on the cluster."""
    try:
        md = _admin(bootstrap, timeout_s).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise RuntimeError(f"Kafka at {bootstrap} did not answer within {timeout_s}s: {exc}") from exc
    return {name: len(t.partitions) for name, t in md.topics.items() if not name.startswith("__")}


def list_topics(bootstrap: str, *, timeout_s: float = 10.0) -> list[str]:
    """Sorted names of the non-internal topics."""
    return sorted(topic_partitions(bootstrap, timeout_s=timeout_s))


def with_dlq(topics: Mapping[str, int], dlq_suffix: str = DEFAULT_DLQ_SUFFIX) -> dict[str, int]:
    """The topics plus one dead-letter twin each (same partition count)."""
    out = dict(topics)
    for name, partitions in topics.items():
        if not name.endswith(dlq_suffix):
            out.setdefault(f"{name}{dlq_suffix}", partitions)
    return out


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    timeout_s: float = 30.0,
    dlq_suffix: str = DEFAULT_DLQ_SUFFIX,
    replication_factor: int = 1,
) -> dict[str, str]:
    """Create each topic and its ``dlq_suffix`` twin if missing; returns {topic: outcome}.

    outcome is ``"created"`` or ``"exists"``; an existing topic keeps its partition count
    (Kafka cannot shrink it, and growing it silently would re-key partitioned streams).
    """
    wanted = with_dlq(topics, dlq_suffix)
    admin = _admin(bootstrap, timeout_s)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise RuntimeError(f"Kafka at {bootstrap} did not answer within {timeout_s}s: {exc}") from exc

    outcome = {name: "exists" for name in wanted if name in existing}
    missing = [
        NewTopic(name, num_partitions=int(parts), replication_factor=replication_factor)
        for name, parts in wanted.items()
        if name not in existing
    ]
    if not missing:
        return outcome
    futures = admin.create_topics(missing, operation_timeout=timeout_s, request_timeout=timeout_s)
    errors: list[str] = []
    for name, fut in futures.items():
        try:
            fut.result(timeout=timeout_s)
            outcome[name] = "created"
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                outcome[name] = "exists"  # created concurrently by someone else
            else:
                errors.append(f"{name}: {exc}")
        except TimeoutError:
            errors.append(f"{name}: no answer within {timeout_s}s")
    if errors:
        raise RuntimeError(f"Could not create topics on {bootstrap}: " + "; ".join(errors))
    return outcome
