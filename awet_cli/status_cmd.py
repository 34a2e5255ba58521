"""`awet status`: one screen for the operator.

Infrastructure (endpoints, alive, schema revision), the champion model (MLflow, when a
registry exists), the newest bar per symbol (``bars``), the kill switch (``risk_state``) and
the open positions (``positions``). Every part is gathered on its own and a failing part is
shown as unavailable instead of aborting the rest: this is the command run when things break.

Register: ``app.command("status")(status_command)``. Exit code 0 when the database answered,
1 otherwise (the kill switch state is unknown then).
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _infra(cfg: Any) -> dict[str, Any]:
    from awet_dagster.infra import infra_status
    from awet_dagster.infra.probes import broker_reachable

    st = infra_status(cfg)
    br = st["broker"]
    if br.get("bootstrap") and br.get("alive") is None:  # external: probe it (bounded)
        br["alive"] = broker_reachable(br["bootstrap"], timeout_s=2.0)
    return st


def _champion(cfg: Any) -> dict[str, Any]:
    """Champion from the MLflow registry; never creates a registry that does not exist."""
    uri = cfg.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return {"state": "no registry", "uri": uri}
    try:
        from awet_dagster.model.registry import ModelRegistry
    except ImportError as exc:  # mlflow not installed in this environment
        return {"state": f"mlflow unavailable ({exc.name})"}
    try:
        ref = ModelRegistry(cfg).get_champion()
    except Exception as exc:  # noqa: BLE001 - registry unreachable, schema mismatch...
        return {"state": f"unavailable ({type(exc).__name__}: {exc})"}
    if ref is None:
        return {"state": "no champion", "model": cfg.mlflow.model_name}
    return {"state": "ok", "model": ref.name, "version": ref.version, "run_id": ref.run_id}


def _database(cfg: Any) -> dict[str, Any]:
    from awet_dagster.infra.endpoints import resolve_database_url
    from awet_dagster.storage.db import connect, current_revision, head_revision
    from awet_dagster.storage.trading import PostgresRiskStateStore

    url = resolve_database_url(cfg)
    out: dict[str, Any] = {}
    # statement timeout: status must never hang on a big table or a lock
    with connect(url, connect_timeout_s=cfg.database.connect_timeout_s, statement_timeout_ms=10_000) as conn:
        out["kill_switch"] = PostgresRiskStateStore(conn).get_kill_switch()
        out["bars"] = conn.execute(
            "SELECT symbol, bar_type, max(ts) FROM bars GROUP BY symbol, bar_type ORDER BY symbol, bar_type"
        ).fetchall()
        out["positions"] = conn.execute(
            "SELECT symbol, qty, avg_price, opened_at FROM positions WHERE qty <> 0 ORDER BY symbol"
        ).fetchall()
        # Dead letters recorded by the live services, last 24 h and in all (the DLQ topics hold them).
        out["dead_letters"] = conn.execute(
            "SELECT topic, service, reason, count(*) FILTER (WHERE ts > now() - interval '24 hours'), count(*), "
            "max(ts) FROM dead_letters GROUP BY topic, service, reason ORDER BY 4 DESC, 5 DESC LIMIT 20"
        ).fetchall()
    out["revision"] = current_revision(url, connect_timeout_s=cfg.database.connect_timeout_s)
    out["head"] = head_revision()
    return out


def gather(cfg: Any) -> dict[str, Any]:
    """Everything `awet status` shows; each part is a value or ``{"error": text}``."""
    result: dict[str, Any] = {}
    for name, fn in (("infra", _infra), ("champion", _champion), ("database", _database)):
        try:
            result[name] = fn(cfg)
        except Exception as exc:  # noqa: BLE001 - show what is known, mark the rest
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


def _age(ts: datetime, now: datetime) -> str:
    secs = max(0, int((now - ts).total_seconds()))
    days, rem = divmod(secs, 86400)
    hours, rem = divmod(rem, 3600)
    minutes = rem // 60
    return f"{days}d {hours}h" if days else f"{hours}h {minutes}m" if hours else f"{minutes}m"


def render(status: dict[str, Any], out: Console, now: datetime | None = None) -> int:
    now = now or datetime.now(timezone.utc)
    alive = {True: "[green]up[/green]", False: "[red]down[/red]", None: "-"}

    infra = status["infra"]
    if "error" in infra:
        out.print(f"[red]infrastructure: unavailable[/red] ({infra['error']})")
    else:
        t = Table(title=f"Infrastructure (home {infra['home']})")
        for col in ("component", "mode", "endpoint", "state"):
            t.add_column(col, overflow="fold")
        pg, br = infra["postgres"], infra["broker"]
        t.add_row("postgres", pg["mode"], pg.get("url") or "-", alive[pg.get("alive")])
        t.add_row("broker", br["mode"], br.get("bootstrap") or "-", alive[br.get("alive")])
        out.print(t)

    db = status["database"]
    if "error" in db:
        out.print(f"[red]database: unavailable[/red] ({db['error']}) — try `awet infra up`")
    else:
        mark = "[green](head)[/green]" if db["revision"] == db["head"] else f"[yellow](head is {db['head']})[/yellow]"
        out.print(f"schema revision: {db['revision'] or 'none'} {mark}")

    ch = status["champion"]
    if "error" in ch:
        out.print(f"champion: [yellow]unavailable[/yellow] ({ch['error']})")
    elif ch["state"] == "ok":
        out.print(f"champion: [green]{ch['model']} v{ch['version']}[/green] (run {ch['run_id'] or '?'})")
    else:
        out.print(f"champion: [yellow]{ch['state']}[/yellow]")

    if "error" in db:
        return 1
    ks = db["kill_switch"]
    if ks.tripped:
        out.print(f"kill switch: [red]TRIPPED[/red] at {ks.tripped_at}: {ks.reason}")
    else:
        out.print("kill switch: [green]armed[/green] (trading allowed)")

    if db["bars"]:
        t = Table(title="Last bar per symbol")
        for col in ("symbol", "bar type", "last bar (UTC)", "age"):
            t.add_column(col)
        for sym, bar_type, ts in db["bars"]:
            t.add_row(sym, bar_type, ts.strftime("%Y-%m-%d %H:%M"), _age(ts, now))
        out.print(t)
    else:
        out.print("bars: none stored yet")

    letters = db.get("dead_letters") or []
    if letters:
        t = Table(title="Dead letters (dead_letters table; the messages are on <topic>.dlq)")
        for col in ("topic", "service", "reason", "last 24 h", "total", "last"):
            t.add_column(col)
        for topic, service, reason, day, total, last in letters:
            t.add_row(topic, service or "-", reason, str(day), str(total), _age(last, now) + " ago")
        out.print(t)
    else:
        out.print("dead letters: none recorded")

    if db["positions"]:
        t = Table(title="Open positions")
        for col in ("symbol", "qty", "avg price", "opened"):
            t.add_column(col)
        for sym, qty, avg, opened in db["positions"]:
            t.add_row(sym, f"{qty:g}", f"{avg:.2f}", opened.strftime("%Y-%m-%d %H:%M") if opened else "-")
        out.print(t)
    else:
        out.print("positions: none open")
    return 0


def status_command() -> None:
    """Infra, schema, champion model, last bar per symbol, kill switch, open positions."""
    from awet_dagster.config import ConfigError, load_config

    try:
        cfg = load_config()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(render(gather(cfg), console))
