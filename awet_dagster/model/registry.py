"""The model registry (no Dagster): ``ModelRegistry`` over MLflow.

``ModelRegistry`` logs a training run with a nested run per walk-forward fold, logs the ONNX
model with its preprocessing (and calibration) beside it, registers ``awet-tft`` versions
tagged with their gate results, and moves the ``champion`` alias (with rollback). It holds
one ``MlflowClient`` bound to the configured tracking and registry URIs and uses only that
client: it never sets MLflow's process-wide tracking URI, registry URI or experiment, so two
registries (two configurations, a test beside a run) do not see each other's stores.

``download_model`` puts model.onnx, preprocessing.json (and calibration.json) in ONE
directory, which ``OnnxPredictor.load(dir)`` serves. Its twin for tests is
``awet_dagster.model.fake_registry.FakeModelRegistry``.
MLflow is imported inside the methods that talk to it (4.8 s cold, docs/conventions.md).
"""
from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from awet_dagster.config import AwetConfig
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


@dataclass(frozen=True)
class VersionInfo:
    """A registered version as the promotion policy reads it."""

    version: str
    tags: Mapping[str, str]
    run_id: str


def git_sha(repo: Path | str | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).resolve().parents[2],
            capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def clean_metrics(d: Mapping[str, Any]) -> dict[str, float]:
    return {k.replace("@", "_"): float(v) for k, v in d.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}


def _param(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)


def registration_tags(run_id: str, gate_checks: Sequence) -> dict[str, str]:
    """A new version's tags: its run, whether every gate check passed, each check's result."""
    tags = {"run_id": run_id,
            "gate_passed": str(all(g.passed for g in gate_checks)).lower() if gate_checks else "unknown"}
    for g in gate_checks:
        tags[f"gate.{g.name}"] = f"{'pass' if g.passed else 'fail'} value={g.value:.6g} threshold={g.threshold:.6g}"
    return tags


class ServesModels:
    """Loading a served model from ``download_model`` (shared by the registry and its twin)."""

    model_name: str

    def download_model(self, ref: str | None = None, dest: Path | str | None = None) -> Path:
        raise NotImplementedError

    def load_champion(self, dest: Path | str | None = None) -> OnnxPredictor:
        """``OnnxPredictor`` for the champion (ONNX Runtime, CPUExecutionProvider); its files are
        kept in ``dest`` when given, else downloaded to a temporary directory removed after loading."""
        return self._load(None, dest)

    def load_version(self, version: str | int) -> OnnxPredictor:
        """``OnnxPredictor`` for ``version`` (pinned: the alias may move meanwhile)."""
        return self._load(f"models:/{self.model_name}/{version}", None)

    def _load(self, ref: str | None, dest: Path | str | None) -> OnnxPredictor:
        if dest is not None:
            return OnnxPredictor.load(self.download_model(ref, dest))
        # The ONNX Runtime session and the preprocessing are read into memory by ``load``: the
        # files are not needed afterwards (a live inference service loads a model per promotion;
        # each load left a directory in /tmp before).
        with tempfile.TemporaryDirectory(prefix="awet-model-") as tmp:
            return OnnxPredictor.load(self.download_model(ref, tmp))


class ModelRegistry(ServesModels):
    """The MLflow registry of one configuration (``cfg.mlflow``, ``cfg.mlflow_tracking_uri``,
    ``cfg.mlflow_artifact_root``)."""

    def __init__(self, cfg: AwetConfig) -> None:
        self.tracking_uri = cfg.mlflow_tracking_uri
        self.registry_uri = cfg.mlflow.registry_uri or self.tracking_uri
        self.artifact_root = Path(cfg.mlflow_artifact_root)
        self.experiment = cfg.mlflow.experiment
        self.model_name = cfg.mlflow.model_name
        self.alias = cfg.mlflow.champion_alias
        self._client: Any = None
        self._experiment_id: str | None = None

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` of the configured stores (a local SQLite store's folder is created)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self.tracking_uri.startswith("sqlite:///"):
                Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    def experiment_id(self) -> str:
        """The experiment's id; created (artifacts under the configured root) when missing."""
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                self.artifact_root.mkdir(parents=True, exist_ok=True)
                self._experiment_id = self.client.create_experiment(self.experiment,
                                                                    artifact_location=self.artifact_root.as_uri())
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    # ------------------------------------------------------------------ runs and versions
    def _log(self, run_id: str, params: Mapping[str, Any] = {}, metrics: Mapping[str, Any] = {},
             step: int = 0) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, params=[Param(k, _param(v)) for k, v in params.items()],
                              metrics=[Metric(k, v, now, step) for k, v in clean_metrics(metrics).items()])

    def log_training_run(self, result: Any, onnx_dir: Path | str, *, gate_checks: Sequence | None = None,
                         run_name: str | None = None) -> tuple[str, str]:
        """Log ``result`` (WalkForwardResult) and the exported model in ``onnx_dir``
        (model.onnx + preprocessing.json [+ calibration.json]). Returns (run_id, model_uri)."""
        import mlflow.onnx
        import onnx

        c, exp, onnx_dir = self.client, self.experiment_id(), Path(onnx_dir)
        run = c.create_run(exp, run_name=run_name or f"walk-forward-{result.bar_type}",
                           tags={"data_hash": result.data_hash, "code_version": git_sha(), "bar_type": result.bar_type})
        run_id = run.info.run_id
        try:
            self._log(run_id, result.params, result.overall)
            for i, f in enumerate(result.folds):
                child = c.create_run(exp, run_name=f"fold-{f.fold}", tags={"mlflow.parentRunId": run_id}).info.run_id
                self._log(child, {"fold": f.fold, "train_start": f.train_start, "train_end": f.train_end,
                                  "test_start": f.test_start, "test_end": f.test_end},
                          {**f.metrics, "n_train_windows": f.n_train_windows, "n_test_windows": f.n_test_windows})
                for h in f.history:
                    self._log(child, metrics={"train_loss": h.get("train_loss"), "val_loss": h.get("val_loss")},
                              step=int(h.get("epoch", 0)))
                with tempfile.TemporaryDirectory() as tmp:
                    png = Path(tmp) / f"equity_fold_{f.fold}.png"
                    png.write_bytes(result.equity_png(i))
                    c.log_artifact(child, str(png), artifact_path="equity")
                c.set_terminated(child)
            if gate_checks:
                c.log_dict(run_id, [asdict(g) for g in gate_checks], "gate.json")
            with tempfile.TemporaryDirectory() as tmp:
                saved = Path(tmp) / MODEL_ARTIFACT
                mlflow.onnx.save_model(onnx.load(str(onnx_dir / MODEL_FILE)), str(saved),
                                       onnx_execution_providers=["CPUExecutionProvider"],
                                       save_as_external_data=False)  # one self-contained model.onnx
                c.log_artifacts(run_id, str(saved), artifact_path=MODEL_ARTIFACT)
            c.log_artifact(run_id, str(onnx_dir / PREPROCESSING_FILE), artifact_path=PREPROCESSING_DIR)
            if (onnx_dir / CALIBRATION_FILE).exists():
                c.log_artifact(run_id, str(onnx_dir / CALIBRATION_FILE), artifact_path=PREPROCESSING_DIR)
        except BaseException:
            c.set_terminated(run_id, "FAILED")
            raise
        c.set_terminated(run_id)
        return run_id, f"runs:/{run_id}/{MODEL_ARTIFACT}"

    def register_version(self, run_id: str, model_uri: str, gate_checks: Sequence = ()) -> ModelRef:
        """A new version of the model, tagged with each gate check and the run."""
        from mlflow.exceptions import MlflowException

        c, name = self.client, self.model_name
        try:
            c.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = model_uri
        if model_uri.startswith("runs:/"):  # the run's artifact location, not a URI needing a global tracking store
            rid, _, path = model_uri.removeprefix("runs:/").partition("/")
            source = f"{c.get_run(rid).info.artifact_uri}/{path}"
        mv = c.create_model_version(name, source, run_id=run_id)
        self.tag_version(mv.version, registration_tags(run_id, gate_checks))
        return ModelRef(name, str(mv.version), run_id, f"models:/{name}/{mv.version}")

    # ------------------------------------------------------------------ the champion alias
    def get_champion(self) -> ModelRef | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.model_name, self.alias)
        except MlflowException:
            return None
        return ModelRef(self.model_name, str(mv.version), mv.run_id or mv.tags.get("run_id", ""),
                        f"models:/{self.model_name}@{self.alias}")

    def set_champion(self, version: str | int) -> ModelRef:
        """Point the champion alias at ``version``, remembering the previous champion on the
        new version (tag ``previous_champion``) so ``rollback_champion`` can undo it."""
        prev = self.get_champion()
        if prev is not None and prev.version != str(version):
            self.tag_version(version, {PREVIOUS_CHAMPION_TAG: prev.version})
        self.client.set_registered_model_alias(self.model_name, self.alias, str(version))
        return self.get_champion()  # type: ignore[return-value]

    def rollback_champion(self) -> ModelRef:
        """Move the champion alias back to the version it replaced."""
        cur = self.get_champion()
        if cur is None:
            raise LookupError(f"{self.model_name} has no {self.alias} to roll back")
        prev = self.version_tags(cur.version).get(PREVIOUS_CHAMPION_TAG)
        if not prev:
            raise LookupError(f"{self.model_name} v{cur.version} has no previous champion recorded")
        self.client.set_registered_model_alias(self.model_name, self.alias, prev)
        return self.get_champion()  # type: ignore[return-value]

    # ------------------------------------------------------------------ reading versions
    def _version(self, ref: str | None) -> Any:
        """The model version of ``ref``: None (the champion), ``models:/<name>@<alias>`` or
        ``models:/<name>/<version>``."""
        uri = ref or f"models:/{self.model_name}@{self.alias}"
        if "@" in uri:
            name, alias = uri.removeprefix("models:/").split("@", 1)
            return self.client.get_model_version_by_alias(name, alias)
        name, version = uri.removeprefix("models:/").split("/", 1)
        return self.client.get_model_version(name, version)

    def _run_artifact(self, run_id: str, name: str, dest: Path) -> Path | None:
        try:
            return Path(self.client.download_artifacts(run_id, f"{PREPROCESSING_DIR}/{name}", str(dest)))
        except Exception:  # noqa: BLE001 - mlflow raises several types for a missing artifact
            return None

    def download_model(self, ref: str | None = None, dest: Path | str | None = None) -> Path:
        """model.onnx + preprocessing.json (+ calibration.json) of ``ref`` (default: the champion) in one dir."""
        import mlflow.artifacts

        mv = self._version(ref)
        dest = Path(dest or tempfile.mkdtemp(prefix="awet-model-"))
        dest.mkdir(parents=True, exist_ok=True)
        source = self.client.get_model_version_download_uri(mv.name, mv.version)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest / "mlflow_model"),
                                                         tracking_uri=self.tracking_uri))
        (dest / MODEL_FILE).write_bytes((local / MODEL_FILE).read_bytes())
        run_id = mv.run_id or mv.tags.get("run_id")
        pre = self._run_artifact(run_id, PREPROCESSING_FILE, dest / "run")
        if pre is None:
            raise FileNotFoundError(f"{mv.name} v{mv.version}: run {run_id} has no {PREPROCESSING_FILE}")
        (dest / PREPROCESSING_FILE).write_text(pre.read_text())
        cal = self._run_artifact(run_id, CALIBRATION_FILE, dest / "run")  # models before calibration have none
        if cal is not None:
            (dest / CALIBRATION_FILE).write_text(cal.read_text())
        return dest

    def version_calibration(self, name: str, version: str | int) -> Any:
        """The Platt calibrator logged with ``name`` ``version``'s training run (fitted on its
        walk-forward OOS calls), or None when it has none. Fetches only calibration.json."""
        from awet_dagster.model.pipeline import load_calibration  # the training package: torch (5.6 s)

        mv = self.client.get_model_version(name, str(version))
        with tempfile.TemporaryDirectory(prefix="awet-cal-") as tmp:
            path = self._run_artifact(mv.run_id or mv.tags.get("run_id"), CALIBRATION_FILE, Path(tmp))
            return None if path is None else load_calibration(path.parent)

    def version_oos_sharpe(self, version: str | int) -> float | None:
        """The walk-forward median OOS Sharpe of ``version``: metric ``sharpe`` of the training
        run it was registered from, or None."""
        mv = self.client.get_model_version(self.model_name, str(version))
        run_id = mv.run_id or mv.tags.get("run_id")
        if not run_id:
            return None
        value = self.client.get_run(run_id).data.metrics.get("sharpe")
        return float(value) if value is not None and math.isfinite(float(value)) else None

    def tag_version(self, version: str | int, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(self.model_name, str(version), k, str(v))

    def version_tags(self, version: str | int) -> dict[str, str]:
        return dict(self.client.get_model_version(self.model_name, str(version)).tags)

    def list_versions(self) -> list[VersionInfo]:
        """Every registered version of the model, oldest first (empty if none is registered)."""
        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        return [VersionInfo(str(mv.version), dict(mv.tags), mv.run_id or "")
                for mv in sorted(found, key=lambda mv: int(mv.version))]

    def champion_walk_forward_run(self) -> str | None:
        """The walk-forward run behind the current champion (to compare a challenger fold by fold)."""
        champ = self.get_champion()
        return None if champ is None else self.version_tags(champ.version).get("walk_forward_run_id")
