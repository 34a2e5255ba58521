"""Side inputs of a stream component: what a component waits for besides its own input.

The signal scorer waits for a bar's forecast and alpha mark, risk and the exit monitor for
the fills a bar must bring. Those arrive on other topics, read by a side reader in another
thread (live: ``awet_kafka.tail.TopicTail``); the component only sees this port: ``lock()`` guards
the state the reader feeds, ``wait(done, timeout_s)`` (lock held) waits until ``done()`` or
the timeout, and ``stopping()`` says the process was asked to stop. ``NO_SIDE_INPUTS``: no
reader (the backtest, tests driving a component directly): nothing to wait for.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import ContextManager, Protocol

from awet_dagster.streaming.outputs import RetryLater


class SideInputs(Protocol):
    def lock(self) -> ContextManager[object]: ...

    def wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """With ``lock()`` held: True once ``done()``; False after ``timeout_s`` or on a stop request."""
        ...

    def stopping(self) -> bool: ...


class _NoSideInputs:
    def lock(self) -> ContextManager[object]:
        return contextlib.nullcontext()

    def wait(self, done: Callable[[], bool], timeout_s: float) -> bool:
        return done()

    def stopping(self) -> bool:
        return False


NO_SIDE_INPUTS: SideInputs = _NoSideInputs()


def wait_or_retry(side: SideInputs, done: Callable[[], bool], timeout_s: float, what: str) -> bool:
    """``side.wait``; a wait cut short by a stop request raises RetryLater: the input is not
    handled without what it waited for, it is redelivered to the next start instead."""
    if side.wait(done, timeout_s):
        return True
    if side.stopping():
        raise RetryLater(f"stopping while {what}")
    return False
