"""A Kafka-protocol readiness probe in plain sockets (the core may not import confluent_kafka).

It sends one MetadataRequest (v1, no topics) and is satisfied when the answer names at least
one broker and an active controller: a KRaft node that answers that has registered with its
controller and serves clients. Callers that may import confluent_kafka pass an AdminClient
probe instead (``awet_kafka.admin.admin_ready``); this one is the default of ``awet_dagster.infra``.
"""

from __future__ import annotations

import socket
import struct
import time

_METADATA = 3  # api key
_CLIENT_ID = b"awet-infra-probe"


def _metadata_request(correlation_id: int) -> bytes:
    # Request header v1: api_key int16, api_version int16, correlation_id int32, client_id string.
    header = struct.pack(">hhih", _METADATA, 1, correlation_id, len(_CLIENT_ID)) + _CLIENT_ID
    body = struct.pack(">i", 0)  # topics: empty array -> no topic metadata, brokers only
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        buf += chunk
    return bytes(buf)


def metadata_brokers(host: str, port: int, timeout_s: float = 2.0) -> tuple[int, int]:
    """(number of brokers, controller id) from one MetadataRequest v1; raises OSError."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(_metadata_request(7))
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        data = _recv_exact(sock, size)
    pos = 0
    (correlation,) = struct.unpack_from(">i", data, pos)
    pos += 4
    if correlation != 7:
        raise ConnectionError(f"unexpected correlation id {correlation}")
    (count,) = struct.unpack_from(">i", data, pos)
    pos += 4
    for _ in range(max(count, 0)):
        pos += 4  # node_id
        (hlen,) = struct.unpack_from(">h", data, pos)
        pos += 2 + max(hlen, 0) + 4  # host, port
        (rlen,) = struct.unpack_from(">h", data, pos)
        pos += 2 + max(rlen, 0)  # rack (nullable)
    (controller,) = struct.unpack_from(">i", data, pos)
    return count, controller


def kafka_ready(bootstrap: str, timeout_s: float = 2.0) -> bool:
    """True when some bootstrap server answers metadata with a broker and a controller."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if not port.isdigit():
            continue
        try:
            brokers, controller = metadata_brokers(host.strip("[]") or "127.0.0.1", int(port), timeout_s)
        except (OSError, struct.error, ConnectionError):
            continue
        if brokers >= 1 and controller >= 0:
            return True
    return False


def wait_kafka_ready(bootstrap: str, deadline: float, interval_s: float = 0.2) -> bool:
    """Probe until ``deadline`` (time.monotonic()); True once ready."""
    while True:
        if kafka_ready(bootstrap, timeout_s=min(2.0, max(0.1, deadline - time.monotonic()))):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
