"""The HTTP endpoint of the metrics (the catalogue is ``awet_dagster.observability.metrics``).

- ``start_metrics_server(port, metrics)``: ``/metrics`` (Prometheus text format) and
  ``/healthz`` on 127.0.0.1 by default; each process's port is
  ``awet_dagster.observability.metrics.service_port(cfg, service)``.
- ``python -m live.metrics --textfile-dir .awet/metrics``: a tiny exporter serving the
  ``*.prom`` files Dagster runs write (``awet_dagster.observability.textfile``).

The alert rules (docker/prometheus/alerts.yml) and the Grafana dashboards (docker/grafana/)
may only use names the catalogue exports: tests/test_alerts.py and tests/test_dashboards.py
check it against ``AwetMetrics.exported_names()``.
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from awet_dagster.config import load_config
from awet_dagster.observability import textfile as tf
from awet_dagster.observability.metrics import SERVICE_PORT_OFFSETS, AwetMetrics, service_port

log = logging.getLogger("awet.live.metrics")


# --------------------------------------------------------------------------- HTTP endpoint
HealthCheck = Callable[[], "bool | tuple[bool, str]"]


class MetricsServer:
    """A running ``/metrics`` + ``/healthz`` endpoint; ``close()`` stops it (bounded)."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host, self.port = httpd.server_address[:2]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self, timeout_s: float = 5.0) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout_s)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _make_handler(registry: CollectorRegistry | None, textfile_dir: Path | None,
                  health: HealthCheck | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10  # a stuck client cannot hold a handler thread forever

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    body = generate_latest(registry) if registry is not None else b""
                    if textfile_dir is not None:
                        body += tf.read_textfiles(textfile_dir).encode()
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/health"):
                    ok, detail = True, "ok"
                    if health is not None:
                        res = health()
                        ok, detail = res if isinstance(res, tuple) else (bool(res), "ok" if res else "unhealthy")
                    self._send(200 if ok else 503, (detail + "\n").encode(), "text/plain; charset=utf-8")
                elif path == "/":
                    self._send(200, b'<a href="/metrics">/metrics</a> <a href="/healthz">/healthz</a>\n',
                               "text/html; charset=utf-8")
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")
            except (BrokenPipeError, ConnectionResetError):
                log.debug("metrics http: client went away before the answer (scrape timeout?)")
            except Exception as exc:  # noqa: BLE001 - a broken collector must not kill the server
                log.exception("metrics endpoint failed")
                self._send(500, f"error: {exc}\n".encode(), "text/plain; charset=utf-8")

        do_HEAD = do_GET

        def log_message(self, fmt: str, *args: Any) -> None:  # scrapes every 15 s: keep quiet
            log.debug("metrics http: " + fmt, *args)

    return Handler


def start_metrics_server(
    port: int,
    metrics: AwetMetrics | CollectorRegistry | None = None,
    *,
    host: str = "127.0.0.1",
    textfile_dir: Path | str | None = None,
    health: HealthCheck | None = None,
) -> MetricsServer:
    """Serve ``metrics`` (and the ``*.prom`` files of ``textfile_dir``) on ``http://host:port``.

    ``port=0`` picks a free port (``server.port``). Binds loopback unless told otherwise:
    exposing it on other interfaces is a deployment decision (docker: ``host="0.0.0.0"``).
    """
    registry = metrics.registry if isinstance(metrics, AwetMetrics) else metrics
    handler = _make_handler(registry, Path(textfile_dir) if textfile_dir is not None else None, health)
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.5},
                              name=f"metrics-http-{port}", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)


# --------------------------------------------------------------------------- textfile exporter
def main(argv: list[str] | None = None) -> int:  # pragma: no cover - exercised by hand / docker
    """``python -m live.metrics``: serve ``.awet/metrics/*.prom`` (Dagster-run metrics)."""
    parser = argparse.ArgumentParser(prog="python -m live.metrics", description=main.__doc__)
    parser.add_argument("--textfile-dir", type=Path, default=None,
                        help="directory of *.prom files (default: <AWET_HOME>/metrics)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None,
                        help="default: observability.metrics_port_base + %d" % SERVICE_PORT_OFFSETS["textfile_exporter"])
    args = parser.parse_args(argv)

    cfg = load_config()
    directory = args.textfile_dir or tf.metrics_dir(cfg)
    port = args.port if args.port is not None else service_port(cfg, "textfile_exporter")
    registry = CollectorRegistry()
    Gauge("awet_service_up", "1 while the service runs its loop", ["service"], registry=registry) \
        .labels("textfile_exporter").set(1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = start_metrics_server(port, registry, host=args.host, textfile_dir=directory)
    print(f"serving {directory}/*.prom on {server.url}/metrics", flush=True)
    try:
        stop.wait()
    finally:
        server.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
