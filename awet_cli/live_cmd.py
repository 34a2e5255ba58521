"""`awet replay`, `awet live`, `awet ingest`: the live loop from the command line.

Register with ``register(app)`` (or individually: ``app.command("replay")(replay_cmd)``,
``app.command("live")(live_cmd)``, ``app.command("ingest")(ingest_cmd)``). Heavy imports
(confluent_kafka, polars, psycopg, alpaca-py) happen inside the commands.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from datetime import date

import typer
from rich.console import Console

from awet_cli._common import config_or_exit as _config

console = Console()


def register(app: typer.Typer) -> None:
    from awet_cli.ingest_cmd import ingest_cmd

    app.command("replay")(replay_cmd)
    app.command("live")(live_cmd)
    app.command("ingest")(ingest_cmd)


def _endpoints(cfg):
    from awet_dagster.infra import InfraError, resolve_endpoints

    try:
        return resolve_endpoints(cfg)
    except InfraError as exc:
        console.print(f"[red]infrastructure not available:[/red] {exc}")
        raise typer.Exit(2) from None


def _producer(cfg, bootstrap: str):
    from awet_kafka.producer import EventProducer
    from awet_kafka.settings import producer_config

    return EventProducer(producer_config(bootstrap, client=cfg.kafka.client_settings(), producer=dict(cfg.kafka.producer),
                                         client_id="awet-replay"))


def _symbols(values: list[str] | None, default: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for v in values or default:
        out.extend(s.strip().upper() for s in v.split(",") if s.strip())
    return out


def _date(value: str, what: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        console.print(f"[red]{what} must be a date YYYY-MM-DD, got {value!r}[/red]")
        raise typer.Exit(2) from None


def _window(cfg, bar_type: str | None, symbols: list[str] | None, start: str | None, end: str | None,
            daily_start: str) -> tuple[str, list[str], date, date]:
    """Bar type, symbols and [first, last] dates of a replay, config defaults filled in."""
    bar_type = bar_type or cfg.data.bar_type
    if bar_type not in ("daily", "minute"):
        console.print(f"[red]--bar-type must be daily or minute, got {bar_type!r}[/red]")
        raise typer.Exit(2)
    syms = _symbols(symbols, cfg.data.symbols if bar_type == "daily" else cfg.data.minute_symbols)
    first = _date(start or (daily_start if bar_type == "daily" else cfg.data.minute_start), "--start")
    return bar_type, syms, first, _date(end or cfg.data.end, "--end")


class Interrupt(threading.Event):
    """A stop event that remembers the signal that set it (exit code 128 + signal)."""

    signum: int | None = None

    def exit_code(self, default: int = 0) -> int:
        return 128 + self.signum if self.signum else default


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
    """SIGTERM/SIGINT set ``stop`` while inside the block; previous handlers restored after.
    A second signal while stopping is not ignored either: every wait looks at ``stop``."""
    import signal

    def handler(signum, _frame):
        console.print(f"[yellow]{signal.Signals(signum).name}: stopping…[/yellow]")
        if isinstance(stop, Interrupt) and stop.signum is None:
            stop.signum = signum
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


# --------------------------------------------------------------------------- replay
def replay_cmd(
    source: str = typer.Option("sample", help="Bar source: sample, synthetic, lean (a Lean folder, data.lean_root) "
                                              "or any registered BarSource; vendors use their data.* keys."),
    bar_type: str = typer.Option(None, "--bar-type", help="daily | minute (default: data.bar_type)."),
    symbols: list[str] = typer.Option(None, "--symbols", "-s", help="Symbols (repeat or comma-separate)."),
    start: str = typer.Option(None, help="First exchange date, YYYY-MM-DD (default: data.start)."),
    end: str = typer.Option(None, help="Last exchange date, inclusive (default: data.end)."),
    speed: float = typer.Option(0.0, help="0 = as fast as possible; N = N x real time between bars."),
    max_gap_s: float = typer.Option(5.0, "--max-gap-s", help="Cap on any single wait between two bars."),
    max_seconds: float = typer.Option(None, "--max-seconds", help="Stop after this many seconds."),
    topic: str = typer.Option(None, help="Target topic (default: market.raw)."),
) -> None:
    """Publish historical bars to market.raw in time order (ids stable across runs)."""
    cfg = _config()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from awet_dagster.contracts.topics import MARKET_RAW, clock_topic_for
    from awet_dagster.sources import SourceError, get_source
    from awet_dagster.sources.settings import source_kwargs
    from live.replay import replay_bars

    bar_type, syms, first, last = _window(cfg, bar_type, symbols, start, end, cfg.data.start)
    try:
        bars = get_source(source, **source_kwargs(source, cfg)).fetch(syms, first, last, bar_type)
    except (SourceError, ValueError) as exc:
        console.print(f"[red]{source}: {exc}[/red]")
        raise typer.Exit(2) from None
    if bars.height == 0:
        console.print(f"[yellow]no {bar_type} bars for {syms} in {first}..{last}[/yellow]")
        raise typer.Exit(1)
    ep = _endpoints(cfg)
    stop = Interrupt()
    topic = topic or MARKET_RAW
    _require_topic(ep.kafka_bootstrap, topic)
    with _stop_on_signals(stop), Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"replay → {topic}", total=bars.height)
        with _producer(cfg, ep.kafka_bootstrap) as producer:
            stats = replay_bars(
                producer, bars, topic=topic, speed=speed, max_gap_s=max_gap_s,
                max_seconds=max_seconds, stop_event=stop,
                on_progress=lambda done, _total: progress.update(task, completed=done),
                clock_topic=clock_topic_for(topic),  # risk's event-time order
            )
    console.print(f"published {stats.published}/{stats.total} {bar_type} bars of {len(syms)} symbol(s) "
                  f"to {topic} in {stats.elapsed_s:.1f}s ({stats.stopped_by})")
    if stop.signum:
        raise typer.Exit(stop.exit_code())


def _require_topic(bootstrap: str, topic: str) -> None:
    """Exit 2 naming the fix when ``topic`` does not exist: otherwise every bar waits out the
    producer's message timeout (UNKNOWN_TOPIC_OR_PART) and the replay fails only then."""
    from awet_kafka.admin import list_topics

    try:
        topics = list_topics(bootstrap, timeout_s=10)
    except Exception as exc:  # noqa: BLE001 - any client error: the broker is not usable
        console.print(f"[red]Kafka at {bootstrap} did not answer: {exc}[/red]")
        raise typer.Exit(2) from None
    if topic not in topics:
        console.print(f"[red]topic {topic!r} does not exist on {bootstrap}: `awet infra up` creates the "
                      f"project's topics (or pass --topic)[/red]")
        raise typer.Exit(2)


# --------------------------------------------------------------------------- live
def live_cmd(
    service: list[str] = typer.Option(None, "--service", help="Run only these services (repeatable)."),
    max_seconds: float = typer.Option(None, "--max-seconds", help="Stop every service after this long."),
    max_messages: int = typer.Option(None, "--max-messages", help="Stop each service after N messages."),
    list_services: bool = typer.Option(False, "--list", help="List the registered services and exit."),
    replay: str = typer.Option(None, "--replay", help="Replay bars of this source (e.g. sample, lean) through every "
                                                     "service, wait until the loop drained, print a summary."),
    bar_type: str = typer.Option(None, "--bar-type", help="With --replay: daily | minute (default: data.bar_type)."),
    start: str = typer.Option(None, help="With --replay: first date (default: data.replay_start)."),
    end: str = typer.Option(None, help="With --replay: last date, inclusive (default: data.end)."),
    symbols: list[str] = typer.Option(None, "--symbols", "-s", help="With --replay: symbols."),
    lockstep: bool = typer.Option(True, "--lockstep/--free-run",
                                  help="With --replay: one timestamp at a time, waiting for the loop to drain "
                                       "(default) or every bar at once (throughput). Either way risk reads its input "
                                       "in event-time order by the replay's clocks: the same orders "
                                       "(docs/live-vs-backtest.md)."),
    preload_days: int = typer.Option(730, "--preload-days", help="With --replay: bars of this many days before "
                                                                 "--start are loaded into the bars table first "
                                                                 "(warm-up history; 0 = none)."),
) -> None:
    """Run the live services (all registered ones by default) in this process until SIGTERM/Ctrl-C.

    Serves /metrics and /healthz on observability.metrics_host : metrics_port_base + the
    service's offset (live/metrics.py SERVICE_PORT_OFFSETS; several services: the runner's).
    """
    from awet_dagster.observability.metrics import service_port
    from live.registry import available_services, service_spec
    from live.service_metrics import MetricsPortError
    from live.supervisor import run_services
    from live.single_instance import SingleInstanceError

    if replay:
        _live_replay(replay, bar_type, start, end, symbols, lockstep, preload_days, max_seconds)
        return
    if list_services:
        for name in available_services():
            spec = service_spec(name)
            scale = "one instance" if spec.instances == "one" else "scales out"
            console.print(f"[cyan]{name}[/cyan]  {spec.description}  [dim]({scale}: {spec.why})[/dim]")
        return
    names = [s for v in (service or []) for s in v.split(",") if s]
    unknown = sorted(set(names) - set(available_services()))
    if unknown:
        console.print(f"[red]unknown service(s) {unknown}; available: {list(available_services())}[/red]")
        raise typer.Exit(2)
    cfg = _config()
    ep = _endpoints(cfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(name)s: %(message)s")
    running = names or list(available_services())
    port = service_port(cfg, running[0] if len(running) == 1 else "runner")
    host = cfg.observability.metrics_host
    console.print(f"running {', '.join(running)} (Ctrl-C stops after the current batch); "
                  f"metrics on http://{host}:{port}/metrics")
    stop = Interrupt()
    try:
        with _stop_on_signals(stop):
            results = run_services(names, cfg, ep, max_messages=max_messages, timeout_s=max_seconds,
                                   metrics_port=port, metrics_host=host, stop_event=stop,
                                   install_signal_handlers=False)
    except MetricsPortError as exc:
        console.print(f"[red]{exc}[/red] (another process on that port? observability.metrics_port_base / "
                      f"AWET__OBSERVABILITY__METRICS_PORT_BASE moves every port)")
        raise typer.Exit(2) from None
    except SingleInstanceError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None
    failed = False
    for name, res in results.items():
        status = f"[red]gave up: {res.error}[/red]" if res.error and not res.stats else "ok"
        failed |= status != "ok"
        console.print(f"{name}: processed {res.processed}, produced {res.produced}, "
                      f"dead-lettered {res.dead_lettered}, restarts {res.restarts} — {status}")
    raise typer.Exit(stop.exit_code(1 if failed else 0))


def _live_replay(source: str, bar_type: str | None, start: str | None, end: str | None, symbols: list[str] | None,
                 lockstep: bool, preload_days: int, max_seconds: float | None) -> None:
    """`awet live --replay`: every service in this process, the bars replayed, a summary."""
    import time as _time
    from datetime import UTC, datetime, timedelta

    cfg = _config()
    from awet_dagster.live_summary import format_summary, loop_summary
    from awet_dagster.sources import SourceError, get_source
    from awet_dagster.sources.settings import source_kwargs
    from awet_dagster.storage.bars import copy_upsert_bars
    from awet_dagster.storage.db import connect
    from awet_dagster.observability.metrics import service_port
    from awet_dagster.contracts.topics import MARKET_CLOCK
    from live.loop_harness import LoopTracker, replay_through_loop, start_loop
    from live.registry import REPLAY_SERVICES
    from awet_kafka.admin import ensure_configured_topics

    bar_type, syms, first, last = _window(cfg, bar_type, symbols, start, end, cfg.data.replay_start)
    try:
        src = get_source(source, **source_kwargs(source, cfg))
        bars = src.fetch(syms, first, last, bar_type)
        history = (src.fetch(syms, first - timedelta(days=preload_days), first - timedelta(days=1), bar_type)
                   if preload_days > 0 else None)
    except (SourceError, ValueError) as exc:
        console.print(f"[red]{source}: {exc}[/red]")
        raise typer.Exit(2) from None
    if bars.height == 0:
        console.print(f"[yellow]no {bar_type} bars for {syms} in {first}..{last}[/yellow]")
        raise typer.Exit(1)
    ep = _endpoints(cfg)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(threadName)s %(name)s: %(message)s")
    ensure_configured_topics(ep.kafka_bootstrap, cfg.kafka)
    if history is not None and history.height:
        with connect(ep.database_url) as conn, conn.transaction():
            copy_upsert_bars(conn, history)
        console.print(f"loaded {history.height} bars before {first} into the bars table (warm-up history)")
    since = datetime.now(UTC)
    tracker = LoopTracker()
    # Metrics on the runner's port when it is free (a replay next to a running `awet live`
    # still runs, without an endpoint).
    # The replay publishes a clock per bar time: risk hands its signals over in event-time order,
    # so the decisions do not depend on partitioning or timing (lockstep or not).
    loop = start_loop(cfg, ep, names=REPLAY_SERVICES, tracker=tracker, timeout_s=max_seconds,
                      overrides={"risk": {"event_order": "clock"}},
                      metrics_port=service_port(cfg, "runner"), metrics_host=cfg.observability.metrics_host,
                      metrics_required=False)
    stop = Interrupt()
    started = _time.monotonic()
    budget = max_seconds if max_seconds is not None else 600.0
    with _stop_on_signals(stop):
        console.print(f"replaying {bars.height} {bar_type} bars of {len(syms)} symbol(s), {first}..{last}"
                      f"{' in lockstep' if lockstep else ''} through {', '.join(REPLAY_SERVICES)}")
        try:
            with _producer(cfg, ep.kafka_bootstrap) as producer:
                published, drained = replay_through_loop(producer, bars, tracker, clock_topic=MARKET_CLOCK,
                                                         lockstep=lockstep,
                                                         drain_timeout_s=budget, stop_event=stop)
        finally:
            loop.stop()
            results = loop.join(15 if stop.is_set() else 60)
    elapsed = _time.monotonic() - started
    if not drained:
        console.print(f"[yellow]not drained within {budget:.0f}s: {tracker.lagging()[:8]}[/yellow]")
    with connect(ep.database_url) as conn:
        summary = loop_summary(conn, since=since, initial_equity=cfg.risk.initial_equity, symbols=syms)
    console.print(f"[bold]live loop summary[/bold] ({elapsed:.1f}s, {published / max(elapsed, 1e-9):,.0f} bars/s)")
    for line in format_summary(summary, bars=published, dead_letters=tracker.dead_letters):
        console.print("  " + line)
    for name, res in results.items():
        if res.error:
            console.print(f"[yellow]{name}: {res.restarts} restart(s), last error {res.error}[/yellow]")
    if stop.signum:
        console.print(f"[yellow]interrupted: {published} of {bars.height} bars replayed[/yellow]")
        raise typer.Exit(stop.exit_code())
