"""The live topology, written once: which process reads and writes which topic.

``NODES``: per deployable process (the names ``awet live --service`` and ``awet ingest``
run), the topics it consumes in its consumer group (``inputs``: committed offsets, lag,
scaling), the topics it reads whole as side inputs (``side``: a tail, no group) and the topics
it produces. The runner's default inputs, the lag monitor's subscriptions and the deployment
tests (compose, Helm: every consumed topic has a deployed producer, every produced one a
consumer and a dead-letter topic) read this table.

``SINKS``: topics produced on purpose with no consumer in the loop, each with its reason.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .topics import (
    ALPHA_SIGNALS,
    ENGINEERED,
    EXEC_DONE,
    EXEC_EXITS,
    EXEC_ORDERS,
    MARKET_CLOCK,
    MARKET_RAW,
    PREDICTIONS,
    RISK_APPROVED,
    RISK_REJECTED,
    SIGNALS_SCORED,
    SOCIAL_SENTIMENT,
)


@dataclass(frozen=True)
class Node:
    inputs: tuple[str, ...] = ()
    side: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    @property
    def consumes(self) -> tuple[str, ...]:
        return self.inputs + self.side


NODES: Mapping[str, Node] = MappingProxyType({
    # The polled ingest (and every replay) follows each time's bars with their BarClock.
    "ingest": Node(outputs=(MARKET_RAW, MARKET_CLOCK)),
    "persist_bars": Node(inputs=(MARKET_RAW,)),
    "features": Node(inputs=(MARKET_RAW,), outputs=(ENGINEERED,)),
    "lean_alpha": Node(inputs=(MARKET_RAW,), outputs=(ALPHA_SIGNALS,)),
    "inference": Node(inputs=(ENGINEERED,), outputs=(PREDICTIONS,)),
    # signals.alpha_source "topic" (the default) reads the alphas from alpha.signals; with
    # "internal" the signal service computes them itself and nothing reads alpha.signals.
    "signal": Node(inputs=(MARKET_RAW,), side=(PREDICTIONS, ALPHA_SIGNALS), outputs=(SIGNALS_SCORED,)),
    # risk also runs the exit rules on its book (one per-bar step, as the backtest's loop body).
    # market.clock: read with risk.event_order "clock" (event-time order of its input).
    "risk": Node(inputs=(SIGNALS_SCORED,), side=(EXEC_DONE, EXEC_ORDERS, MARKET_CLOCK),
                 outputs=(RISK_APPROVED, RISK_REJECTED, EXEC_EXITS)),
    "execution": Node(inputs=(MARKET_RAW, RISK_APPROVED, EXEC_EXITS), outputs=(EXEC_ORDERS, EXEC_DONE)),
    "lag_monitor": Node(),  # reads committed offsets of the groups above, no messages
    # Reddit sentiment (`awet ingest --source reddit`), stored for the features' point-in-time join.
    "ingest_reddit": Node(outputs=(SOCIAL_SENTIMENT,)),
    "persist_sentiment": Node(inputs=(SOCIAL_SENTIMENT,)),
})

#: Nodes a deployment runs only when switched on, and then together (they need Reddit credentials).
OPTIONAL_NODES: tuple[str, ...] = ("ingest_reddit", "persist_sentiment")

#: The services of the trading loop proper (``awet live`` runs them; ingestion feeds them).
LOOP_NODES: tuple[str, ...] = ("persist_bars", "features", "lean_alpha", "inference", "signal", "risk",
                               "execution")

SINKS: Mapping[str, str] = MappingProxyType({
    RISK_REJECTED: "the refused decisions, an audit stream (every decision is also in the audit table)",
})


def group_inputs() -> dict[str, tuple[str, ...]]:
    """{service: topics it consumes in its group} for every service that has a group."""
    return {name: node.inputs for name, node in NODES.items() if node.inputs}
