"""Cheap reachability probes (bounded by a timeout; never hang)."""
from __future__ import annotations

import socket


def tcp_reachable(host: str, port: int, timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def broker_reachable(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when any bootstrap server accepts a TCP connection."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        if port.isdigit() and tcp_reachable(host, int(port), timeout_s):
            return True
    return False
