"""Kafka topic administration (idempotent creation of topics and their dead-letter twins)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from awet_dagster.infra.probes import broker_reachable

DEFAULT_DLQ_SUFFIX = ".dlq"
_QUIET = logging.getLogger("awet.kafka.probe")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def _admin(bootstrap: str, timeout_s: float) -> AdminClient:
    ms = int(timeout_s * 1000)
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            # Bound every network wait by the caller's timeout (the defaults are minutes).
            "socket.timeout.ms": ms,
            "socket.connection.setup.timeout.ms": ms,
            "log_level": 4,  # warnings and worse (not "purging unserved events" at close)
        }
    )


def admin_ready(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """Readiness probe for ``awet infra up``: an AdminClient gets cluster metadata naming a
    broker and a controller within ``timeout_s``."""

    # A TCP connect first: an AdminClient against a closed port logs every retry to stderr.
    if not broker_reachable(bootstrap, timeout_s=min(timeout_s, 1.0)):
        return False
    wait = max(timeout_s, 0.5)
    admin = AdminClient({
        "bootstrap.servers": bootstrap,
        "socket.timeout.ms": int(wait * 1000),
        "socket.connection.setup.timeout.ms": int(wait * 1000),
        "logger": _QUIET,  # a broker still starting refuses connections: not worth a line each
    })
    try:
        md = admin.list_topics(timeout=wait)
    except KafkaException:
        return False
    return bool(md.brokers) and md.controller_id >= 0 and group_coordinators_ready(admin, md, wait)


# Answers of a group coordinator still being created, moving or loading its offsets partition
# (a Kafka broker just started): asked again until a deadline, never a reason to give up.
COORDINATOR_BUSY = frozenset({KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                               KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT})
OFFSETS_TOPIC = "__consumer_offsets"


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode`` (UTF-16 code units, 32-bit overflow): how Kafka maps a group
    id to its ``__consumer_offsets`` partition."""
    h = 0
    for unit in text.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def offsets_partition(group: str, partitions: int) -> int:
    """Kafka's ``Utils.abs(groupId.hashCode()) % partitions`` (its abs maps MIN_VALUE to 0)."""
    h = java_string_hash(group)
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def group_for_partition(partition: int, partitions: int, prefix: str = "awet-ready-") -> str:
    """A group id whose coordinator is ``__consumer_offsets`` partition ``partition``."""
    for i in range(100_000):
        group = f"{prefix}{i}"
        if offsets_partition(group, partitions) == partition:
            return group
    raise AssertionError(f"no group id found for partition {partition}/{partitions}")  # cannot happen


def group_coordinators_ready(admin: AdminClient, md, timeout_s: float) -> bool:
    """True once every ``__consumer_offsets`` partition has a coordinator that answers.

    A fresh Kafka creates that topic at the first group request and then loads each partition;
    until then commits fail with NOT_COORDINATOR (seen in a test that committed right after
    `infra up`). One describe per partition, with a group id that hashes to it; an answer that is
    not "busy" (a group that does not exist, no permission, a broker that lacks the API) counts
    as ready: only the coordinator's state is in question here."""
    topic = md.topics.get(OFFSETS_TOPIC)
    if topic is None or topic.error is not None or not topic.partitions:
        groups = ["awet-ready-0"]  # Kafka: asking creates the topic; the next probe checks its partitions
    else:
        if any(p.leader < 0 for p in topic.partitions.values()):
            return False
        n = len(topic.partitions)
        groups = [group_for_partition(p, n) for p in range(n)]
    try:
        futures = admin.describe_consumer_groups(groups, request_timeout=timeout_s)
    except KafkaException as exc:
        return not _busy(exc)
    answered = True
    for future in futures.values():
        try:
            future.result(timeout=timeout_s + 1)
        except KafkaException as exc:
            answered = answered and not _busy(exc)
        except Exception:  # noqa: BLE001 - no answer in time: not ready yet
            answered = False
    # No offsets topic and an answer: a broker that keeps offsets elsewhere (tansu). Kafka
    # answers COORDINATOR_NOT_AVAILABLE while it creates the topic.
    return answered


def _busy(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    return err is not None and err.code() in COORDINATOR_BUSY


def topic_configs(bootstrap: str, topics: list[str], *, timeout_s: float = 10.0) -> dict[str, dict[str, str]]:
    """{topic: {config: value}} of existing topics (every config the broker reports)."""
    if not topics:
        return {}
    admin = _admin(bootstrap, timeout_s)
    futures = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics], request_timeout=timeout_s
    )
    out: dict[str, dict[str, str]] = {}
    for res, fut in futures.items():
        entries = fut.result(timeout=timeout_s)
        out[res.name] = {k: v.value for k, v in entries.items()}
    return out


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
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, str]:
    """Create each topic and its ``dlq_suffix`` twin if missing; returns {topic: outcome}.

    ``configs``: Kafka topic configs by topic name (``retention.ms``, ``cleanup.policy``,
    see ``KafkaConfig.topic_configs``): set at creation, and on an existing topic compared
    with what the broker reports and changed where they drifted.

    outcome is ``"created"``, ``"exists"`` or ``"updated <key>=<old>-><new>, ..."``. An
    existing topic keeps its partition count (Kafka cannot shrink it, and growing it
    silently would re-key partitioned streams); a difference is reported in the outcome as
    ``"exists (N partitions, configured M: not changed)"``.
    """
    wanted = with_dlq(topics, dlq_suffix)
    configs = {k: {ck: str(cv) for ck, cv in v.items()} for k, v in (configs or {}).items()}
    admin = _admin(bootstrap, timeout_s)
    try:
        existing = {name: len(t.partitions) for name, t in admin.list_topics(timeout=timeout_s).topics.items()}
    except KafkaException as exc:
        raise RuntimeError(f"Kafka at {bootstrap} did not answer within {timeout_s}s: {exc}") from exc

    outcome: dict[str, str] = {}
    for name, parts in wanted.items():
        if name not in existing:
            continue
        have = existing[name]
        outcome[name] = "exists" if have == int(parts) else (
            f"exists ({have} partitions, configured {int(parts)}: not changed)"
        )
    drifted = _update_configs(admin, bootstrap, {n: configs[n] for n in outcome if configs.get(n)}, timeout_s)
    for name, change in drifted.items():
        outcome[name] = f"updated {change}"
    missing = [
        NewTopic(name, num_partitions=int(parts), replication_factor=replication_factor,
                 config=dict(configs.get(name) or {}))
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
    _wait_visible(admin, bootstrap, [t.topic for t in missing], timeout_s)
    return outcome


def _wait_visible(admin: AdminClient, bootstrap: str, names: list[str], timeout_s: float) -> None:
    """Return once the broker's metadata lists every topic of ``names`` with a leader for each
    partition. A created topic is the controller's answer; the broker learns it a moment later,
    and until then it answers UNKNOWN_TOPIC_OR_PART (seen in a CI run: describe_configs right
    after create_topics)."""
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending:
        try:
            meta = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic()))).topics
        except KafkaException:
            meta = {}
        pending = {n for n in pending if n not in meta or meta[n].error is not None or not meta[n].partitions
                   or any(p.leader < 0 for p in meta[n].partitions.values())}
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"topics created on {bootstrap} but not visible within {timeout_s}s: {sorted(pending)}")
        time.sleep(0.05)


def _update_configs(
    admin: AdminClient, bootstrap: str, wanted: Mapping[str, Mapping[str, str]], timeout_s: float
) -> dict[str, str]:
    """Set the configs of existing topics that differ from ``wanted``; {topic: "k=old->new"}."""
    if not wanted:
        return {}
    try:
        current = topic_configs(bootstrap, list(wanted), timeout_s=timeout_s)
    except KafkaException as exc:
        raise RuntimeError(f"Could not read topic configs on {bootstrap}: {exc}") from exc
    changes: dict[str, list[tuple[str, str | None, str]]] = {}
    for name, want in wanted.items():
        have = current.get(name, {})
        diff = [(k, have.get(k), v) for k, v in want.items() if have.get(k) != v]
        if diff:
            changes[name] = diff
    if not changes:
        return {}
    resources = [
        ConfigResource(
            ConfigResource.Type.TOPIC,
            name,
            incremental_configs=[ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, _, v in diff],
        )
        for name, diff in changes.items()
    ]
    errors: list[str] = []
    for res, fut in admin.incremental_alter_configs(resources, request_timeout=timeout_s).items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            errors.append(f"{res.name}: {exc}")
    if errors:
        raise RuntimeError(f"Could not update topic configs on {bootstrap}: " + "; ".join(errors))
    return {name: ", ".join(f"{k}={old}->{new}" for k, old, new in diff) for name, diff in changes.items()}


def ensure_configured_topics(bootstrap: str, kafka_cfg, *, timeout_s: float = 30.0) -> dict[str, str]:
    """Every topic of ``cfg.kafka.topics`` with its DLQ twin, partitions and configs."""
    return ensure_topics(
        bootstrap,
        {name: t.partitions for name, t in kafka_cfg.topics.items()},
        dlq_suffix=kafka_cfg.dlq_suffix,
        timeout_s=timeout_s,
        configs=kafka_cfg.topic_configs(),
    )
