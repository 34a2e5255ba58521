"""How ``run_services`` wires a run's metrics: each bus service's ``on_metrics`` hook (chained
after a tracker's or an override's), the ``metrics`` keyword of factories that take one (risk,
execution, inference, lag_monitor: their domain metrics), and the run's ``/metrics`` +
``/healthz`` endpoint."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from awet_dagster.config import AwetConfig

from live.metrics import start_metrics_server
from live.registry import ServiceSpec

log = logging.getLogger("awet.live.runner")


class MetricsPortError(RuntimeError):
    """The /metrics + /healthz endpoint could not bind its address (port taken...)."""


def metrics_host(cfg: AwetConfig) -> str:
    return cfg.observability.metrics_host or "127.0.0.1"


def chain(*hooks: Callable[[Any], None]) -> Callable[[Any], None]:
    def on_metrics(sample: Any) -> None:
        for hook in hooks:
            hook(sample)

    return on_metrics


def wire_metrics(spec: ServiceSpec, kw: dict[str, Any], svc_metrics: Any) -> None:
    """Add ``svc_metrics`` to a service's factory keywords (in place)."""
    if spec.kind == "bus":
        prev = kw.get("on_metrics")
        if prev is None and kw.get("tracker") is not None:
            # The factory would set the tracker's hook itself (setdefault): chain it here.
            prev = kw["tracker"].hook(spec.name)
        kw["on_metrics"] = svc_metrics if prev is None else chain(prev, svc_metrics)
    if spec.accepts("metrics"):
        kw.setdefault("metrics", svc_metrics)


def serve_metrics(metrics: Any, port: int, host: str, sups: Sequence[Any], stop: threading.Event, *,
                  required: bool) -> Any:
    """``/metrics`` + ``/healthz`` of a run: healthy while every service (``sups``: each with
    ``spec.name`` and ``state``) is starting, running or restarting and no stop was asked."""
    def health() -> tuple[bool, str]:
        states = {s.spec.name: s.state for s in sups}
        ok = not stop.is_set() and all(st in ("starting", "running", "restarting") for st in states.values())
        return ok, ("ok " if ok else "unhealthy ") + " ".join(f"{n}={st}" for n, st in states.items())

    try:
        server = start_metrics_server(port, metrics, host=host, health=health)
    except OSError as exc:
        if required:
            raise MetricsPortError(f"cannot serve /metrics on {host}:{port}: {exc}") from exc
        log.warning("metrics endpoint disabled: cannot bind %s:%d: %s", host, port, exc)
        return None
    log.info("serving /metrics and /healthz on %s", server.url)
    return server
