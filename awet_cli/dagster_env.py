"""Where the project's Dagster instance lives and how to point Dagster at it."""
from __future__ import annotations

import os
from pathlib import Path

from awet_dagster.config import AwetConfig

REPO_ROOT = Path(__file__).resolve().parents[1]


def workspace_file() -> Path:
    return REPO_ROOT / "workspace.yaml"


def ensure_dagster_home(cfg: AwetConfig) -> Path:
    """Create DAGSTER_HOME with a dagster.yaml (SQLite storage, telemetry off)."""
    home = cfg.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    yaml_path = home / "dagster.yaml"
    if not yaml_path.exists():
        # SQLite run/event storage is Dagster's default for a local DAGSTER_HOME.
        yaml_path.write_text("telemetry:\n  enabled: false\n")
    return home


def dagster_environ(cfg: AwetConfig) -> dict[str, str]:
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(ensure_dagster_home(cfg))
    # Child processes (dagster dev, step workers) must see the same AWET home.
    env.setdefault("AWET_HOME", str(cfg.paths.home.resolve()))
    return env
