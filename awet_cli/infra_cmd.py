"""`awet infra up|status|down`: local PostgreSQL + Kafka-protocol broker.

Imports of the infrastructure code, SQLAlchemy/Alembic and confluent_kafka happen inside
the commands so that `awet --help` stays fast.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from awet_cli._common import config_or_exit as _config

console = Console()
infra_app = typer.Typer(
    help=(
        "Local infrastructure: embedded PostgreSQL and an embedded broker (Apache Kafka when "
        "Java 17+ is present, else tansu; infra.broker) under .awet/, or the external "
        "DATABASE_URL / KAFKA_BOOTSTRAP when set. The servers stay up until `awet infra down`."
    ),
    no_args_is_help=True,
)


def _fail(what: str, exc: Exception) -> None:
    console.print(f"[red]{what} failed:[/red] {exc}")
    raise typer.Exit(1) from None


def bring_up(cfg, out: Console, *, migrate: bool = True, topics: bool = True):
    """Start (or reuse) the servers, migrate, create topics; raise on the first failure.

    Shared by `awet infra up` and `awet run`.
    """
    from awet_dagster.infra import infra_up
    from awet_dagster.infra.endpoints import redact_url
    from awet_kafka.admin import admin_ready

    ep = infra_up(cfg, broker_ready=admin_ready, progress=out.print)
    for notice in ep.notices:
        out.print(f"[yellow]{notice}[/yellow]")
    table = Table(title="AWET infrastructure")
    table.add_column("component", style="cyan")
    table.add_column("endpoint", overflow="fold")
    table.add_column("state", style="magenta")
    for name, endpoint in (("postgres", redact_url(ep.database_url)), (f"broker ({ep.broker_kind})", ep.kafka_bootstrap)):
        entry = ep.started.get(name.split(" ")[0])
        if entry is None:
            state = "external"
        else:
            state = f"{'reused' if entry.get('reused') else 'started'} (pid {entry['pid']})"
        table.add_row(name, endpoint, state)
    out.print(table)
    if migrate:
        from awet_dagster.storage.db import current_revision, upgrade

        try:
            upgrade(ep.database_url, connect_timeout_s=cfg.database.connect_timeout_s)
        except Exception as exc:
            raise RuntimeError(f"database migration failed: {exc}") from exc
        out.print(f"schema at revision [green]{current_revision(ep.database_url)}[/green]")
    if topics:
        from awet_kafka.admin import ensure_configured_topics

        try:
            outcome = ensure_configured_topics(
                ep.kafka_bootstrap, cfg.kafka, timeout_s=float(cfg.infra.broker_start_timeout_s)
            )
        except Exception as exc:
            raise RuntimeError(f"topic creation failed: {exc}") from exc
        created = sorted(n for n, o in outcome.items() if o == "created")
        updated = sorted(n for n, o in outcome.items() if o.startswith("updated"))
        out.print(f"topics: {len(outcome)} ensured, {len(created)} created, {len(updated)} updated")
        for name in updated:
            out.print(f"  {name}: {outcome[name]}")
        for name, what in sorted(outcome.items()):
            if "not changed" in what:
                out.print(f"  [yellow]{name}: {what}[/yellow]")
    return ep


@infra_app.command("up")
def up(
    migrate: bool = typer.Option(True, help="Apply database migrations up to head."),
    topics: bool = typer.Option(True, help="Create the configured topics and their DLQ twins."),
    broker: str = typer.Option(
        None, "--broker", help="auto | kafka | tansu (default: infra.broker from the config)."
    ),
) -> None:
    """Start (or reuse) the servers, migrate the schema, create the topics."""
    cfg = _config()
    if broker is not None:
        if broker not in ("auto", "kafka", "tansu"):
            console.print(f"[red]--broker must be auto, kafka or tansu, not {broker!r}[/red]")
            raise typer.Exit(2)
        cfg = cfg.model_copy(update={"infra": cfg.infra.model_copy(update={"broker": broker})})
    try:
        bring_up(cfg, console, migrate=migrate, topics=topics)
    except Exception as exc:  # noqa: BLE001 - any failure is reported and exits non-zero
        _fail("awet infra up", exc)


@infra_app.command("status")
def status() -> None:
    """Endpoints, whether the servers are alive, schema revision, topics."""
    from awet_dagster.infra import infra_status

    cfg = _config()
    st = infra_status(cfg)
    table = Table(title=f"AWET infrastructure (home {st['home']})")
    table.add_column("component", style="cyan")
    table.add_column("mode")
    table.add_column("endpoint", overflow="fold")
    table.add_column("pid")
    table.add_column("alive", style="magenta")
    pg, br = st["postgres"], st["broker"]
    alive = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}
    table.add_row("postgres", pg["mode"], pg.get("url") or "-", str(pg.get("pid") or "-"), alive[pg["alive"]])
    kind = br.get("kind") or "-"
    table.add_row(f"broker ({kind})", br["mode"], br.get("bootstrap") or "-", str(br.get("pid") or "-"), alive[br["alive"]])
    console.print(table)

    timeout = cfg.database.connect_timeout_s
    if pg["alive"] is not False and (pg.get("url") or pg["mode"] == "external"):
        from awet_dagster.infra.endpoints import external_database_url
        from awet_dagster.storage.db import current_revision, head_revision

        url = external_database_url(cfg) or pg["url"]
        try:
            rev = current_revision(url, connect_timeout_s=timeout)
            head = head_revision()
            mark = "[green](head)[/green]" if rev == head else f"[yellow](head is {head})[/yellow]"
            console.print(f"schema revision: {rev or 'none'} {mark}")
        except Exception as exc:  # noqa: BLE001
            console.print(f"schema revision: [red]unavailable[/red] ({exc})")
    if br["alive"] is not False and br.get("bootstrap"):
        from awet_kafka.admin import topic_partitions

        try:
            parts = topic_partitions(br["bootstrap"], timeout_s=float(timeout))
            listing = ", ".join(f"{n}({p})" for n, p in sorted(parts.items())) or "none"
            console.print(f"topics: {listing}")
        except Exception as exc:  # noqa: BLE001
            console.print(f"topics: [red]unavailable[/red] ({exc})")


@infra_app.command("down")
def down() -> None:
    """Stop the embedded servers that `awet infra up` started (never external ones)."""
    from awet_dagster.infra import InfraError, infra_down

    cfg = _config()
    try:
        outcome = infra_down(cfg)
    except InfraError as exc:
        _fail("awet infra down", exc)
    for name, what in outcome.items():
        console.print(f"{name}: {what}")
