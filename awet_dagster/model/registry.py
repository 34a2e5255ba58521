"""MLflow side of the lifecycle (no Dagster): log a training run with a nested run per
walk-forward fold, log the ONNX model, register `awet-tft` versions tagged with their
gate results, and move the `champion` alias (with rollback).

The preprocessing artifact is logged next to the model in the same run; `load_champion`
downloads both into ONE directory so `OnnxPredictor.load(dir)` serves it.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from awet_dagster.model.onnx_export import MODEL_FILE, OnnxPredictor
from awet_dagster.model.preprocessing import PREPROCESSING_FILE

PREVIOUS_CHAMPION_TAG = "previous_champion"
CALIBRATION_FILE = "calibration.json"
PREPROCESSING_DIR = "preprocessing"
MODEL_ARTIFACT = "model"


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    run_id: str
    model_uri: str


def git_sha(repo: Path | str | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).resolve().parents[2],
            capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def client(cfg):
    """Point mlflow at the configured stores; returns an `MlflowClient`. The experiment
    is created with its artifacts under `cfg.mlflow_artifact_root`."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = cfg.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(cfg.mlflow.registry_uri or uri)
    c = MlflowClient(tracking_uri=uri, registry_uri=cfg.mlflow.registry_uri or uri)
    if c.get_experiment_by_name(cfg.mlflow.experiment) is None:
        root = Path(cfg.mlflow_artifact_root)
        root.mkdir(parents=True, exist_ok=True)
        c.create_experiment(cfg.mlflow.experiment, artifact_location=root.as_uri())
    mlflow.set_experiment(cfg.mlflow.experiment)
    return c


def _clean_metrics(d: dict) -> dict[str, float]:
    import math

    return {k.replace("@", "_"): float(v) for k, v in d.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}


def log_training_run(cfg, result, onnx_dir: Path | str, *, gate_checks: Sequence | None = None,
                     run_name: str | None = None) -> tuple[str, str]:
    """Log `result` (WalkForwardResult) and the exported model in `onnx_dir`
    (model.onnx + preprocessing.json). Returns (run_id, model_uri)."""
    import mlflow
    import onnx

    client(cfg)
    onnx_dir = Path(onnx_dir)
    with mlflow.start_run(run_name=run_name or f"walk-forward-{result.bar_type}") as run:
        mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, dict, tuple)) else v for k, v in result.params.items()})
        mlflow.set_tags({"data_hash": result.data_hash, "code_version": git_sha(), "bar_type": result.bar_type})
        mlflow.log_metrics(_clean_metrics(result.overall))
        for i, f in enumerate(result.folds):
            with mlflow.start_run(run_name=f"fold-{f.fold}", nested=True):
                mlflow.log_params({"fold": f.fold, "train_start": str(f.train_start), "train_end": str(f.train_end),
                                   "test_start": str(f.test_start), "test_end": str(f.test_end)})
                mlflow.log_metrics(_clean_metrics({**f.metrics, "n_train_windows": f.n_train_windows,
                                                   "n_test_windows": f.n_test_windows}))
                for h in f.history:
                    mlflow.log_metrics(_clean_metrics({"train_loss": h.get("train_loss"), "val_loss": h.get("val_loss")}),
                                       step=int(h.get("epoch", 0)))
                with tempfile.TemporaryDirectory() as tmp:
                    png = Path(tmp) / f"equity_fold_{f.fold}.png"
                    png.write_bytes(result.equity_png(i))
                    mlflow.log_artifact(str(png), artifact_path="equity")
        if gate_checks:
            mlflow.log_dict([asdict(g) for g in gate_checks], "gate.json")
        info = mlflow.onnx.log_model(
            onnx.load(str(onnx_dir / MODEL_FILE)), name=MODEL_ARTIFACT,
            onnx_execution_providers=["CPUExecutionProvider"],
            save_as_external_data=False,  # one self-contained model.onnx to download and serve
        )
        mlflow.log_artifact(str(onnx_dir / PREPROCESSING_FILE), artifact_path=PREPROCESSING_DIR)
        if (onnx_dir / CALIBRATION_FILE).exists():
            mlflow.log_artifact(str(onnx_dir / CALIBRATION_FILE), artifact_path=PREPROCESSING_DIR)
        return run.info.run_id, info.model_uri


def register_version(cfg, run_id: str, model_uri: str, gate_checks: Sequence = ()) -> ModelRef:
    """A new version of `cfg.mlflow.model_name`, tagged with each gate check and the run."""
    import mlflow

    c = client(cfg)
    name = cfg.mlflow.model_name
    mv = mlflow.register_model(model_uri, name)
    tags = {"run_id": run_id, "gate_passed": str(all(g.passed for g in gate_checks)).lower() if gate_checks else "unknown"}
    for g in gate_checks:
        tags[f"gate.{g.name}"] = f"{'pass' if g.passed else 'fail'} value={g.value:.6g} threshold={g.threshold:.6g}"
    for k, v in tags.items():
        c.set_model_version_tag(name, mv.version, k, v)
    return ModelRef(name, str(mv.version), run_id, f"models:/{name}/{mv.version}")


def get_champion(cfg) -> ModelRef | None:
    from mlflow.exceptions import MlflowException

    c = client(cfg)
    name = cfg.mlflow.model_name
    try:
        mv = c.get_model_version_by_alias(name, cfg.mlflow.champion_alias)
    except MlflowException:
        return None
    return ModelRef(name, str(mv.version), mv.run_id or mv.tags.get("run_id", ""), f"models:/{name}@{cfg.mlflow.champion_alias}")


def set_champion(cfg, version: str | int) -> ModelRef:
    """Point the champion alias at `version`, remembering the previous champion on the
    new version (tag `previous_champion`) so `rollback_champion` can undo it."""
    c = client(cfg)
    name = cfg.mlflow.model_name
    prev = get_champion(cfg)
    if prev is not None and prev.version != str(version):
        c.set_model_version_tag(name, str(version), PREVIOUS_CHAMPION_TAG, prev.version)
    c.set_registered_model_alias(name, cfg.mlflow.champion_alias, str(version))
    return get_champion(cfg)  # type: ignore[return-value]


def rollback_champion(cfg) -> ModelRef:
    """Move the champion alias back to the version it replaced."""
    c = client(cfg)
    name = cfg.mlflow.model_name
    cur = get_champion(cfg)
    if cur is None:
        raise LookupError(f"{name} has no {cfg.mlflow.champion_alias} to roll back")
    prev = c.get_model_version(name, cur.version).tags.get(PREVIOUS_CHAMPION_TAG)
    if not prev:
        raise LookupError(f"{name} v{cur.version} has no previous champion recorded")
    c.set_registered_model_alias(name, cfg.mlflow.champion_alias, prev)
    return get_champion(cfg)  # type: ignore[return-value]


def download_model(cfg, ref: str | None = None, dest: Path | str | None = None) -> Path:
    """model.onnx + preprocessing.json of `ref` (default: the champion alias) in one dir."""
    import mlflow

    c = client(cfg)
    name = cfg.mlflow.model_name
    uri = ref or f"models:/{name}@{cfg.mlflow.champion_alias}"
    dest = Path(dest or tempfile.mkdtemp(prefix="awet-model-"))
    dest.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest / "mlflow_model")))
    (dest / MODEL_FILE).write_bytes((local / MODEL_FILE).read_bytes())
    if uri.startswith("models:/") and "@" in uri:
        alias_name, alias = uri.removeprefix("models:/").split("@", 1)
        mv = c.get_model_version_by_alias(alias_name, alias)
    else:
        mname, version = uri.removeprefix("models:/").split("/", 1)
        mv = c.get_model_version(mname, version)
    run_id = mv.run_id or mv.tags.get("run_id")
    pre = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"{PREPROCESSING_DIR}/{PREPROCESSING_FILE}", dst_path=str(dest / "run")
    )
    (dest / PREPROCESSING_FILE).write_text(Path(pre).read_text())
    try:  # optional: models registered before calibration existed have none
        cal = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"{PREPROCESSING_DIR}/{CALIBRATION_FILE}", dst_path=str(dest / "run")
        )
        (dest / CALIBRATION_FILE).write_text(Path(cal).read_text())
    except Exception:  # noqa: BLE001 - mlflow raises several types for a missing artifact
        pass
    return dest


def version_calibration(cfg, name: str, version: str | int):
    """The Platt calibrator logged with ``name`` ``version``'s training run (fitted on its
    walk-forward OOS calls), or None when it has none. Fetches only calibration.json."""
    import mlflow

    from awet_dagster.model.pipeline import load_calibration

    mv = client(cfg).get_model_version(name, str(version))
    run_id = mv.run_id or mv.tags.get("run_id")
    with tempfile.TemporaryDirectory(prefix="awet-cal-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{PREPROCESSING_DIR}/{CALIBRATION_FILE}", dst_path=tmp)
        except Exception:  # noqa: BLE001 - mlflow raises several types for a missing artifact
            return None
        return load_calibration(Path(path).parent)


def load_champion(cfg, dest: Path | str | None = None) -> OnnxPredictor:
    """`OnnxPredictor` for `models:/<name>@champion` (ONNX Runtime, CPUExecutionProvider)."""
    return OnnxPredictor.load(download_model(cfg, None, dest))


def load_champion_pyfunc(cfg):
    """The champion as an mlflow pyfunc (ONNX flavour, CPU provider) - for tooling that
    speaks pyfunc; the live loop uses `load_champion`."""
    import mlflow

    client(cfg)
    return mlflow.pyfunc.load_model(f"models:/{cfg.mlflow.model_name}@{cfg.mlflow.champion_alias}")


def version_oos_sharpe(cfg, version: str | int) -> float | None:
    """The walk-forward median OOS Sharpe of `version`: metric `sharpe` of the training run it
    was registered from (`log_training_run` logs the walk-forward's overall metrics), or None."""
    import math

    c = client(cfg)
    mv = c.get_model_version(cfg.mlflow.model_name, str(version))
    run_id = mv.run_id or mv.tags.get("run_id")
    if not run_id:
        return None
    value = c.get_run(run_id).data.metrics.get("sharpe")
    return float(value) if value is not None and math.isfinite(float(value)) else None


def tag_version(cfg, version: str | int, tags: dict[str, str]) -> None:
    c = client(cfg)
    for k, v in tags.items():
        c.set_model_version_tag(cfg.mlflow.model_name, str(version), k, str(v))


def version_tags(cfg, version: str | int) -> dict[str, str]:
    return dict(client(cfg).get_model_version(cfg.mlflow.model_name, str(version)).tags)


def list_versions(cfg) -> list:
    """Every registered version of the model, oldest first (empty if none is registered)."""
    c = client(cfg)
    found = c.search_model_versions(f"name = '{cfg.mlflow.model_name}'")
    return sorted(found, key=lambda mv: int(mv.version))


def champion_walk_forward_run(cfg) -> str | None:
    """The walk-forward run behind the current champion (to compare a challenger fold by fold)."""
    champ = get_champion(cfg)
    if champ is None:
        return None
    return version_tags(cfg, champ.version).get("walk_forward_run_id")
