"""A loopback HTTP(S) server that vendor-client tests script reply by reply.

`FakeServer()` is a plain HTTP server for clients whose base URL is configurable
(Polygon, Alpaca, Reddit). `FakeServer(tls_tunnel=True)` also answers HTTP CONNECT and
speaks TLS (a self-signed certificate made on the spot) inside the tunnel: a client
given it as its https proxy sends every request for any host there, which is how the
tests reach clients that hard-code https hosts (yfinance -> *.yahoo.com). `Seen.host`
keeps the host the client meant. Loopback only; nothing leaves the machine.
"""
from __future__ import annotations

import datetime as dt
import json
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # bytes/str sent as is, anything else as JSON
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (timeout tests)


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    method: str = "GET"
    host: str = ""  # the Host header: the vendor host a tunnelled request was meant for
    body: bytes = b""


def self_signed_tls_context(directory: Path) -> ssl.SSLContext:
    """A server TLS context with a throwaway self-signed certificate (clients skip verify)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "awet-fake-vendor.test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


class FakeServer:
    """ThreadingHTTPServer on 127.0.0.1:0 answering with a test-supplied function.

    `respond(seen, n)` gets the request and its 1-based number across the server.
    """

    def __init__(self, tls_tunnel: bool = False) -> None:
        self.requests: list[Seen] = []
        self.respond: Callable[[Seen, int], Reply] = lambda seen, n: Reply(404, {"error": "no route"})
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        if tls_tunnel:
            with tempfile.TemporaryDirectory() as tmp:  # the context keeps the loaded cert
                self._tls = self_signed_tls_context(Path(tmp))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _record(self, seen: Seen) -> Reply:
        with self._lock:  # handler threads run concurrently; keep numbering exact
            self.requests.append(seen)
            n = len(self.requests)
        return self.respond(seen, n)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self._answer()

            def do_POST(self) -> None:  # noqa: N802
                self._answer()

            def do_CONNECT(self) -> None:  # noqa: N802
                if server._tls is None:
                    self.send_error(405, "not a proxy")
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                try:
                    tls = server._tls.wrap_socket(self.connection, server_side=True)
                except (ssl.SSLError, OSError):
                    self.close_connection = True
                    return
                # Serve the tunnelled requests on this same handler, now over TLS.
                self.connection = tls
                self.rfile, self.wfile = tls.makefile("rb"), tls.makefile("wb", buffering=0)
                self.close_connection = False
                try:
                    while not self.close_connection:
                        self.handle_one_request()
                except OSError:  # the client dropped the tunnel mid-request
                    pass
                finally:
                    self.close_connection = True
                    tls.close()

            def _answer(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                seen = Seen(
                    parts.path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()},
                    method=self.command, host=(self.headers.get("Host") or "").split(":")[0],
                    body=self.rfile.read(length) if length else b"",
                )
                reply = server._record(seen)
                time.sleep(reply.delay_s)
                payload = reply.body if isinstance(reply.body, (bytes, str)) else json.dumps(reply.body)
                data = payload.encode() if isinstance(payload, str) else payload
                headers = {"Content-Type": "application/json", **reply.headers, "Content-Length": str(len(data))}
                try:
                    self.send_response(reply.status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # BrokenPipe/reset/SSL: the client gave up (timeout tests)
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
