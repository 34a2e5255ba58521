"""Shared command-line helpers."""
from __future__ import annotations

import typer
from rich.console import Console

_console = Console()


def config_or_exit():
    """The layered config, or exit 2 with the message naming the bad key and its source."""
    from awet_dagster.config import ConfigError, load_config

    try:
        return load_config()
    except ConfigError as exc:
        _console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
