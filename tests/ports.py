"""Free local ports for servers a test starts (tests on pytest-xdist workers run side by side)."""
from __future__ import annotations

import contextlib
import random
import socket


def free_port() -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_range(span: int) -> int:
    """The first of ``span`` consecutive ports that are all free now: a base such as
    ``observability.metrics_port_base``, from which every service takes base + its offset."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - span)
        with contextlib.ExitStack() as stack:
            try:
                for off in range(span):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", base + off))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {span} consecutive free ports found")


def free_metrics_base() -> int:
    """A metrics port base whose every service port is free now (not the configured 9400+,
    which every worker's service commands would fight over)."""
    from awet_dagster.observability.metrics import SERVICE_PORT_OFFSETS

    return free_port_range(max(SERVICE_PORT_OFFSETS.values()) + 1)
