"""Where AWET keeps its local runtime state (the ``.awet`` home).

Layout::

    <home>/endpoints.json   endpoints of the embedded servers that `awet infra up` started
    <home>/pgdata/          embedded PostgreSQL data directory
    <home>/run/*.pid        pid files (JSON) of the servers we started
    <home>/logs/*.log       server logs
    <home>/infra.lock       lock serialising concurrent `awet infra up|down`

Resolution: ``cfg.paths.home`` when a config is given (``load_config`` already maps env
``AWET_HOME`` onto it), else env ``AWET_HOME``, else ``<cwd>/.awet``. Relative paths are
resolved against the current working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotation only: the config schema imports infra (the Kafka JVM defaults)
    from awet_dagster.config import AwetConfig

AWET_HOME_ENV = "AWET_HOME"
DEFAULT_HOME = ".awet"


def awet_home(cfg: AwetConfig | None = None) -> Path:
    """Return the absolute AWET home directory (not created)."""
    home = cfg.paths.home if cfg is not None else None
    if home:
        raw = Path(home)
    else:
        raw = Path(os.environ.get(AWET_HOME_ENV) or DEFAULT_HOME)
    return raw.expanduser().resolve()


@dataclass(frozen=True)
class HomeLayout:
    """Concrete file locations under one AWET home."""

    home: Path

    @property
    def endpoints_file(self) -> Path:
        return self.home / "endpoints.json"

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def lock_file(self) -> Path:
        return self.home / "infra.lock"

    @property
    def postgres_pid_file(self) -> Path:
        return self.run_dir / "postgres.pid"

    @property
    def broker_pid_file(self) -> Path:
        return self.run_dir / "broker.pid"

    def ensure(self) -> "HomeLayout":
        """Create the directories (idempotent)."""
        for d in (self.home, self.run_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self


def layout(cfg: AwetConfig | None = None) -> HomeLayout:
    return HomeLayout(awet_home(cfg))
