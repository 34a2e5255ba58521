"""The `awet` command line: the composition root for operators.

Heavy imports (dagster, torch, confluent_kafka) happen inside commands so `awet --help`
stays fast.
"""
from __future__ import annotations

import os
import subprocess
import sys

import typer
from rich.console import Console
from rich.table import Table

from awet_cli._common import config_or_exit as _config_or_exit
from awet_cli.infra_cmd import infra_app
from awet_cli.kill_switch_cmd import kill_switch_app
from awet_cli.live_cmd import register as register_live_commands
from awet_cli.model_cmd import model_app
from awet_cli.status_cmd import status_command
from awet_dagster.config import ConfigError, effective_values, load_config_with_sources

console = Console()
app = typer.Typer(
    help="AWET: trading research (Dagster) and paper trading (Kafka live loop).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(infra_app, name="infra")
app.add_typer(kill_switch_app, name="kill-switch")
app.add_typer(model_app, name="model")
register_live_commands(app)  # replay, live, ingest
app.command("status")(status_command)




@config_app.command("show")
def config_show(
    key: str = typer.Option(None, "--key", "-k", help="Only keys starting with this prefix."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Print every effective value and the layer it came from (secrets masked)."""
    try:
        loaded = load_config_with_sources()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    rows = [r for r in effective_values(loaded) if not key or r[0].startswith(key)]
    running = _running_broker(loaded.config)
    if not key or "infra.broker".startswith(key) or key.startswith("infra.broker"):
        rows.append(("infra.broker (running)", running, "awet infra status"))
    if as_json:
        import json

        typer.echo(json.dumps([{"key": k, "value": v, "source": s} for k, v, s in rows], indent=2))
        return
    table = Table(title=f"AWET configuration (AWET_ENV={loaded.config.env})")
    table.add_column("key", style="cyan")
    table.add_column("value")
    table.add_column("source", style="magenta")
    for k, v, s in rows:
        table.add_row(k, v, s)
    console.print(table)


def _running_broker(cfg) -> str:
    """Which broker the loop would talk to now: external, the embedded one running, or none."""
    from awet_dagster.infra import infra_status

    try:
        br = infra_status(cfg)["broker"]
    except Exception as exc:  # noqa: BLE001 - a status line must not break `config show`
        return f"unknown ({exc})"
    if br["mode"] == "external":
        return f"external Kafka at {br['bootstrap']}"
    if br["alive"]:
        return f"{br['kind']} at {br['bootstrap']} (pid {br['pid']})"
    return "none running (awet infra up starts one)"


@app.command("ui")
def ui(
    port: int = typer.Option(None, help="Port for the Dagster UI (default from config)."),
) -> None:
    """Start the Dagster UI (`dagster dev`) on localhost against the project's instance."""
    cfg = _config_or_exit()
    from awet_cli.dagster_env import dagster_environ, workspace_file

    env = dagster_environ(cfg)
    cmd = [
        sys.executable, "-m", "dagster", "dev",
        "-w", str(workspace_file()),
        "-h", cfg.dagster.ui_host,
        "-p", str(port or cfg.dagster.ui_port),
    ]
    console.print(f"Dagster UI on http://{cfg.dagster.ui_host}:{port or cfg.dagster.ui_port} "
                  f"(DAGSTER_HOME={env['DAGSTER_HOME']}); Ctrl-C stops it.")
    raise typer.Exit(_run_group(cmd, env))


def _run_group(cmd: list[str], env: dict[str, str], grace_s: float = 5.0) -> int:
    """Run ``cmd`` (``dagster dev``) in a process group of its own and take it down with us.

    ``dagster dev`` starts a webserver, a daemon and a code server that outlive it, and they
    ignore SIGTERM and SIGINT once it is gone (measured: only SIGKILL stopped them). So a
    SIGTERM/SIGINT to `awet ui` stops the whole group: SIGTERM, then SIGKILL after
    ``grace_s``; a watcher process does the same if `awet ui` itself is SIGKILLed. Exit code:
    the command's, or 128 + the signal that stopped us."""
    import signal

    from awet_dagster.infra.guard import kill_group_when_owner_dies, stop_group

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    watcher = kill_group_when_owner_dies(proc.pid)
    got: list[int] = []

    def on_signal(signum, _frame):
        got.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while proc.poll() is None and not got:
            try:
                proc.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)
        stop_group(proc.pid, grace_s)
        proc.wait(10)
        watcher.kill()
        watcher.wait(5)
    if got:
        console.print(f"[yellow]{signal.Signals(got[0]).name}: the Dagster UI and its processes stopped[/yellow]")
        return 128 + got[0]
    return proc.returncode


@app.command("run")
def run(
    skip_infra: bool = typer.Option(False, help="Do not start the embedded servers first."),
    replay: bool = typer.Option(True, help="End with a live paper-trading replay of the bars after the cutoff."),
) -> None:
    """Run the main job end to end (ingest → features → walk-forward gate → ONNX → MLflow →
    promotion), then replay the later bars through the live loop and print a summary."""
    cfg = _config_or_exit()
    from awet_cli.main_job import run_main_job

    raise typer.Exit(run_main_job(cfg, console, start_infra=not skip_infra, replay=replay))


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
