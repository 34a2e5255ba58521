"""The live services by name: what each one is, how it is built, whether it scales out.

A factory is ``(cfg, endpoints, **overrides) -> BusService``; ``overrides`` are the factory's
keyword arguments (topic names, group id...). Which topics each service reads is the topology
table (``awet_dagster.contracts.topology``); the service sets the commands and deployments run
are named here.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts.topology import LOOP_NODES, OPTIONAL_NODES, group_inputs
from awet_kafka.bus import BusService

ServiceFactory = Callable[..., BusService]


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    factory: ServiceFactory | str  # callable or lazy "module:attribute"
    description: str = ""
    #: "bus": a BusService (gets the bus metrics hook); "thread": any object with
    #: ``run(max_messages=, timeout_s=) -> RunStats``, ``stop()`` and ``close()`` (lag monitor).
    kind: str = "bus"
    #: "many": instances of one group may run side by side (partitions are split between
    #: them; per-key state is rebuilt when they move); "one": a second instance of the group
    #: refuses to start (``live.single_instance``). ``why``: the reason, said to the operator.
    instances: str = "many"
    why: str = ""

    def resolve(self) -> ServiceFactory:
        factory = self.factory
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
        return factory

    def accepts(self, keyword: str) -> bool:
        """Whether the factory takes ``keyword`` explicitly (not through ``**kwargs``)."""
        try:
            params = inspect.signature(self.resolve()).parameters
        except (TypeError, ValueError):
            return False
        p = params.get(keyword)
        return p is not None and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)

    def build(self, cfg: AwetConfig, endpoints: Any, **overrides: Any) -> BusService:
        return self.resolve()(cfg, endpoints, **overrides)


# Lazy "module:attribute" paths (a measured reason): `awet live --help` and the CLI's start must
# not import psycopg, polars and torch for every service; run_services resolves them up front.
_KEYED = "per-symbol state, dropped and warmed up again from the bars table when partitions move"
REGISTRY: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec("persist_bars", "live.services.persist_bars:build", "market.raw -> bars table",
                    why="idempotent upserts keyed by (symbol, bar type, ts); no state"),
        ServiceSpec("features", "live.services.features:build", "market.raw -> engineered", why=_KEYED),
        ServiceSpec("lean_alpha", "live.services.lean_alpha:build", "market.raw -> alpha.signals", why=_KEYED),
        ServiceSpec("inference", "live.services.inference:build", "engineered -> predictions (champion model)",
                    why="per-symbol feature windows, rebuilt from the bars table when partitions move"),
        ServiceSpec("signal", "live.services.signal:build",
                    "market.raw + predictions (+ alpha.signals) -> signals.scored, signals table",
                    why=_KEYED + "; forecasts and alphas are read from every partition"),
        ServiceSpec("risk", "live.services.risk:build",
                    "signals.scored (+ exec.done) -> risk.approved|rejected, exec.exits (the exit rules)",
                    instances="one",
                    why="the account-wide limits (exposure, CVaR, daily loss, drawdown, sector cap, kill "
                        "switch) need every signal of the account in one book"),
        ServiceSpec("execution", "live.services.execution:build",
                    "risk.approved + exec.exits + market.raw -> exec.orders, exec.done", instances="one",
                    why="one account's orders go out in one sequence (risk.approved has one partition) and "
                        "the paper simulator's book lives in the process"),
        ServiceSpec("persist_sentiment", "live.services.persist_sentiment:build",
                    "social.sentiment -> reddit_mentions table (beside `awet ingest --source reddit`)",
                    why="idempotent upserts keyed by (symbol, bucket, ts); no state"),
        ServiceSpec("lag_monitor", "live.services.lag_monitor:build_service",
                    "consumer lag of the live groups -> awet_consumer_lag (no bus)", kind="thread",
                    why="it only reads the groups' committed offsets; each instance exports the same figures"),
    )
}


def register_service(name: str, factory: ServiceFactory | str, description: str = "", kind: str = "bus",
                     instances: str = "many", why: str = "") -> None:
    """Add or replace a service."""
    REGISTRY[name] = ServiceSpec(name, factory, description, kind, instances, why)


def unregister_service(name: str) -> None:
    """Remove a service (tests that registered one); unknown names are ignored."""
    REGISTRY.pop(name, None)


def available_services() -> tuple[str, ...]:
    return tuple(REGISTRY)


def service_spec(name: str) -> ServiceSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; available: {list(REGISTRY)}") from None


#: Factory keywords naming a service's input topics, in the topology's order (default: input_topic).
INPUT_KWARGS: Mapping[str, tuple[str, ...]] = {"execution": ("market_topic", "approved_topic", "exits_topic")}

LOOP_SERVICES: tuple[str, ...] = LOOP_NODES
#: What ``awet live --replay`` runs: the loop and the lag monitor watching its groups (the same
#: services as the all-in-one ``awet live``), so a replay exports every metric ``awet live`` does.
REPLAY_SERVICES: tuple[str, ...] = (*LOOP_SERVICES, "lag_monitor")
#: One deployment (compose service, Helm Deployment) each: the ingestion service that feeds
#: market.raw, the loop, and the lag monitor that feeds awet_consumer_lag (tests/test_deploy.py
#: holds compose and the chart to this and checks the topic graph they make).
DEPLOYED_SERVICES: tuple[str, ...] = ("ingest", *LOOP_SERVICES, "lag_monitor")
#: Deployed only when switched on, and then together (compose profile ``reddit``, Helm
#: ``services.<name>.enabled``): Reddit sentiment needs API credentials a fresh deployment lacks.
OPTIONAL_DEPLOYED_SERVICES: tuple[str, ...] = OPTIONAL_NODES


#: Input topics of each registered service (default names): the topology table.
SERVICE_INPUTS: dict[str, tuple[str, ...]] = group_inputs()


def service_inputs(name: str, kw: Mapping[str, Any]) -> tuple[str, ...]:
    """Input topics (consumed under the service's group) of service ``name`` built with factory
    keywords ``kw`` (() if unknown): the topics its lag is measured on."""
    defaults = SERVICE_INPUTS.get(name)
    if defaults is None:
        return ()
    keys = INPUT_KWARGS.get(name, ("input_topic",))
    return tuple(kw.get(k, d) for k, d in zip(keys, defaults, strict=True))
