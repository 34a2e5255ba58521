"""``exit_monitor``: market.raw (+ exec.done / exec.orders) -> exec.exits.

Wiring for the core ``ExitWatch`` (``awet_dagster.exits.watch``, whose module doc tells the
rules, the fill wait and the restart) over ``PostgresExitStore``; its portfolio follows
``exec.done`` and ``exec.orders`` through a side ``TopicTail``.
"""
from __future__ import annotations

from typing import Any

from awet_dagster.config import AwetConfig
from awet_dagster.contracts import ExitEvent, MarketRawEvent
from awet_dagster.contracts.topics import EXEC_DONE, EXEC_EXITS, EXEC_ORDERS, MARKET_RAW
from awet_dagster.exits.watch import ExitWatch
from awet_dagster.storage.exits import PostgresExitStore
from live.services._common import LazyConnection, LiveService, contract_of, db_settings, time_guard
from live.services._ledger import build_with_fill_tail

NAME = "exit_monitor"


def build(cfg: AwetConfig, endpoints: Any, *, input_topic: str = MARKET_RAW, output_topic: str = EXEC_EXITS,
          done_topic: str = EXEC_DONE, orders_topic: str = EXEC_ORDERS, group: str | None = None,
          name: str = NAME, namespace: str = "", fill_wait_s: float | None = None, tracker: Any = None,
          **bus_kwargs: Any) -> LiveService:
    conn = LazyConnection(endpoints.database_url, **db_settings(cfg))
    watch = ExitWatch(cfg, PostgresExitStore(conn.get), exits_topic=output_topic, guard=time_guard(cfg),
                      namespace=namespace, fill_wait_s=fill_wait_s)
    if contract_of(output_topic, ExitEvent) is not ExitEvent:
        raise ValueError(f"topic {output_topic!r} does not carry ExitEvent")
    return build_with_fill_tail(cfg, endpoints, name=name, component=watch, conn=conn, input_topic=input_topic,
                                input_contract=MarketRawEvent, done_topic=done_topic, orders_topic=orders_topic,
                                group=group, tracker=tracker, bus_kwargs=bus_kwargs)
