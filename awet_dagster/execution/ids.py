"""Deterministic client order ids: the same decision always maps to the same id.

A retry, a redelivered Kafka message or a restart that re-processes a decision therefore
produces the same `client_order_id`, which the broker refuses to accept twice (Alpaca
answers 422; the simulator returns the existing order) - so an order is never duplicated.
"""
from __future__ import annotations

import hashlib

PREFIX = "awet-"
#: "exit_rest": what is left of a position after a bracket leg sold part of it and the exit
#: canceled the leg (the "exit" id is the leg's then).
LEGS = ("entry", "exit", "exit_rest")


def client_order_id(correlation_id: str, leg: str) -> str:
    """`awet-` + sha1(correlation_id + ":" + leg)[:20] (25 chars; Alpaca allows 128)."""
    if not correlation_id:
        raise ValueError("correlation_id must not be empty")
    if leg not in LEGS:
        raise ValueError(f"leg must be one of {LEGS}, got {leg!r}")
    return PREFIX + hashlib.sha1(f"{correlation_id}:{leg}".encode()).hexdigest()[:20]


def is_ours(client_order_id: str | None) -> bool:
    return bool(client_order_id) and client_order_id.startswith(PREFIX)
