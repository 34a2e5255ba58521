"""The event-time sequencer risk reads its input through (``awet_dagster.streaming.sequencer``):
partitions interleaved in any order come out in (ts, symbol) order, a time waits for the bars
its clock lists, and only a time that never completes goes on a timer."""
from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from awet_dagster.streaming.sequencer import EventTimeSequencer, bar_clocks
from tests.test_live_loop import _bar

T0 = datetime(2024, 3, 1, tzinfo=UTC)
SYMBOLS = ("AAA", "BBB", "CCC", "DDD")


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _times(n: int) -> list[datetime]:
    return [T0 + timedelta(days=i) for i in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_interleaved_partitions_come_out_in_ts_symbol_order(seed):
    """Three partitions, each in order, interleaved at random, clocks anywhere in between:
    the output is the backtest's (ts, symbol) order, whatever the interleaving."""
    rng = random.Random(seed)
    times = _times(6)
    partitions = {p: [(ts, s) for ts in times for s in SYMBOLS if SYMBOLS.index(s) % 3 == p] for p in range(3)}
    seq: EventTimeSequencer[tuple] = EventTimeSequencer(max_wait_s=3600)
    clocks = list(times)
    out: list[tuple] = []
    while any(partitions.values()) or clocks:
        lanes = [p for p, q in partitions.items() if q] + (["clock"] if clocks else [])
        lane = rng.choice(lanes)
        if lane == "clock":
            seq.on_clock("daily", clocks.pop(0), SYMBOLS)
        else:
            ts, s = partitions[lane].pop(0)
            seq.offer("daily", ts, s, (ts, s))
        out.extend(seq.ready())
    assert out == [(ts, s) for ts in times for s in SYMBOLS]
    assert len(seq) == 0 and seq.counters["incomplete"] == 0 and seq.counters["late"] == 0


def test_a_time_waits_for_its_clock_and_for_every_bar_it_lists():
    seq: EventTimeSequencer[str] = EventTimeSequencer(max_wait_s=3600)
    t1, t2 = _times(2)
    seq.offer("daily", t1, "BBB", "B1")
    seq.offer("daily", t2, "AAA", "A2")
    assert seq.ready() == []  # no clock yet: t1 may have more bars coming
    seq.on_clock("daily", t1, ["AAA", "BBB"])
    assert seq.ready() == []  # AAA@t1 is listed and has not come
    seq.offer("daily", t1, "AAA", "A1")
    assert seq.ready() == ["A1", "B1"]  # t2 still has no clock
    seq.on_clock("daily", t2, ["AAA"])
    assert seq.ready() == ["A2"]


def test_an_earlier_clock_holds_a_later_complete_time():
    """t1's clock came but none of its bars yet; t2 is complete: t2 must not overtake t1."""
    seq: EventTimeSequencer[str] = EventTimeSequencer(max_wait_s=3600)
    t1, t2 = _times(2)
    seq.on_clock("daily", t1, ["AAA"])
    seq.on_clock("daily", t2, ["AAA"])
    seq.offer("daily", t2, "AAA", "A2")  # another partition, say, ran ahead
    assert seq.ready() == []
    seq.offer("daily", t1, "AAA", "A1")
    assert seq.ready() == ["A1", "A2"]


def test_an_incomplete_time_goes_after_the_wait_counted_from_its_first_bar_not_its_clock():
    now = _Clock()
    seq: EventTimeSequencer[str] = EventTimeSequencer(max_wait_s=10, now=now)
    t1, t2 = _times(2)
    seq.on_clock("daily", t1, ["AAA", "BBB"])  # clocks run ahead of a busy loop: no timer yet
    now.t = 100.0
    assert seq.ready() == []
    seq.offer("daily", t1, "AAA", "A1")  # BBB@t1 was dead-lettered upstream: it never comes
    now.t = 109.0
    assert seq.ready() == []
    now.t = 110.0
    assert seq.ready() == ["A1"] and seq.counters["incomplete"] == 1
    seq.offer("daily", t1, "BBB", "B1")  # it came after all: late, released at once
    assert seq.ready() == ["B1"] and seq.counters["late"] == 1


def test_a_clock_whose_bars_never_come_times_out_from_a_later_bar():
    now = _Clock()
    seq: EventTimeSequencer[str] = EventTimeSequencer(max_wait_s=5, now=now)
    t1, t2 = _times(2)
    seq.on_clock("daily", t1, ["AAA"])
    seq.on_clock("daily", t2, ["AAA"])
    seq.offer("daily", t2, "AAA", "A2")
    now.t = 4.9
    assert seq.ready() == []
    now.t = 5.0
    assert seq.ready() == ["A2"] and seq.counters["incomplete"] == 1


def test_bar_types_are_sequenced_apart_and_dropping_a_partition_forgets_its_events():
    seq: EventTimeSequencer[tuple] = EventTimeSequencer(max_wait_s=3600)
    t1 = T0
    seq.offer("minute", t1, "AAA", ("p0", "Am"))
    seq.offer("daily", t1, "AAA", ("p0", "Ad"))
    seq.offer("daily", t1, "BBB", ("p1", "Bd"))
    seq.on_clock("minute", t1, ["AAA"])
    assert seq.ready() == [("p0", "Am")]  # the daily time does not hold the minute one
    assert seq.drop(lambda item: item[0] != "p1") == 1  # p1 was taken away: its new owner reads it again
    assert seq.held_items() == [("p0", "Ad")]


def test_bar_clocks_list_each_time_s_symbols_in_order():
    events = [_bar("BBB", T0), _bar("AAA", T0), _bar("AAA", T0 + timedelta(days=1))]
    clocks = bar_clocks(events)
    assert [(c.bar_type, c.ts, c.symbols) for c in clocks] == [
        ("daily", T0, ("AAA", "BBB")), ("daily", T0 + timedelta(days=1), ("AAA",))]


class _Msg:
    """The part of a confluent_kafka Message the orderer reads."""

    def __init__(self, partition: int, offset: int, value: bytes | None) -> None:
        self._p, self._o, self._v = partition, offset, value

    def topic(self) -> str:
        return "scored"

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes | None:
        return self._v

    def error(self) -> None:
        return None


def test_the_bus_orderer_lets_poison_through_at_once_and_drops_what_a_revoked_partition_held():
    import contextlib

    from awet_dagster.contracts import ScoredSignal
    from live.services._ledger import EventTimeOrderer
    from tests.test_live_loop import _tradable_signal

    seq: EventTimeSequencer = EventTimeSequencer(max_wait_s=3600)
    reported: list[tuple[int, int]] = []

    class _Metrics:
        def event_order(self, held: int, incomplete_total: int) -> None:
            reported.append((held, incomplete_total))

    orderer = EventTimeOrderer(seq, ScoredSignal, contextlib.nullcontext, _Metrics())
    t1, t2 = _times(2)
    b1 = _Msg(1, 0, _tradable_signal("BBB", t1).model_dump_json().encode())
    a2 = _Msg(0, 0, _tradable_signal("AAA", t2).model_dump_json().encode())
    a1 = _Msg(0, 1, _tradable_signal("AAA", t1).model_dump_json().encode())
    poison = _Msg(0, 2, b"{not json")
    orderer.offer([b1, a2, a1, poison])
    assert orderer.ready() == [poison]  # for the bus to dead-letter now, not held behind a clock
    assert reported[-1] == (3, 0)  # the held gauge follows
    assert orderer.held() == 3
    assert {(m.partition(), m.offset()) for m in seq.held_items()} == {(1, 0), (0, 0), (0, 1)}
    seq.on_clock("daily", t1, ["AAA", "BBB"])
    seq.on_clock("daily", t2, ["AAA"])
    orderer.drop({("scored", 1)})  # partition 1 taken away: BBB@t1 is its new owner's
    assert orderer.held() == 2 and all(m.partition() == 0 for m in seq.held_items())
    assert orderer.ready() == []  # t1 still waits for BBB: read again from its committed offset
    orderer.offer([b1])  # (risk is one instance: the partition comes back to it)
    assert orderer.ready() == [a1, b1, a2]
    assert reported[-1] == (0, 0)


def test_a_streaming_source_s_clock_goes_when_its_bars_are_all_in_when_the_stream_moves_on_or_after_grace():
    from awet_dagster.streaming.sequencer import ClockBuilder

    now = _Clock()
    cb = ClockBuilder(["AAA", "BBB", "CCC"], grace_s=5, now=now)
    t1, t2, t3 = _times(3)
    assert cb.add(_bar("AAA", t1)) == [] and cb.add(_bar("BBB", t1)) == []
    [c1] = cb.add(_bar("CCC", t1))  # every expected symbol
    assert (c1.ts, c1.symbols) == (t1, ("AAA", "BBB", "CCC"))
    assert cb.add(_bar("BBB", t2)) == []
    [c2] = cb.add(_bar("AAA", t3))  # a later time: t2 is as complete as it will be
    assert (c2.ts, c2.symbols) == (t2, ("BBB",))
    assert cb.add(_bar("CCC", t2)) == []  # late: its clock went (the consumer releases it at once)
    now.t = 4.9
    assert cb.due() == []
    now.t = 5.0
    [c3] = cb.due()  # CCC and BBB had no trade in t3
    assert (c3.ts, c3.symbols) == (t3, ("AAA",))
    cb.add(_bar("AAA", t3 + timedelta(days=1)))
    assert [c.ts for c in cb.flush()] == [t3 + timedelta(days=1)]


def test_a_restarted_desk_resumes_after_the_times_it_released():
    """What the sequencer released is stored with each batch's audit; a restarted risk resumes
    from it: clocks of those times are ignored, their redelivered signals go at once."""
    from awet_dagster.config import load_config
    from awet_dagster.risk.desk import RiskDesk
    from awet_dagster.risk.store import InMemoryRiskStore
    from tests.test_live_components import _guard, _quiet_signal

    cfg = load_config(environ={"AWET_ENV": "test"})
    store = InMemoryRiskStore()
    t1, t2 = _times(2)

    def desk() -> RiskDesk:
        d = RiskDesk(cfg, store, approved_topic="ok", rejected_topic="no", exits_topic="exits", guard=_guard(cfg),
                     sequencer=EventTimeSequencer(max_wait_s=3600))
        d.start()
        return d

    first = desk()
    first.sequencer.on_clock("daily", t1, ["AAA"])
    first.sequencer.offer("daily", t1, "AAA", "A1")
    assert first.sequencer.ready() == ["A1"]
    first.handle(_quiet_signal("AAA", t1, 100.0))  # outside a batch: writes the audit (and the released times)
    assert store.risk_state.get_released() == {"daily": t1}

    second = desk()
    second.sequencer.on_clock("daily", t1, ["AAA", "BBB"])  # re-read from the topic: handled before
    second.sequencer.offer("daily", t1, "AAA", "A1 again")  # redelivered
    assert second.sequencer.ready() == ["A1 again"] and second.sequencer.counters["late"] == 1
    second.sequencer.on_clock("daily", t2, ["AAA"])
    second.sequencer.offer("daily", t2, "AAA", "A2")
    assert second.sequencer.ready() == ["A2"] and second.sequencer.counters["incomplete"] == 0
