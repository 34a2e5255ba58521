"""Container health check of the AWET image (standard library only, so it is cheap).

    python /app/docker/healthcheck.py [URL]

- with a URL argument, or ``AWET_HEALTH_URL`` set: healthy when an HTTP GET of it answers
  2xx within the timeout (a live service's ``/healthz``, the Dagster webserver's
  ``/server_info``, MLflow's ``/health``);
- otherwise: healthy when the configured ``DATABASE_URL`` and ``KAFKA_BOOTSTRAP`` endpoints
  accept a TCP connection (the `awet infra status` question, without importing the project).

Exit code 0 = healthy, 1 = unhealthy (what Docker's HEALTHCHECK expects).
"""
from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlsplit

TIMEOUT_S = float(os.environ.get("AWET_HEALTH_TIMEOUT_S", "5"))


def check_url(url: str, timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - fixed local URL
            return 200 <= resp.status < 300, f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except OSError as exc:
        return False, f"{url}: {exc}"


def _host_port(netloc: str, default_port: int) -> tuple[str, int]:
    hostport = netloc.rsplit("@", 1)[-1]
    if hostport.startswith("["):  # [ipv6]:port
        host, _, rest = hostport[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    host, _, port = hostport.partition(":")
    return host, int(port or default_port)


def endpoints(environ: dict[str, str]) -> list[tuple[str, str, int]]:
    """(what, host, port) of every configured external endpoint."""
    out: list[tuple[str, str, int]] = []
    db = environ.get("DATABASE_URL")
    if db:
        parts = urlsplit(db)
        host, port = _host_port(parts.netloc, 5432)
        query = parse_qs(parts.query)  # libpq form: ...?host=/socket/dir&port=5432
        host = query.get("host", [host])[0]
        port = int(query.get("port", [port])[0])
        out.append(("database", host or "localhost", port))
    for server in filter(None, (environ.get("KAFKA_BOOTSTRAP") or "").split(",")):
        server = server.strip().split("://", 1)[-1]
        host, port = _host_port(server, 9092)
        out.append(("kafka", host, port))
        break  # one reachable bootstrap server is enough for a client
    return out


def check_endpoints(environ: dict[str, str], timeout_s: float = TIMEOUT_S) -> tuple[bool, str]:
    eps = endpoints(environ)
    if not eps:
        return False, "no AWET_HEALTH_URL and neither DATABASE_URL nor KAFKA_BOOTSTRAP is set"
    for what, host, port in eps:
        try:
            if host.startswith("/"):  # a Unix-domain socket directory (libpq)
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(timeout_s)
                    sock.connect(f"{host}/.s.PGSQL.{port}")
            else:
                with socket.create_connection((host, port), timeout=timeout_s):
                    pass
        except OSError as exc:
            return False, f"{what} {host}:{port}: {exc}"
    return True, ", ".join(f"{w} {h}:{p} reachable" for w, h, p in eps)


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("AWET_HEALTH_URL")
    ok, detail = check_url(url) if url else check_endpoints(dict(os.environ))
    print(("healthy: " if ok else "unhealthy: ") + detail)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
