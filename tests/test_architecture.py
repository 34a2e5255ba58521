"""Import boundaries (import-linter) and the Dagster code location."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = f"{extra_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run(
        [str(LINT), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def test_import_contracts_hold():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "contract"),
    [
        ("awet_dagster/risk_bad.py", "import dagster\n", "The core imports neither"),
        ("awet_dagster/bus_bad.py", "import confluent_kafka\n", "The core imports neither"),
        ("live/bad.py", "import dagster\n", "live never imports"),
        ("assets/bad.py", "import live\n", "The Dagster layer never imports live"),
        ("awet_dagster/risk/bad.py", "import awet_dagster.storage.trading\n",
         "Domain components never import storage implementations"),
        ("awet_kafka/publish.py", "import live.services.risk\n", "The Kafka transport knows no service"),
        ("awet_kafka/bad.py", "import awet_dagster.storage.trading\n", "The Kafka transport knows no service"),
        ("live/single_instance.py", "import live.supervisor\n", "process plumbing never imports the services"),
        ("assets/bad.py", "import awet_kafka.bus\n", "The Dagster layer never imports live"),
    ],
)
def test_import_contracts_catch_violations(tmp_path, module, source, contract):
    # A shadow copy of the packages with one forbidden import must break exactly that contract.
    for pkg in ("awet_dagster", "awet_cli", "assets", "jobs", "sensors", "resources", "live", "awet_kafka"):
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "data"))
    (tmp_path / module).write_text(source)
    result = _lint(tmp_path, extra_path=tmp_path)
    assert result.returncode != 0, result.stdout
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout


def test_definitions_load_with_main_job():
    from awet_dagster.definitions import defs
    from jobs.main import MAIN_JOB_NAME

    job = defs.resolve_job_def(MAIN_JOB_NAME)
    assert job.name == MAIN_JOB_NAME
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "platform_preflight" in keys


def test_workspace_points_at_definitions():
    import yaml

    ws = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert ws["load_from"][0]["python_module"]["module_name"] == "awet_dagster.definitions"


def test_cli_help_for_every_command():
    from typer.main import get_command
    from typer.testing import CliRunner

    from awet_cli.main import app

    root = get_command(app)
    runner = CliRunner()

    def walk(cmd, path):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])


def test_every_module_over_400_lines_says_why_in_its_docstring():
    """docs/conventions.md: modules stay under about 400 lines; a longer one states its reason
    in its docstring, on a line starting ``Size (`` that names the 400."""
    import ast

    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    long = {}
    for rel in files:
        if rel.startswith("tests/") or "/migrations/" in rel:
            continue
        text = (REPO / rel).read_text()
        if text.count("\n") > 400:
            doc = ast.get_docstring(ast.parse(text)) or ""
            long[rel] = any(line.strip().startswith("Size (") and "400" in line for line in doc.splitlines())
    assert long, "no module over 400 lines found: the check would not see one"
    assert [m for m, why in long.items() if not why] == []


def test_every_service_factory_defaults_to_the_topics_of_the_topology_table():
    """The topology table (awet_dagster.contracts.topology) is the one place that says which
    topics a process reads and writes: each service factory's default topic keywords name
    exactly those topics (a factory that drifted would run wired differently from the table
    the runner, the lag monitor and the deployment tests read)."""
    import importlib
    import inspect

    from awet_dagster.contracts.topology import NODES

    checked = 0
    for name, node in NODES.items():
        try:
            module = importlib.import_module(f"live.services.{name}")
        except ModuleNotFoundError:
            continue  # ingest, lag_monitor's table...: not a bus service factory
        params = inspect.signature(module.build).parameters
        topics = {p.default for key, p in params.items()
                  if key.endswith("_topic") and isinstance(p.default, str)}
        if not topics:
            continue
        assert topics == set(node.inputs + node.side + node.outputs), name
        checked += 1
    assert checked >= 8, checked  # every bus service of the table (risk runs the exits)
