"""`awet model list|approve|promote|rollback`: the registry from the terminal (audited)."""
from __future__ import annotations

import getpass

import typer
from rich.console import Console
from rich.table import Table

console = Console()
model_app = typer.Typer(help="Registered model versions, approvals, promotion and rollback.", no_args_is_help=True)


def _ctx():
    from awet_dagster.config import load_config
    from awet_dagster.infra.endpoints import resolve_database_url
    from awet_dagster.storage.db import connect

    cfg = load_config()
    return cfg, connect(resolve_database_url(cfg), connect_timeout_s=cfg.database.connect_timeout_s)


@model_app.command("list")
def list_versions() -> None:
    """Every registered version with its gate result and the promotion decision."""
    from awet_dagster.config import load_config
    from awet_dagster.model import promotion
    from awet_dagster.model.registry import ModelRegistry

    cfg = load_config()
    registry = ModelRegistry(cfg)
    champion = registry.get_champion()
    decisions = {d.version: d for d in promotion.decide(cfg, registry)}
    table = Table(title=f"{cfg.mlflow.model_name} (champion: v{champion.version if champion else '-'})")
    for col in ("version", "gate", "parity", "approved by", "decision"):
        table.add_column(col)
    for mv in registry.list_versions():
        tags = dict(mv.tags)
        d = decisions.get(str(mv.version))
        table.add_row(str(mv.version), tags.get("gate_passed", "?"), tags.get("onnx_parity", "?"),
                      tags.get(promotion.APPROVED_TAG, "-"),
                      "champion" if champion and champion.version == str(mv.version) else (d.reason if d else "-"))
    console.print(table)


@model_app.command("approve")
def approve(version: str, note: str = typer.Option("", help="Why it is approved."),
            operator: str = typer.Option(None, help="Approver (default: current user).")) -> None:
    """Approve a gated version (needed when promotion.require_approval is true)."""
    from awet_dagster.model import promotion
    from awet_dagster.model.registry import ModelRegistry

    cfg, conn = _ctx()
    with conn:
        promotion.approve(cfg, ModelRegistry(cfg), conn, version, operator or getpass.getuser(), note)
    console.print(f"v{version} approved; the promotion sensor will promote it")


@model_app.command("promote")
def promote(version: str, reason: str = typer.Option(..., help="Why.")) -> None:
    """Promote an eligible version now (the same policy the sensor applies)."""
    from awet_dagster.model import promotion
    from awet_dagster.model.registry import ModelRegistry

    cfg, conn = _ctx()
    registry = ModelRegistry(cfg)
    decision = {d.version: d for d in promotion.decide(cfg, registry)}.get(version)
    if decision is None or decision.action != "promote":
        console.print(f"[red]v{version} is not eligible:[/red] {decision.reason if decision else 'unknown version'}")
        raise typer.Exit(1)
    with conn:
        ref = promotion.promote(cfg, registry, conn, version, getpass.getuser(), reason)
    console.print(f"champion is now v{ref.version}")


@model_app.command("rollback")
def rollback(reason: str = typer.Option(..., help="Why the current champion is withdrawn.")) -> None:
    """Restore the previous champion (the live inference service follows the alias)."""
    from awet_dagster.model import promotion
    from awet_dagster.model.registry import ModelRegistry

    cfg, conn = _ctx()
    try:
        with conn:
            ref = promotion.rollback(cfg, ModelRegistry(cfg), conn, getpass.getuser(), reason)
    except LookupError as exc:
        console.print(f"[red]cannot roll back:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"champion rolled back to v{ref.version}")
