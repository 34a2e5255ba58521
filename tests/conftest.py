"""Session fixtures: REAL embedded PostgreSQL + Apache Kafka for the whole test session.

They are started with the same code as `awet infra up` (awet_dagster.infra) in a
temporary AWET home, the schema is migrated to head, and everything is stopped at the
end of the session.

The session broker is Apache Kafka (KRaft, one node; jars cached in the checkout's
``.awet/kafka/libs`` so that sessions share one fetch). ``AWET_TEST_BROKER=tansu|kafka|auto``
chooses another; the default is ``auto`` (Kafka, or tansu with a notice when Java 17+ or
Maven is missing) and ``kafka`` under ``CI=true``, where a missing Java, Maven or Kafka fails
the run. A second, smoke-test broker of the other kind (``tansu_bootstrap``) serves the
tests parametrized by ``any_bootstrap``. When DATABASE_URL / KAFKA_BOOTSTRAP are set in the environment
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

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from awet_dagster.config import load_config
from awet_dagster.infra import Endpoints, infra_down, infra_up
from awet_dagster.infra.guard import scratch_home, start_guard, stop_guard


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: slow test (still runs in CI)")


# The only skips CI accepts (test id prefix -> why it may skip). Any other skip under CI=true
# (a missing tool, a permission, a server that cannot start) fails the test with its reason:
# CI must never pass by not checking.
ALLOWED_SKIPS: dict[str, str] = {
    "tests/test_migrations.py::test_plain_tables_without_timescaledb":
        "an external DATABASE_URL with TimescaleDB checks the hypertable mode instead",
}


def _ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ARG001
    outcome = yield
    report = outcome.get_result()
    if not (_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    if any(item.nodeid.startswith(prefix) for prefix in ALLOWED_SKIPS):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, which does not allow it (tests/conftest.py ALLOWED_SKIPS): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):  # noqa: ARG001
    """With AWET_TEST_TIMING=<file>: one JSON line per test (wall and this process's CPU
    seconds, setup to teardown): which tests wait (parallelise well) and which compute."""
    path = os.environ.get("AWET_TEST_TIMING")
    if not path:
        yield
        return
    import json
    import time

    w0, c0 = time.monotonic(), time.process_time()
    yield
    row = {"test": item.nodeid, "wall_s": round(time.monotonic() - w0, 3),
           "cpu_s": round(time.process_time() - c0, 3),
           "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "end": round(time.time(), 1)}
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:  # a torch test's CPU seconds varied 1.8x between runs: threads or host?
        row["torch_threads"] = torch.get_num_threads()
    steal = _steal_s()
    if steal is not None:
        row["steal_s_total"] = steal
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def _steal_s() -> float | None:
    """The machine's CPU steal time so far (seconds; /proc/stat), None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
        return round(int(fields[8]) / os.sysconf("SC_CLK_TCK"), 1)
    except (OSError, IndexError, ValueError):
        return None


#: Wall seconds per test measured under `make test` (scripts/test_durations.py writes it): an
#: ordering hint only. Cases it does not list count as SLOW_GUESS_S if marked slow, else 0.
DURATIONS = Path(__file__).with_name("durations.json")
SLOW_GUESS_S = 20.0


def _expected_seconds(items: list[pytest.Item]) -> dict[str, float]:
    """Expected seconds per test id; a module that stays on one worker counts as one block (its
    total) so that it is handed out by its whole length."""
    import json

    known = json.loads(DURATIONS.read_text(encoding="utf-8")) if DURATIONS.exists() else {}
    each = {item.nodeid: float(known.get(item.nodeid, SLOW_GUESS_S if item.get_closest_marker("slow") else 0.0))
            for item in items}
    blocks: dict[str, float] = {}
    for nodeid, s in each.items():
        module = nodeid.split("::", 1)[0]
        if module in ONE_WORKER_MODULES:
            blocks[module] = blocks.get(module, 0.0) + s
    return {nodeid: blocks.get(nodeid.split("::", 1)[0], s) for nodeid, s in each.items()}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):  # noqa: ARG001
    """Under pytest-xdist, longest first (xdist hands the first four to the four workers, then
    each next one to whichever frees up): a long case handed out last runs alone while the other
    workers idle, and the two ~2-3 minute model trainings queued on one worker made it the
    critical path (seed 3801891840: one worker 532 s of tests, another 410 s). Ties keep
    pytest-randomly's order: this wrapper (registered later, called first) runs after its shuffle."""
    result = yield
    # The workers collect and their order is what the controller schedules; xdist sets a
    # worker's ``numprocesses`` to None, so the count comes from its environment.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        items[:] = _longest_first(items, workers)
    return result


def _scope(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return module if module in ONE_WORKER_MODULES else nodeid


def _longest_first(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """Work units (a test, or a one-worker module) longest first, the second round reversed:
    xdist gives each worker its first unit and one more to hold before any finishes, so the
    longest unit is paired with the shortest of the next round, not with the next longest."""
    expected = _expected_seconds(items)
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(_scope(item.nodeid), []).append(item)
    order = sorted(units, key=lambda scope: -expected[units[scope][0].nodeid])
    order[workers:2 * workers] = reversed(order[workers:2 * workers])
    return [item for scope in order for item in units[scope]]


def _share_cores_between_workers() -> None:
    """An xdist worker's math libraries (torch's OpenMP, MKL, OpenBLAS) use its share of the
    cores, not all of them: two TFT trainings of two workers with a thread per core each ran
    ~4x slower than one after the other (spinning OpenMP threads fighting for 2 cores; both hit
    the 900 s timeout). Set before anything imports torch; subprocesses inherit it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(var, share)


_share_cores_between_workers()

#: Modules whose tests share an expensive module-scoped fixture (a trained champion and a control
#: run, a replay, a trained model): under pytest-xdist one worker runs each of them whole. Every
#: other test goes to whichever worker is free. (Not xdist_group marks: with pytest 9.2,
#: pytest-xdist 3.8's loadgroup sets ``item._nodeid``, which pytest no longer reads.)
ONE_WORKER_MODULES = frozenset({
    "tests/test_service_crash.py", "tests/test_alerts_e2e.py", "tests/test_onnx.py", "tests/test_walk_forward.py",
    "tests/test_backtest.py", "tests/test_features.py", "tests/test_corporate_actions.py",
})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup``: ONE_WORKER_MODULES stay together, the rest is spread test by test."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

        def _reschedule(self, node) -> None:
            # A worker holds the test it runs and ONE more (it needs to know the next test to
            # finish the current one), not three as xdist's default: three queued behind the
            # 4-minute model test would wait for it while other workers idle at the end.
            if not node.shutting_down and self.workqueue and self._pending_of(self.assigned_work[node]) <= 1:
                self._assign_work_unit(node)
            elif not self.workqueue and not node.shutting_down:
                node.shutdown()

    return ModuleGroups(config, log)


REPO = Path(__file__).resolve().parents[1]
KAFKA_LIBS = REPO / ".awet" / "kafka" / "libs"  # shared by test sessions (no network after the first)


def session_broker_choice() -> str:
    choice = os.environ.get("AWET_TEST_BROKER", "").strip().lower()
    if choice:
        if choice not in ("auto", "kafka", "tansu"):
            raise pytest.UsageError(f"AWET_TEST_BROKER must be auto, kafka or tansu, not {choice!r}")
        return choice
    return "kafka" if os.environ.get("CI", "").lower() == "true" else "auto"


def _session_broker_is_tansu() -> bool:
    choice = session_broker_choice()
    if choice != "auto":
        return choice == "tansu"
    from awet_dagster.infra.kafka_broker import find_java

    return find_java()[0] is None  # auto: Kafka when a Java 17+ is there


#: configs/test.yaml and FAST_DEV_CONSUMER_SETTINGS wait up to 100 ms in an empty fetch: Kafka
#: answers a waiting fetch as soon as data arrives, and 5 ms made every idle consumer send 200
#: fetches a second (test_live_loop + test_scale_out: 178 -> 155 CPU-s). tansu answers only when
#: the wait is over: there each hop would take the whole wait, so a tansu session keeps 5 ms.
TANSU_FETCH_WAIT = {"AWET__KAFKA__CONSUMER": '{"fetch.wait.max.ms": 5}'}
#: Decided once: with "auto" it asks for a Java (a subprocess), and config_for runs per test.
SESSION_ON_TANSU = _session_broker_is_tansu()
if SESSION_ON_TANSU:
    from awet_kafka.settings import FAST_DEV_CONSUMER_SETTINGS

    FAST_DEV_CONSUMER_SETTINGS["fetch.wait.max.ms"] = 5  # type: ignore[index]
    os.environ.update(TANSU_FETCH_WAIT)  # the CLI subprocesses' environment layer


def config_for(home: Path, **env: str):
    """AwetConfig for the AWET home ``home``; only ``env`` is seen as the environment.

    Isolated from os.environ on purpose: a DATABASE_URL exported in the developer's shell
    must not turn an "embedded" test into an "external" one.
    """
    base = {
        "AWET_ENV": "test",
        "AWET_HOME": str(home),
        "AWET__INFRA__BROKER": session_broker_choice(),
        "AWET__INFRA__KAFKA_LIBS_DIR": str(KAFKA_LIBS),
        **(TANSU_FETCH_WAIT if SESSION_ON_TANSU else {}),
    }
    return load_config(environ={**base, **env})


@pytest.fixture(scope="session")
def test_config_for() -> Callable[..., object]:
    return config_for


def _scratch_home() -> Path:
    return scratch_home("awet-test-")


def _start_watchdog(home: Path):
    """The guard of ``home``: stops its servers if this session dies without teardown
    (`timeout pytest ...`, Ctrl-C twice, SIGKILL)."""
    return start_guard(home)


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
        from awet_kafka.admin import admin_ready

        ep = infra_up(cfg, broker_ready=admin_ready)  # starts only what is not external
        for notice in ep.notices:
            _SESSION_NOTES.append(notice)
        upgrade(ep.database_url)
        yield ep
    finally:
        try:
            infra_down(cfg)  # stops only what infra_up started
        finally:
            stop_guard(watchdog)
            shutil.rmtree(home.parent, ignore_errors=True)


_SESSION_NOTES: list[str] = []


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"awet session broker: {session_broker_choice()} (AWET_TEST_BROKER, CI)"]


_LEFTOVERS: list[str] = []


def _xdist_controller(config: pytest.Config) -> bool:
    """The pytest-xdist process that only hands tests to workers (runs none itself)."""
    return config.pluginmanager.hasplugin("dsession") and not hasattr(config, "workerinput")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:  # noqa: ARG001
    """Every test stops what it starts: after the last fixture was torn down, nothing the
    session started may still run (tests/leaks.py); if something does, the run fails, naming it.

    Under pytest-xdist each worker checks itself (its own servers, clients, threads, children)
    and reports to the controller (``pytest_testnodedown``), which fails the run: the
    controller's own descendants are the workers, not leftovers."""
    if not _xdist_controller(session.config):
        from awet_dagster.infra.guard import SCRATCH_ROOTS
        from tests.leaks import leftovers

        roots = [f"{r}/" for r in SCRATCH_ROOTS]
        factory = getattr(session.config, "_tmp_path_factory", None)
        if factory is not None and getattr(factory, "_basetemp", None) is not None:
            roots.append(f"{factory.getbasetemp()}/")
        _LEFTOVERS.extend(leftovers(roots))
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:  # an xdist worker: the controller reports and fails the run
            workeroutput["awet_leftovers"] = list(_LEFTOVERS)
            workeroutput["awet_notes"] = list(_SESSION_NOTES)
    if _LEFTOVERS and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # noqa: ARG001 - xdist hook (controller side)
    out = getattr(node, "workeroutput", {}) or {}
    worker = (getattr(node, "workerinput", {}) or {}).get("workerid", "worker")
    _LEFTOVERS.extend(f"[{worker}] {item}" for item in out.get("awet_leftovers", ()))
    for note in out.get("awet_notes", ()):
        if note not in _SESSION_NOTES:
            _SESSION_NOTES.append(note)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    for note in _SESSION_NOTES:
        terminalreporter.write_line(f"awet: {note}", yellow=True)
    for item in _LEFTOVERS:
        terminalreporter.write_line(f"awet: LEFT RUNNING after the session: {item}", red=True)
    counts = {k: len([r for r in terminalreporter.stats.get(k, []) if getattr(r, "when", "call") != "teardown"
                      or k == "error"]) for k in ("passed", "failed", "skipped", "error")}
    terminalreporter.write_line(
        "awet: tests {passed} passed, {failed} failed, {skipped} skipped, {error} errors".format(**counts)
        + f", {len(_LEFTOVERS)} left running"
        + (" (CI=true: skips fail)" if _ci() else "")
        # The order's seed also under -q (which hides pytest-randomly's header line).
        + (f"; order: --randomly-seed={seed}" if (seed := getattr(config.option, "randomly_seed", None))
           not in (None, "default") else ""), bold=True)


@pytest.fixture(scope="session")
def broker_kind(infra_endpoints: Endpoints) -> str:
    """"kafka", "tansu" or "external": what the session's tests run on."""
    return infra_endpoints.broker_kind


@pytest.fixture(scope="session")
def tansu_bootstrap(infra_endpoints: Endpoints) -> Iterator[str]:
    """A tansu broker for the smoke subset (the session's own when it is tansu)."""
    if infra_endpoints.broker_kind == "tansu":
        yield infra_endpoints.kafka_bootstrap
        return
    from awet_dagster.infra.broker import start_broker, stop_broker
    from awet_dagster.infra.paths import HomeLayout

    home = _scratch_home()
    watchdog = _start_watchdog(home)
    lay = HomeLayout(home).ensure()
    try:
        info, _ = start_broker(lay, kind="tansu", timeout_s=30)
        yield info.bootstrap
    finally:
        try:
            stop_broker(lay.broker_pid_file, timeout_s=10)
        finally:
            stop_guard(watchdog)
            shutil.rmtree(home.parent, ignore_errors=True)


@pytest.fixture(params=["session", "tansu"])
def any_bootstrap(request: pytest.FixtureRequest, kafka_bootstrap: str) -> str:
    """The session broker (Kafka) and the tansu fallback: the smoke subset runs on both."""
    if request.param == "tansu":
        return request.getfixturevalue("tansu_bootstrap")
    return kafka_bootstrap


@pytest.fixture(scope="session")
def database_url(infra_endpoints: Endpoints) -> str:
    return infra_endpoints.database_url


def database_named(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name`` (same server and credentials)."""
    from awet_dagster.storage.db import libpq_url

    base, sep, query = libpq_url(url).partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}{sep}{query}"


@pytest.fixture(scope="session")
def template_database(database_url: str) -> Iterator[str]:
    """A database migrated to head that nothing connects to: the template each isolated test
    database is copied from (CREATE DATABASE ... TEMPLATE copies files: milliseconds)."""
    import psycopg

    from awet_dagster.storage.db import libpq_url, upgrade

    name = f"awet_tpl_{uuid.uuid4().hex[:8]}"
    admin = libpq_url(database_url)
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = database_named(database_url, name)
        upgrade(url)  # its engine is disposed: no connection stays on the template
        yield name
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def isolated_database(database_url: str, template: str) -> Iterator[str]:
    """A new database copied from ``template`` (at head), dropped on exit; yields its URL."""
    import psycopg

    from awet_dagster.storage.db import libpq_url

    name = f"awet_t_{uuid.uuid4().hex[:10]}"
    admin = libpq_url(database_url)
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield database_named(database_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def isolated_database_url(database_url: str, template_database: str) -> Iterator[str]:
    """A database of this test's own, at head, dropped afterwards: for tests that change shared
    trading state (kill switch, orders, positions) that other tests read."""
    with isolated_database(database_url, template_database) as url:
        yield url


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
def configured_topics(kafka_bootstrap: str) -> None:
    """The loop's configured topics (market.raw, ...), as `awet infra up` and compose's `init`
    one-shot create them before any service starts. Tests of commands that use the configured
    names need it: on a fresh xdist worker's broker no earlier test has created them."""
    from awet_kafka.admin import ensure_configured_topics

    ensure_configured_topics(kafka_bootstrap, load_config(environ={"AWET_ENV": "test"}).kafka)


@pytest.fixture
def make_topic(kafka_bootstrap: str) -> Callable[..., str]:
    """``make_topic(partitions=1) -> name``: a fresh topic (and ``name.dlq``) for this test.

    Unique names instead of deletion: tansu keeps topics in memory for the session only,
    and tests never see each other's messages.
    """
    from awet_kafka.admin import ensure_topics

    def _make(partitions: int = 1) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        ensure_topics(kafka_bootstrap, {name: partitions}, timeout_s=30)
        return name

    return _make
