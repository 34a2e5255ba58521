"""Under CI=true a skip is a failure (tests/conftest.py), except the ones listed as allowed;
the system-deps script fails under CI=true when it cannot install a tool."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = '''
import shutil
import pytest

def test_needs_a_tool():
    if shutil.which("no-such-tool-awet") is None:
        pytest.skip("no-such-tool-awet is not installed")

def test_fine():
    assert True
'''


def _run_probe(tmp_path: Path, ci: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(REPO)}
    # Our conftest as a plugin, on a test file outside the tree (nothing written into tests/).
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:randomly",
                           "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_probe.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(180)
def test_a_skip_fails_under_ci_and_names_its_reason(tmp_path):
    strict = _run_probe(tmp_path, "true")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert "skipped under CI=true" in strict.stdout and "no-such-tool-awet is not installed" in strict.stdout
    assert "awet: tests 1 passed, 1 failed, 0 skipped" in strict.stdout, strict.stdout
    relaxed = _run_probe(tmp_path, "false")
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert "awet: tests 1 passed, 0 failed, 1 skipped" in relaxed.stdout, relaxed.stdout


@pytest.mark.timeout(60)
def test_system_deps_script_fails_under_ci_when_it_cannot_install(tmp_path):
    """A PATH without promtool, chromium or apt-get: CI=true fails with the reason, else a warning."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "id", "mktemp", "rm", "timeout", "tail"):
        src = Path("/usr/bin") / tool if (Path("/usr/bin") / tool).exists() else Path("/bin") / tool
        (bin_dir / tool).symlink_to(src)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    script = REPO / "scripts" / "ci_system_deps.sh"
    strict = subprocess.run([str(bin_dir / "bash"), str(script)], env={**env, "CI": "true"}, capture_output=True,
                            text=True, timeout=30)
    assert strict.returncode == 1 and "ERROR: apt-get not available" in strict.stderr, strict.stderr
    relaxed = subprocess.run([str(bin_dir / "bash"), str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert relaxed.returncode == 0 and "WARNING: apt-get not available" in relaxed.stderr, relaxed.stderr
