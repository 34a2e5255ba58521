"""Exit monitor: TP / SL / trailing / max-hold exits on open positions (pure core)."""
from awet_dagster.exits.monitor import ExitMonitor, exit_reason

__all__ = ["ExitMonitor", "exit_reason"]
