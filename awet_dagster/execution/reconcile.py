"""Start-up reconciliation: compare what we think is working/held with the broker.

Run before the first order after a (re)start. The broker is the source of truth for what
exists; our client_order_ids (prefix `awet-`, derived from correlation ids) tell which
orders are ours. The report says what to ADOPT (track without resubmitting), what the
broker no longer has open (look up its final state), and where positions disagree.
Combined with deterministic ids this means a restart never sends a duplicate order.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from awet_dagster.execution.broker import Broker
from awet_dagster.execution.ids import is_ours
from awet_dagster.execution.orders import BrokerOrder


class OrderStore(Protocol):
    """Our view: the open orders and positions of ONE namespace (``OrderLifecycle.start`` builds
    it from that namespace's stored orders and its fill ledger, never from every row of a
    database that other runs share)."""

    def open_client_order_ids(self) -> set[str]: ...

    def positions(self) -> Mapping[str, float]: ...


@dataclass
class InMemoryOrderStore:
    open_ids: set[str] = field(default_factory=set)
    held: dict[str, float] = field(default_factory=dict)

    def open_client_order_ids(self) -> set[str]:
        return set(self.open_ids)

    def positions(self) -> Mapping[str, float]:
        return dict(self.held)


@dataclass(frozen=True)
class ReconcileReport:
    adopt_orders: tuple[BrokerOrder, ...]  # ours, open at the broker, unknown locally
    known_open: tuple[BrokerOrder, ...]  # ours, open at both
    foreign_orders: tuple[BrokerOrder, ...]  # open at the broker, not placed by AWET: leave alone
    not_open_at_broker: tuple[str, ...]  # open locally, not open at the broker: fetch final state
    adopt_positions: Mapping[str, float]  # broker qty for every symbol whose local qty differs
    position_mismatches: Mapping[str, tuple[float, float]]  # symbol -> (local, broker)

    @property
    def in_sync(self) -> bool:
        return not (self.adopt_orders or self.not_open_at_broker or self.position_mismatches)

    @property
    def likely_splits(self) -> dict[str, float]:
        """Mismatches whose broker/local ratio is a whole split (2:1, 3:2, 1:10, ...): the
        venue carried the position through a split our bars have not shown yet (a vendor feed
        without factors). Ratio = broker qty / local qty."""
        return {s: b / loc for s, (loc, b) in self.position_mismatches.items() if split_like(loc, b)}


def split_like(local: float, broker: float) -> bool:
    if local == 0 or broker == 0 or (local > 0) != (broker > 0):
        return False
    ratio = broker / local
    for r in (ratio, 1 / ratio):  # forward (r:1) or reverse (1:r) splits, also 3:2 style
        for den in (1, 2, 3):  # 2:1, 3:2, 4:3 ... (odd ratios like 7:5 are not seen in practice)
            num = r * den
            if r > 1 + 1e-9 and abs(num - round(num)) < 1e-6:
                return True
    return False


def reconcile(broker: Broker, store: OrderStore) -> ReconcileReport:
    local_open = store.open_client_order_ids()
    remote = broker.list_open_orders()
    remote_ids = {o.client_order_id for o in remote}
    adopt = tuple(o for o in remote if is_ours(o.client_order_id) and o.client_order_id not in local_open)
    known = tuple(o for o in remote if o.client_order_id in local_open)
    foreign = tuple(o for o in remote if not is_ours(o.client_order_id))
    gone = tuple(sorted(local_open - remote_ids))
    local_pos = dict(store.positions())
    broker_pos = {p.symbol: p.qty for p in broker.list_positions()}
    mismatches = {
        s: (local_pos.get(s, 0.0), broker_pos.get(s, 0.0))
        for s in sorted(set(local_pos) | set(broker_pos))
        if abs(local_pos.get(s, 0.0) - broker_pos.get(s, 0.0)) > 1e-9
    }
    return ReconcileReport(adopt, known, foreign, gone, {s: b for s, (_, b) in mismatches.items()}, mismatches)
