"""The model lifecycle as assets: walk-forward → candidate (gated) → ONNX (parity) → MLflow.

The gate and the parity check are BLOCKING asset checks: a candidate that fails them cannot
feed `onnx_model` or `registered_model`, and the promotion sensor only ever sees versions
whose checks all passed.
"""
import base64
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    MetadataValue,
    Output,
    asset,
)

from resources.database import DatabaseResource
from resources.model_registry import ModelRegistryResource
from resources.settings import SettingsResource

GATE_CHECKS = {
    "median_oos_sharpe": "Median OOS Sharpe over all walk-forward folds ≥ gate.min_median_oos_sharpe.",
    "oos_win_rate": "Median OOS trade win rate ≥ gate.min_oos_win_rate.",
    "min_folds": "At least walk_forward.min_folds folds were evaluated.",
    "not_worse_than_champion": "Median OOS Sharpe on the folds shared with the champion is not lower.",
}
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Candidate:
    """What the candidate asset hands downstream (pickled by the IO manager)."""

    trained_blob: bytes  # cloudpickle of TrainedModel (pytorch-forecasting keeps local classes)
    walk_forward: object  # WalkForwardResult
    walk_forward_run_id: str
    gate_checks: tuple
    calibrator: object | None  # PlattCalibrator fitted on OOS outcomes
    parity_windows: object  # numpy windows held out for the ONNX parity check

    @property
    def trained(self):
        import cloudpickle

        return cloudpickle.loads(self.trained_blob)


def _num(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _png_md(title: str, png: bytes) -> str:
    return f"**{title}**\n\n![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"


def build_model_assets(bar_type: str):
    prefix = [bar_type]
    group = f"{bar_type}_model"

    @asset(
        key=AssetKey([*prefix, "walk_forward"]),
        group_name=group,
        deps=[AssetKey([*prefix, "features"])],
        description=(
            "Purged, embargoed walk-forward evaluation: a fresh TFT per fold, OOS predictions turned "
            "into orders by the live loop's signal/risk/execution code, costs included; baselines "
            "buy-and-hold and Lean alphas only; deflated Sharpe and PBO. Stored in walk_forward_results."
        ),
        kinds={"pytorch", "postgres"},
    )
    def walk_forward(context: AssetExecutionContext, database: DatabaseResource, settings: SettingsResource):
        from awet_dagster.evaluation.walk_forward import run_walk_forward
        from awet_dagster.model.pipeline import load_training_data, store_walk_forward

        cfg = settings.config
        with database.connect() as conn:
            features, bars = load_training_data(conn, cfg, bar_type)

        def progress(event: dict) -> None:
            if event.get("stage") == "fold_done":
                context.log.info(
                    "fold %d/%d done in %.1fs: sharpe=%.2f win_rate=%.2f hit_rate=%.3f",
                    event["fold"] + 1, event["folds"], event.get("seconds", 0.0), event.get("sharpe", float("nan")),
                    event.get("win_rate", float("nan")), event.get("hit_rate", float("nan")),
                )

        result = run_walk_forward(features, bars, cfg, progress=progress, model_version=f"candidate-{context.run_id[:8]}")
        with database.connect() as conn:
            store_walk_forward(conn, context.run_id, result, cfg.mlflow.model_name)
        o = result.overall
        plots = "\n\n".join(_png_md(f"fold {f.fold}: OOS equity", result.equity_png(i)) for i, f in enumerate(result.folds))
        return Output(
            result,
            metadata={
                "folds": len(result.folds),
                "median_oos_sharpe": _num(o.get("sharpe")),
                "deflated_sharpe": _num(o.get("dsr")),
                "pbo": _num(o.get("pbo")),
                "oos_win_rate": _num(o.get("win_rate")),
                "q50_hit_rate": _num(o.get("hit_rate")),
                "buy_hold_median_sharpe": _num(o.get("buy_hold_sharpe")),
                "alphas_only_median_sharpe": _num(o.get("alphas_sharpe")),
                "data_hash": result.data_hash,
                "per_fold": MetadataValue.md(result.frame().to_pandas().to_markdown(index=False, floatfmt=".3f")),
                "equity_curves": MetadataValue.md(plots),
            },
        )

    candidate_key = AssetKey([*prefix, "tft_candidate"])

    @asset(
        key=candidate_key,
        group_name=group,
        ins={"walk_forward": AssetIn(key=AssetKey([*prefix, "walk_forward"]))},
        check_specs=[AssetCheckSpec(n, asset=candidate_key, description=d, blocking=True) for n, d in GATE_CHECKS.items()],
        description=(
            "The candidate TFT trained on the whole research window (before data.cutoff), with the "
            "promotion gate as blocking checks. Platt calibration fitted on the walk-forward OOS outcomes."
        ),
        kinds={"pytorch"},
    )
    def tft_candidate(context: AssetExecutionContext, database: DatabaseResource, settings: SettingsResource,
                      model_registry: ModelRegistryResource,
                      walk_forward) -> Iterator:
        import cloudpickle

        from awet_dagster.evaluation.walk_forward import evaluate_gate
        from awet_dagster.model.pipeline import (
            fit_calibrator_oos,
            held_out_windows,
            load_training_data,
            stored_folds,
            train_final_model,
        )
        cfg = settings.config
        with database.connect() as conn:
            features, bars = load_training_data(conn, cfg, bar_type)
            champion_run = model_registry.for_config(cfg).champion_walk_forward_run()
            champion = stored_folds(conn, champion_run) if champion_run else None
        trained = train_final_model(
            features, bars, cfg,
            progress=lambda e: context.log.info("epoch %s: %s", e.get("epoch"), {k: v for k, v in e.items() if k != "epoch"})
            if e.get("stage") == "train_epoch" else None,
        )
        checks = tuple(evaluate_gate(walk_forward, cfg.gate, champion))
        calibrator, n_cal = fit_calibrator_oos(walk_forward, bars)
        wf_run_id = context.instance.get_latest_materialization_event(AssetKey([*prefix, "walk_forward"])).run_id
        yield Output(
            Candidate(cloudpickle.dumps(trained), walk_forward, wf_run_id, checks, calibrator,
                      held_out_windows(features, bars, cfg)),
            metadata={
                "train_windows": trained.n_train_windows,
                "epochs": len(trained.history),
                "train_seconds": round(trained.seconds, 1),
                "samples_per_second": _num(round(trained.samples_per_second, 1)),
                "gate_passed": all(c.passed for c in checks),
                "calibration": MetadataValue.json(
                    {"a": calibrator.a, "b": calibrator.b, "oos_samples": n_cal} if calibrator else {"fitted": False}
                ),
            },
        )
        for c in checks:
            yield AssetCheckResult(
                asset_key=candidate_key, check_name=c.name, passed=c.passed, severity=AssetCheckSeverity.ERROR,
                description=c.description, metadata={"value": _num(c.value), "threshold": _num(c.threshold)},
            )

    onnx_key = AssetKey([*prefix, "onnx_model"])

    @asset(
        key=onnx_key,
        group_name=group,
        ins={"tft_candidate": AssetIn(key=candidate_key)},
        check_specs=[AssetCheckSpec("onnx_parity", asset=onnx_key, blocking=True,
                                    description=f"ONNX Runtime output equals torch within {PARITY_TOLERANCE} "
                                                "on held-out windows.")],
        description="The candidate exported to ONNX (opset 17, dynamic batch) with its preprocessing "
                    "artifact (feature list, scalers, lengths, calibration) in one directory.",
        kinds={"onnx"},
    )
    def onnx_model(context: AssetExecutionContext, settings: SettingsResource, tft_candidate: Candidate) -> Iterator:
        from awet_dagster.model.onnx_export import check_parity, export_onnx
        from awet_dagster.model.pipeline import save_calibration

        cfg = settings.config
        directory = (cfg.paths.home / "models" / bar_type / context.run_id).resolve()
        trained = tft_candidate.trained
        path = export_onnx(trained, directory)
        save_calibration(directory, tft_candidate.calibrator)
        diff = check_parity(trained, path, [tft_candidate.parity_windows])
        yield Output(str(directory), metadata={"path": MetadataValue.path(str(path)), "parity_max_abs_diff": float(diff),
                                                "size_kib": round(path.stat().st_size / 1024, 1)})
        yield AssetCheckResult(
            asset_key=onnx_key, check_name="onnx_parity", passed=bool(diff <= PARITY_TOLERANCE),
            severity=AssetCheckSeverity.ERROR, metadata={"max_abs_diff": float(diff), "tolerance": PARITY_TOLERANCE},
        )

    @asset(
        key=AssetKey([*prefix, "registered_model"]),
        group_name=group,
        ins={"onnx_model": AssetIn(key=onnx_key), "tft_candidate": AssetIn(key=candidate_key)},
        description="An MLflow run (nested runs per fold, params, metrics, data hash, code version, the ONNX "
                    "model) and a new version of the registered model tagged with its gate results. The "
                    "promotion sensor decides whether it becomes the champion.",
        kinds={"mlflow"},
    )
    def registered_model(context: AssetExecutionContext, settings: SettingsResource,
                         model_registry: ModelRegistryResource, onnx_model: str, tft_candidate: Candidate):
        registry = model_registry.for_config(settings.config)
        run_id, model_uri = registry.log_training_run(tft_candidate.walk_forward, Path(onnx_model),
                                                      gate_checks=list(tft_candidate.gate_checks))
        ref = registry.register_version(run_id, model_uri, list(tft_candidate.gate_checks))
        registry.tag_version(ref.version, {
            "walk_forward_run_id": tft_candidate.walk_forward_run_id,
            "onnx_parity": "pass",  # this asset only runs when the blocking parity check passed
            "bar_type": bar_type,
            "dagster_run_id": context.run_id,
        })
        context.log.info("registered %s version %s (run %s)", ref.name, ref.version, run_id)
        return Output(ref.version, metadata={"model": ref.name, "version": ref.version, "mlflow_run_id": run_id,
                                             "uri": ref.model_uri})

    return [walk_forward, tft_candidate, onnx_model, registered_model]
