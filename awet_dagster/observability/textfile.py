"""Prometheus text-format files for metrics produced outside a long-running process.

Dagster runs (training, promotion) are short-lived: there is nothing to scrape once they end,
and no pushgateway is deployed. They write ``<AWET_HOME>/metrics/<stem>.prom`` instead
(atomically: temp file + rename, so a scrape never sees half a file), and the exporter
``python -m live.metrics --textfile-dir .awet/metrics`` serves every ``*.prom`` file there
(the node-exporter "textfile collector" convention).

Names used here are declared (same name, same labels) in ``live/metrics.py``'s registry, the
one catalogue of exported metrics; ``tests/test_metrics.py`` checks they agree.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

MODEL_OOS_SHARPE = "awet_model_oos_sharpe"
MODEL_CHAMPION_INFO = "awet_model_champion_info"
TEXTFILE_WRITE_TS = "awet_textfile_write_timestamp_seconds"

#: name -> (help, label names) of the metrics this module can write.
TEXTFILE_METRICS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    MODEL_OOS_SHARPE: ("Out-of-sample (walk-forward) Sharpe ratio of the champion model", ("model",)),
    MODEL_CHAMPION_INFO: ("Champion model version (value is always 1)", ("model", "version")),
    TEXTFILE_WRITE_TS: ("Unix time a metrics textfile was last written", ("source",)),
}

_SUFFIX = ".prom"


@dataclass(frozen=True)
class Sample:
    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    help: str = ""
    type: str = "gauge"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _fmt(value: float) -> str:
    v = float(value)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def render(samples: Iterable[Sample]) -> str:
    """Prometheus text exposition format (0.0.4): one HELP/TYPE block per metric name."""
    by_name: dict[str, list[Sample]] = {}
    for s in samples:
        if not s.name.replace("_", "a").replace(":", "a").isalnum() or s.name[0].isdigit():
            raise ValueError(f"invalid metric name {s.name!r}")
        by_name.setdefault(s.name, []).append(s)
    lines: list[str] = []
    for name, group in by_name.items():
        help_text = next((s.help for s in group if s.help), TEXTFILE_METRICS.get(name, ("",))[0])
        if help_text:
            lines.append(f"# HELP {name} {_escape_help(help_text)}")
        lines.append(f"# TYPE {name} {group[0].type}")
        for s in group:
            labels = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sorted(s.labels.items()))
            lines.append(f"{name}{{{labels}}} {_fmt(s.value)}" if labels else f"{name} {_fmt(s.value)}")
    return "\n".join(lines) + "\n" if lines else ""


def write_textfile(directory: Path | str, stem: str, samples: Iterable[Sample], *, now: float | None = None) -> Path:
    """Atomically (re)write ``<directory>/<stem>.prom``; adds the file's write timestamp."""
    if not stem or "/" in stem or stem.startswith("."):
        raise ValueError(f"invalid textfile stem {stem!r}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    stamp = Sample(TEXTFILE_WRITE_TS, time.time() if now is None else now, {"source": stem})
    text = render([*samples, stamp])
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, d / f"{stem}{_SUFFIX}")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return d / f"{stem}{_SUFFIX}"


def champion_samples(model: str, version: str | int, oos_sharpe: float | None) -> list[Sample]:
    """Samples describing the current champion (what the promotion asset should write)."""
    out = [Sample(MODEL_CHAMPION_INFO, 1.0, {"model": model, "version": str(version)})]
    if oos_sharpe is not None:
        out.append(Sample(MODEL_OOS_SHARPE, float(oos_sharpe), {"model": model}))
    return out


def write_champion_metrics(directory: Path | str, model: str, version: str | int, oos_sharpe: float | None) -> Path:
    """``<directory>/champion.prom`` for the champion; call after (re)promotion or rollback."""
    return write_textfile(directory, "champion", champion_samples(model, version, oos_sharpe))


def metrics_dir(cfg) -> Path:
    """Where textfiles live: ``<AWET_HOME>/metrics`` (``cfg.paths.home``)."""
    return Path(cfg.paths.home) / "metrics"


def read_textfiles(directory: Path | str) -> str:
    """Concatenation of every ``*.prom`` file in ``directory`` (sorted; missing dir -> "")."""
    d = Path(directory)
    if not d.is_dir():
        return ""
    parts = []
    for path in sorted(d.glob(f"*{_SUFFIX}")):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue  # replaced between glob and read: next scrape sees it
        parts.append(text if text.endswith("\n") or not text else text + "\n")
    return "".join(parts)
