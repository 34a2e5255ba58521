"""Shared benchmark utilities: machine info, percentiles, the docs/benchmarks.md section
writer and an embedded broker for benchmarks that need Kafka.

Every benchmark owns one section of ``docs/benchmarks.md`` delimited by
``<!-- NAME:start -->`` / ``<!-- NAME:end -->`` and rewrites only that section, so several
benchmarks share the file without clobbering each other.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_DOC = REPO / "docs" / "benchmarks.md"
_DOC_HEADER = (
    "# Benchmarks\n\n"
    "Each section is written by the benchmark named in it (`python -m benchmarks.<name>` or\n"
    "`python benchmarks/<name>.py`); rerun it to refresh the numbers. Numbers depend on the\n"
    "machine and on its load at the time: compare ratios measured in the same run.\n"
)


# --------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 1024 / 1024
    return None


def package_versions(names: Sequence[str]) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_info(packages: Sequence[str] = ()) -> dict[str, str]:
    """Facts that explain a number: CPU, usable cores, memory, load, Python, packages."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = _mem_total_gib()
    info = {
        "date (UTC)": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "cpu": _cpu_model(),
        "cores (usable/total)": f"{usable}/{os.cpu_count()}",
        "memory": f"{mem:.1f} GiB" if mem else "unknown",
        "load avg (1/5/15 min) at start": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }
    info.update(package_versions(packages))
    return info


def machine_table(info: Mapping[str, str]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in info.items()) + "\n"


# --------------------------------------------------------------------------- stats
def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- doc section
def update_markdown_section(name: str, body: str, path: Path = BENCH_DOC) -> Path:
    """Replace (or append) the ``<!-- name:start -->...<!-- name:end -->`` section of ``path``."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"bad section name {name!r}")
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else _DOC_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


# --------------------------------------------------------------------------- owned servers
KAFKA_LIBS = REPO / ".awet" / "kafka" / "libs"  # the checkout's jar cache, shared with the tests


def bench_config(home: Path, broker: str = "kafka", **env: str):
    """The test profile for a benchmark's own AWET home, on ``broker`` (kafka | tansu)."""
    from awet_dagster.config import load_config

    return load_config(environ={"AWET_ENV": "test", "AWET_HOME": str(home), "AWET__INFRA__BROKER": broker,
                                "AWET__INFRA__KAFKA_LIBS_DIR": str(KAFKA_LIBS), **env})


@contextlib.contextmanager
def owned_infra(broker: str = "kafka", *, postgres: bool = True) -> Iterator[tuple[object, object]]:
    """(config, Endpoints) of servers this benchmark starts in a temporary home and that stop
    with it, however it ends (normal end, exception, SIGTERM/SIGINT, or SIGKILL through the
    guard process: ``awet_dagster.infra.guard``). ``postgres=False``: the broker only (an
    external DATABASE_URL placeholder keeps PostgreSQL from starting)."""
    from awet_dagster.infra import infra_up
    from awet_dagster.infra.guard import owned_home
    from awet_kafka.admin import admin_ready

    with owned_home("awet-bench-") as home:
        extra = {} if postgres else {"DATABASE_URL": "postgresql://unused@localhost/unused"}
        cfg = bench_config(home, broker, **extra)
        ep = infra_up(cfg, broker_ready=admin_ready)
        for notice in ep.notices:
            print(notice, flush=True)
        yield cfg, ep


@contextlib.contextmanager
def embedded_broker(kind: str = "kafka") -> Iterator[str]:
    """Yield a bootstrap address: ``$KAFKA_BOOTSTRAP`` if set, else a fresh broker of
    ``kind`` owned by this process (``owned_infra``)."""
    env = os.environ.get("KAFKA_BOOTSTRAP")
    if env:
        yield env
        return
    with owned_infra(kind, postgres=False) as (_cfg, ep):
        yield ep.kafka_bootstrap


# --------------------------------------------------------------------------- the loop on its own topics
#: Benchmark topic key -> the production topic whose partition count (``cfg.kafka.topics``) it gets.
TOPIC_KEYS = {"raw": "market.raw", "eng": "engineered", "alpha": "alpha.signals", "pred": "predictions",
              "scored": "signals.scored", "approved": "risk.approved", "rejected": "risk.rejected",
              "exits": "exec.exits", "orders": "exec.orders", "done": "exec.done", "clock": "market.clock"}


def loop_overrides(t: Mapping[str, str], ns: str, group_prefix: str) -> dict[str, dict]:
    """``start_loop`` overrides that run the 7 loop services on the topics ``t`` (by
    ``TOPIC_KEYS`` key), each in a fresh consumer group, trading in namespace ``ns``; no model
    poll (inference idles)."""
    def g() -> str:
        return f"{group_prefix}-{uuid.uuid4().hex[:8]}"

    return {
        "persist_bars": {"input_topic": t["raw"], "group": g()},
        "features": {"input_topic": t["raw"], "output_topic": t["eng"], "group": g()},
        "lean_alpha": {"input_topic": t["raw"], "output_topic": t["alpha"], "group": g()},
        "inference": {"input_topic": t["eng"], "output_topic": t["pred"], "group": g(), "poll_s": 3600},
        "signal": {"input_topic": t["raw"], "output_topic": t["scored"], "predictions_topic": t["pred"],
                   "alpha_topic": t["alpha"], "group": g()},
        "risk": {"input_topic": t["scored"], "approved_topic": t["approved"], "rejected_topic": t["rejected"],
                 "exits_topic": t["exits"], "done_topic": t["done"], "orders_topic": t["orders"],
                 "clock_topic": t["clock"], "group": g(), "namespace": ns},
        "execution": {"market_topic": t["raw"], "approved_topic": t["approved"], "exits_topic": t["exits"],
                      "orders_topic": t["orders"], "done_topic": t["done"], "group": g(), "namespace": ns},
    }


def broker_pid(ep: object) -> int | None:
    return (getattr(ep, "started", {}) or {}).get("broker", {}).get("pid")
