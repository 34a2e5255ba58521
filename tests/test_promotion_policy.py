"""The promotion policy and the champion source on the in-memory registry twin
(``FakeModelRegistry``): no MLflow store, no database. The same calls run against MLflow in
tests/test_registry.py and tests/test_model_pipeline.py."""
from __future__ import annotations

import pytest

from awet_dagster.evaluation.walk_forward import GateCheck
from awet_dagster.inference import ChampionSource
from awet_dagster.model import promotion
from awet_dagster.model.fake_registry import FakeModelRegistry
from tests._model_data import walk_forward_result

PASS = [GateCheck("median_oos_sharpe", True, 0.9, 0.5, "median")]
FAIL = [GateCheck("median_oos_sharpe", False, -0.2, 0.5, "median")]


def _register(reg: FakeModelRegistry, tmp_path, checks, sharpe: float = 0.9, parity: bool = True) -> str:
    export = tmp_path / f"export-{len(reg.runs)}"
    export.mkdir()
    (export / "model.onnx").write_bytes(b"not read by this test")
    run_id, uri = reg.log_training_run(walk_forward_result(1, sharpe), export, gate_checks=checks)
    ref = reg.register_version(run_id, uri, checks)
    if parity:
        reg.tag_version(ref.version, {"onnx_parity": "pass"})
    return ref.version


def test_the_policy_promotes_only_gated_verified_newer_and_approved_versions(test_config_for, tmp_path):
    cfg = test_config_for(tmp_path / "home")
    reg = FakeModelRegistry(tmp_path / "registry")
    v1 = _register(reg, tmp_path, PASS)
    v2 = _register(reg, tmp_path, FAIL)
    v3 = _register(reg, tmp_path, PASS, parity=False)
    got = {d.version: (d.action, d.reason) for d in promotion.decide(cfg, reg)}
    assert got[v1][0] == "promote"
    assert got[v2] == ("reject", "gate failed: median_oos_sharpe")
    assert got[v3] == ("reject", "ONNX parity not verified")
    assert [d.version for d in promotion.decide(cfg, reg, after_version=1)] == [v2, v3]  # the sensor's cursor

    reg.set_champion(v1)
    v4 = _register(reg, tmp_path, PASS)
    strict = cfg.model_copy(update={"promotion": cfg.promotion.model_copy(update={"require_approval": True})})
    assert {d.version: d.action for d in promotion.decide(strict, reg)}[v4] == "await_approval"
    reg.tag_version(v4, {promotion.APPROVED_TAG: "alice"})
    assert {d.version: d.reason for d in promotion.decide(strict, reg)}[v4] == "every check passed (approved by alice)"
    reg.set_champion(v4)
    assert {d.version: d.action for d in promotion.decide(strict, reg)}[v1] == "reject"  # not newer than v4
    assert reg.rollback_champion().version == v1
    with pytest.raises(LookupError):
        reg.rollback_champion()  # v1 replaced nothing


def test_the_champion_source_follows_the_alias_and_reports_its_sharpe(tmp_path):
    loaded: list[str] = []

    class Registry(FakeModelRegistry):
        def load_version(self, version):
            loaded.append(str(version))
            return object()

    reg = Registry(tmp_path / "registry")
    src = ChampionSource(reg, poll_s=0.0)
    assert src.current() is None
    v1, v2 = _register(reg, tmp_path, PASS, sharpe=0.7), _register(reg, tmp_path, PASS, sharpe=1.1)
    reg.set_champion(v1)
    assert src.current()[0] == f"awet-tft:{v1}" and src.oos_sharpe == pytest.approx(0.7)
    assert src.current()[0] == f"awet-tft:{v1}" and loaded == [v1]  # not loaded again
    reg.set_champion(v2)
    assert src.current()[0] == f"awet-tft:{v2}" and src.oos_sharpe == pytest.approx(1.1) and src.swaps == 2
    reg.rollback_champion()
    assert src.current()[0] == f"awet-tft:{v1}"
