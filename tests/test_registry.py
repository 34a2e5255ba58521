"""MLflow registry round trip in a temporary local store: log, register, alias,
rollback, load the champion and serve it."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests._model_data import BASE, planted, walk_forward_result
from awet_dagster.config.schema import AwetConfig, PathsConfig
from awet_dagster.evaluation.walk_forward import GateCheck
from awet_dagster.model.registry import ModelRegistry
from awet_dagster.model.dataset import build_datasets, origin_windows, prepare_frame
from awet_dagster.model.onnx_export import export_onnx
from awet_dagster.model.tft import TrainSettings, predict_quantiles, train_tft


def test_register_alias_rollback_load(tmp_path, monkeypatch):
    cfg = AwetConfig(paths=PathsConfig(home=tmp_path / "awet"))
    import mlflow

    assert cfg.mlflow_tracking_uri.startswith("sqlite:///")
    global_uri = mlflow.get_tracking_uri()
    reg = ModelRegistry(cfg)
    d = planted(n=160)
    fr = prepare_frame(d.features, d.bars, d.spec)
    data = build_datasets(fr, d.spec, val_start=BASE + dt.timedelta(days=120), end=BASE + dt.timedelta(days=150))
    trained = train_tft(data, TrainSettings(hidden_size=8, attention_heads=1, max_epochs=1, max_train_windows=120))
    export_onnx(trained, tmp_path / "export")
    gates = [GateCheck("median_oos_sharpe", True, 1.3, 0.5, "median"), GateCheck("min_folds", False, 2, 6, "folds")]

    run1, uri1 = reg.log_training_run(walk_forward_result(), tmp_path / "export", gate_checks=gates)
    v1 = reg.register_version(run1, uri1, gates)
    run2, uri2 = reg.log_training_run(walk_forward_result(), tmp_path / "export", gate_checks=gates[:1])
    v2 = reg.register_version(run2, uri2, gates[:1])
    assert (v1.version, v2.version) == ("1", "2")

    c = reg.client
    tags = c.get_model_version(cfg.mlflow.model_name, v1.version).tags
    assert tags["gate_passed"] == "false" and tags["gate.min_folds"].startswith("fail")
    assert c.get_model_version(cfg.mlflow.model_name, "2").tags["gate_passed"] == "true"
    runs = c.search_runs([c.get_experiment_by_name(cfg.mlflow.experiment).experiment_id],
                         filter_string=f"tags.mlflow.parentRunId = '{run1}'")
    assert len(runs) == 2 and {r.data.params["fold"] for r in runs} == {"0", "1"}
    parent = c.get_run(run1)
    assert parent.data.tags["data_hash"] == "sha256:test" and parent.data.tags["code_version"]
    assert parent.data.metrics["sharpe"] == pytest.approx(1.3)
    assert reg.version_oos_sharpe(v1.version) == pytest.approx(1.3)  # what the live side reports
    # Artifacts live under the configured artifact root.
    assert any(Path(cfg.mlflow_artifact_root).rglob("model.onnx"))

    assert reg.get_champion() is None
    assert reg.set_champion(v1.version).version == "1"
    assert reg.set_champion(v2.version).version == "2"
    assert reg.rollback_champion().version == "1"
    with pytest.raises(LookupError):
        reg.rollback_champion()  # v1 replaced nothing
    reg.set_champion(v2.version)

    predictor = reg.load_champion(tmp_path / "served")
    assert predictor.preprocessing == trained.preprocessing
    _, w = origin_windows(fr, d.spec)
    got = predictor.predict({"AAA": w[-1]})["AAA"]
    want = predict_quantiles(trained, w[-1:])[0]
    for j, h in enumerate(d.spec.horizons):
        assert [got[h][q] for q in (0.1, 0.5, 0.9)] == pytest.approx(want[j].tolist(), abs=1e-5)
    # Loading without a destination leaves no download behind, and the predictor does not need it.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    pinned, champion = reg.load_version(v1.version), reg.load_champion()
    assert list(tmp.glob("awet-model-*")) == []
    assert pinned.predict({"AAA": w[-1]})["AAA"] == got == champion.predict({"AAA": w[-1]})["AAA"]
    # The registry used its own client only: MLflow's process-wide settings are untouched.
    assert mlflow.get_tracking_uri() == global_uri != cfg.mlflow_tracking_uri
    assert mlflow.active_run() is None
