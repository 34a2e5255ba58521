"""`awet kill-switch status|trip|reset`: the operator's hand on the persistent kill switch."""
from __future__ import annotations

import getpass
from datetime import datetime, timezone

import typer
from rich.console import Console

console = Console()
kill_switch_app = typer.Typer(help="Inspect, trip or reset the persistent kill switch.", no_args_is_help=True)


def _store():
    from awet_dagster.config import load_config
    from awet_dagster.infra.endpoints import resolve_database_url
    from awet_dagster.storage.db import connect
    from awet_dagster.storage.trading import PostgresRiskStateStore

    cfg = load_config()
    conn = connect(resolve_database_url(cfg), connect_timeout_s=cfg.database.connect_timeout_s)
    return conn, PostgresRiskStateStore(conn)


@kill_switch_app.command("status")
def status() -> None:
    """Show whether the kill switch is tripped, why and since when."""
    conn, store = _store()
    with conn:
        state = store.get_kill_switch()
    if state.tripped:
        console.print(f"[red]TRIPPED[/red] at {state.tripped_at}: {state.reason}")
        raise typer.Exit(3)
    last = f" (last reset by {state.reset_by} at {state.reset_at}: {state.reset_reason})" if state.reset_by else ""
    console.print(f"[green]armed[/green] — trading allowed{last}")


@kill_switch_app.command("trip")
def trip(reason: str = typer.Option(..., "--reason", "-r", help="Why trading must stop.")) -> None:
    """Stop all new orders now (persists across restarts)."""
    from awet_dagster.risk.state import KillSwitchState
    from awet_dagster.storage.trading import record_audit

    now = datetime.now(timezone.utc)
    conn, store = _store()
    with conn:
        store.set_kill_switch(KillSwitchState(tripped=True, reason=f"operator: {reason}", tripped_at=now))
        record_audit(conn, actor=getpass.getuser(), action="kill_switch.trip", subject="kill_switch",
                     details={"reason": reason})
    console.print(f"[red]kill switch tripped[/red]: {reason}")


@kill_switch_app.command("reset")
def reset(
    reason: str = typer.Option(..., "--reason", "-r", help="Why it is safe to trade again."),
    operator: str = typer.Option(None, help="Who resets it (default: the current user)."),
) -> None:
    """Re-arm trading after a trip: an explicit, audited operator decision."""
    from awet_dagster.risk.state import KillSwitchState
    from awet_dagster.storage.trading import record_audit

    who = operator or getpass.getuser()
    now = datetime.now(timezone.utc)
    conn, store = _store()
    with conn:
        before = store.get_kill_switch()
        store.set_kill_switch(KillSwitchState(tripped=False, reset_by=who, reset_at=now, reset_reason=reason))
        record_audit(conn, actor=who, action="kill_switch.reset", subject="kill_switch",
                     details={"reason": reason, "was_tripped": before.tripped, "trip_reason": before.reason})
    console.print(f"[green]kill switch reset[/green] by {who}: {reason}")
