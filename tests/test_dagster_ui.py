"""The Dagster UI in a real browser.

Materializes ``platform_preflight`` + ``daily/raw_bars`` (one partition) in-process into a
fresh DAGSTER_HOME against the session's PostgreSQL, starts ``dagster-webserver -w
workspace.yaml`` on a free loopback port, proves through GraphQL that the server sees the
assets, their checks and the run, and takes headless-Chromium screenshots of the asset graph,
the whole lineage, the checks of ``daily/raw_bars`` and the completed run into a temporary
directory (a test leaves the tree as it found it); ``make docs-img`` sets ``AWET_DOCS_IMG`` to
refresh ``docs/img/`` on purpose.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
DOCS_IMG = os.environ.get("AWET_DOCS_IMG")  # make docs-img: where the screenshots go
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser"))
                 if p and os.path.exists(p)), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None,
                       reason="chromium not installed (Debian package `chromium`; scripts/ci_system_deps.sh)"),
]

SHOTS = {
    "dagster_lineage.png": "/asset-groups",
    "dagster_asset_graph.png": "/locations/awet/asset-groups/daily_market_data",
    "dagster_asset_checks.png": "/assets/daily/raw_bars?view=checks",
    "dagster_run.png": "/runs/{run_id}",
}


def _graphql(base: str, query: str, variables: dict | None = None, timeout: float = 20) -> dict:
    req = urllib.request.Request(
        base + "/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def _chromium(args: list[str], profile: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
           "--window-size=1600,1000", "--virtual-time-budget=15000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def ui_env(monkeypatch, database_url, kafka_bootstrap, tmp_path):
    monkeypatch.setenv("AWET_ENV", "test")
    monkeypatch.setenv("AWET_HOME", str(tmp_path / "awet"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("AWET__DATA__SYMBOLS", "[SPY, AAPL]")
    monkeypatch.setenv("AWET__DATA__START", "2018-01-01")
    monkeypatch.setenv("AWET__DATA__END", "2020-12-31")
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    (tmp_path / "dagster").mkdir()
    # No onboarding modal over the screenshots, no telemetry.
    (tmp_path / "dagster" / "dagster.yaml").write_text("nux:\n  enabled: false\ntelemetry:\n  enabled: false\n")
    return tmp_path


def _materialize() -> str:
    from dagster import DagsterInstance, materialize

    from awet_dagster.config import load_config

    from assets.market_data import build_raw_bars
    from assets.platform import platform_preflight
    from resources.database import DatabaseResource
    from resources.settings import SettingsResource
    from resources.market_data import MarketDataResource

    with DagsterInstance.get() as instance:  # the DAGSTER_HOME the webserver will read
        result = materialize(
            [platform_preflight, build_raw_bars("daily", load_config())],
            resources={"database": DatabaseResource(), "settings": SettingsResource(), "market_data": MarketDataResource()},
            partition_key="SPY", instance=instance, raise_on_error=False,
        )
    assert result.success
    return result.run_id


@pytest.fixture
def webserver(ui_env):
    run_id = _materialize()
    port = free_port()
    log = open(ui_env / "webserver.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", str(REPO / "workspace.yaml"),
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:  # the HTTP server, then the code location loaded (definitions imported)
            if proc.poll() is not None:
                pytest.fail(f"dagster-webserver exited {proc.returncode}: "
                            f"{(ui_env / 'webserver.log').read_text()[-3000:]}")
            try:
                nodes = _graphql(base, "{ assetNodes { assetKey { path } } }", timeout=10)
                if nodes.get("data", {}).get("assetNodes"):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dagster-webserver not ready in 180 s: {(ui_env / 'webserver.log').read_text()[-3000:]}")
            time.sleep(1.0)
        yield base, run_id
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


@pytest.mark.timeout(600)
def test_dagster_ui_shows_assets_checks_and_run(webserver, tmp_path):
    base, run_id = webserver

    # 1. The server sees the assets, the checks and the run (GraphQL: what the UI renders from).
    data = _graphql(base, """{ assetNodes { assetKey { path } groupName
        assetChecksOrError { ... on AssetChecks { checks { name } } } } }""")["data"]
    keys = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    assert {"platform_preflight", "daily/raw_bars", "daily/features"} <= set(keys)
    checks = {c["name"] for c in keys["daily/raw_bars"]["assetChecksOrError"]["checks"]}
    assert {"no_duplicates", "ohlc_consistent", "no_calendar_gaps", "not_stale"} <= checks
    run = _graphql(base, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
                   {"id": run_id})["data"]["runOrError"]
    assert run["status"] == "SUCCESS"

    # 2. The rendered pages (the UI is a JS app: --dump-dom after a virtual time budget).
    profile = tmp_path / "chromium"
    dom = _chromium(["--dump-dom", base + SHOTS["dagster_asset_checks.png"]], profile)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "raw_bars" in dom.stdout and "no_duplicates" in dom.stdout, dom.stdout[-3000:]

    # 3. Screenshots (for the docs only through make docs-img).
    img = Path(DOCS_IMG) if DOCS_IMG else tmp_path / "img"
    img.mkdir(parents=True, exist_ok=True)
    for name, path in SHOTS.items():
        out = img / name
        out.unlink(missing_ok=True)
        res = _chromium([f"--screenshot={out}", base + path.format(run_id=run_id)], profile)
        assert res.returncode == 0 and out.exists(), res.stderr[-2000:]
        png = out.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, (name, len(png))
