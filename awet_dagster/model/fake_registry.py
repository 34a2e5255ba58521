"""``FakeModelRegistry``: ``ModelRegistry``'s twin in memory, for tests of what uses a registry
(the promotion policy, the champion source): the same versions, tags, alias moves and
rollback, the model files copied under a directory, no MLflow."""
from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from awet_dagster.model.registry import (
    CALIBRATION_FILE,
    MODEL_ARTIFACT,
    PREVIOUS_CHAMPION_TAG,
    ModelRef,
    ServesModels,
    VersionInfo,
    clean_metrics,
    registration_tags,
)


@dataclass
class _FakeVersion:
    run_id: str
    model_dir: Path
    tags: dict[str, str] = field(default_factory=dict)


class FakeModelRegistry(ServesModels):
    """``root``: where the logged model files are copied."""

    def __init__(self, root: Path | str, model_name: str = "awet-tft") -> None:
        self.root = Path(root)
        self.model_name = model_name
        self.runs: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, _FakeVersion] = {}
        self.champion: str | None = None
        self._ids = itertools.count(1)

    def log_training_run(self, result: Any, onnx_dir: Path | str, *, gate_checks: Sequence | None = None,
                         run_name: str | None = None) -> tuple[str, str]:
        run_id = f"fake-run-{next(self._ids)}"
        stored = self.root / run_id
        shutil.copytree(onnx_dir, stored)
        self.runs[run_id] = {"metrics": clean_metrics(result.overall), "dir": stored,
                             "gate": [asdict(g) for g in gate_checks or ()]}
        return run_id, f"runs:/{run_id}/{MODEL_ARTIFACT}"

    def register_version(self, run_id: str, model_uri: str, gate_checks: Sequence = ()) -> ModelRef:
        version = str(len(self.versions) + 1)
        self.versions[version] = _FakeVersion(run_id, self.runs[run_id]["dir"])
        self.tag_version(version, registration_tags(run_id, gate_checks))
        return ModelRef(self.model_name, version, run_id, f"models:/{self.model_name}/{version}")

    def get_champion(self) -> ModelRef | None:
        if self.champion is None:
            return None
        return ModelRef(self.model_name, self.champion, self.versions[self.champion].run_id,
                        f"models:/{self.model_name}@champion")

    def set_champion(self, version: str | int) -> ModelRef:
        version = str(version)
        if version not in self.versions:
            raise LookupError(f"{self.model_name} has no version {version}")
        if self.champion is not None and self.champion != version:
            self.tag_version(version, {PREVIOUS_CHAMPION_TAG: self.champion})
        self.champion = version
        return self.get_champion()  # type: ignore[return-value]

    def rollback_champion(self) -> ModelRef:
        if self.champion is None:
            raise LookupError(f"{self.model_name} has no champion to roll back")
        prev = self.versions[self.champion].tags.get(PREVIOUS_CHAMPION_TAG)
        if not prev:
            raise LookupError(f"{self.model_name} v{self.champion} has no previous champion recorded")
        self.champion = prev
        return self.get_champion()  # type: ignore[return-value]

    def download_model(self, ref: str | None = None, dest: Path | str | None = None) -> Path:
        version = self.champion if ref is None or "@" in ref else ref.rsplit("/", 1)[1]
        if version is None or version not in self.versions:
            raise LookupError(f"{self.model_name}: no model for {ref or 'the champion'}")
        dest = Path(dest or tempfile.mkdtemp(prefix="awet-model-"))
        shutil.copytree(self.versions[version].model_dir, dest, dirs_exist_ok=True)
        return dest

    def version_calibration(self, name: str, version: str | int) -> Any:
        from awet_dagster.model.pipeline import load_calibration  # the training package: torch (5.6 s)

        model_dir = self.versions[str(version)].model_dir
        return load_calibration(model_dir) if (model_dir / CALIBRATION_FILE).exists() else None

    def version_oos_sharpe(self, version: str | int) -> float | None:
        return self.runs[self.versions[str(version)].run_id]["metrics"].get("sharpe")

    def tag_version(self, version: str | int, tags: Mapping[str, Any]) -> None:
        self.versions[str(version)].tags.update({k: str(v) for k, v in tags.items()})

    def version_tags(self, version: str | int) -> dict[str, str]:
        return dict(self.versions[str(version)].tags)

    def list_versions(self) -> list[VersionInfo]:
        return [VersionInfo(v, dict(fv.tags), fv.run_id) for v, fv in sorted(self.versions.items(), key=lambda i: int(i[0]))]

    def champion_walk_forward_run(self) -> str | None:
        return None if self.champion is None else self.versions[self.champion].tags.get("walk_forward_run_id")
