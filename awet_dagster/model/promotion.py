"""Promotion policy: which registered versions may become the champion, and the act itself.

A version is eligible when its gate passed (tag `gate_passed=true`, set at registration from
the blocking checks), its ONNX parity passed, it is newer than the current champion, and —
when `promotion.require_approval` — an operator approved it (tag `approved_by`). Every
promotion, approval and rollback is written to the audit log; promotions and rollbacks also
rewrite the champion metrics textfile (`<AWET_HOME>/metrics/champion.prom`: champion version,
its walk-forward OOS Sharpe, write time) that `python -m live.metrics` serves to Prometheus.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from awet_dagster.config import AwetConfig
from awet_dagster.model.registry import ModelRef, ModelRegistry
from awet_dagster.observability.textfile import metrics_dir, write_champion_metrics
from awet_dagster.storage.trading import record_audit

log = logging.getLogger("awet.model.promotion")

APPROVED_TAG = "approved_by"


@dataclass(frozen=True)
class PromotionDecision:
    version: str
    action: Literal["promote", "await_approval", "reject"]
    reason: str


def decide(cfg: AwetConfig, registry: ModelRegistry, after_version: int = 0) -> list[PromotionDecision]:
    """Decisions for every version newer than `after_version` (the sensor's cursor)."""
    champion = registry.get_champion()
    champ_v = int(champion.version) if champion else 0
    out = []
    for mv in registry.list_versions():
        v = int(mv.version)
        if v <= after_version:
            continue
        tags = dict(mv.tags)
        if tags.get("gate_passed") != "true":
            failed = sorted(k.removeprefix("gate.") for k, t in tags.items() if k.startswith("gate.") and t.startswith("fail"))
            out.append(PromotionDecision(str(v), "reject", f"gate failed: {', '.join(failed) or 'unknown'}"))
        elif tags.get("onnx_parity") != "pass":
            out.append(PromotionDecision(str(v), "reject", "ONNX parity not verified"))
        elif v <= champ_v:
            out.append(PromotionDecision(str(v), "reject", f"not newer than champion v{champ_v}"))
        elif cfg.promotion.require_approval and not tags.get(APPROVED_TAG):
            out.append(PromotionDecision(str(v), "await_approval", "waiting for operator approval"))
        else:
            who = f" (approved by {tags[APPROVED_TAG]})" if tags.get(APPROVED_TAG) else ""
            out.append(PromotionDecision(str(v), "promote", f"every check passed{who}"))
    return out


def promote(cfg: AwetConfig, registry: ModelRegistry, conn, version: str, actor: str, reason: str) -> ModelRef:
    before = registry.get_champion()
    ref = registry.set_champion(version)
    record_audit(conn, actor=actor, action="model.promote", subject=f"{cfg.mlflow.model_name}:v{version}",
                 details={"reason": reason, "previous_champion": before.version if before else None})
    write_champion_textfile(cfg, registry, ref)
    return ref


def write_champion_textfile(cfg: AwetConfig, registry: ModelRegistry, ref: ModelRef) -> None:
    """Best effort: the champion metrics for Prometheus (a failure is logged, never raised: the
    alias has moved already, and the textfile's age panel shows it went stale)."""
    try:
        write_champion_metrics(metrics_dir(cfg), ref.name, ref.version, registry.version_oos_sharpe(ref.version))
    except Exception:  # noqa: BLE001
        log.exception("could not write the champion metrics textfile for %s v%s", ref.name, ref.version)


def approve(cfg: AwetConfig, registry: ModelRegistry, conn, version: str, operator: str, note: str = "") -> None:
    if not operator:
        raise ValueError("approval needs the operator's name")
    tags = registry.version_tags(version)
    if tags.get("gate_passed") != "true":
        raise ValueError(f"version {version} did not pass the gate; it cannot be approved")
    registry.tag_version(version, {APPROVED_TAG: operator})
    record_audit(conn, actor=operator, action="model.approve", subject=f"{cfg.mlflow.model_name}:v{version}",
                 details={"note": note})


def rollback(cfg: AwetConfig, registry: ModelRegistry, conn, actor: str, reason: str) -> ModelRef:
    before = registry.get_champion()
    ref = registry.rollback_champion()
    record_audit(conn, actor=actor, action="model.rollback", subject=cfg.mlflow.model_name,
                 details={"reason": reason, "from": before.version if before else None, "to": ref.version})
    write_champion_textfile(cfg, registry, ref)
    return ref
