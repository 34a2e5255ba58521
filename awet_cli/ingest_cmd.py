"""`awet ingest`: the DataIngestionService. New bars of one source into ``market.raw`` as they close.

- ``--source alpaca``: Alpaca's websocket (``awet_dagster.streaming.alpaca_ingest``: reconnects with backoff).
- ``--source polygon|yfinance``: polled on the bar clock (``live.ingest_poll``; every poll
  asks for the bars since the last published one; a bar still forming waits for the next).
- ``--source stub``: the offline sample (or ``--stub-source synthetic``) streamed as if live
  from ``--start`` at ``--speed`` x real time, closed market skipped.
- ``--source reddit``: mentions and VADER sentiment per symbol and closed ``--bucket`` (1d, the
  features' join, or 1h) into ``social.sentiment``; ``persist_sentiment`` stores them.

Every bar is published once, also across restarts (the last bar per symbol is read back from
the topic at start); ``persist_bars`` writes the database from the topic. SIGTERM/SIGINT or
``--max-seconds`` stop it between polls.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from datetime import UTC, datetime, timedelta

import typer

from awet_cli._common import config_or_exit as _config
from awet_cli.live_cmd import Interrupt, _endpoints, _producer, _stop_on_signals, _symbols, console

POLLED = ("polygon", "yfinance", "stub")
DEFAULT_INTERVAL_S = {"minute": 5.0, "daily": 300.0}


def ingest_cmd(
    source: str = typer.Option("alpaca", help="alpaca (websocket) | polygon | yfinance (polled) | stub "
                                              "(the offline sample streamed as if live) | reddit (sentiment "
                                              "into social.sentiment)."),
    symbols: list[str] = typer.Option(None, "--symbols", "-s", help="Symbols (default: data.symbols)."),
    bar_type: str = typer.Option("minute", "--bar-type", help="minute | daily."),
    feed: str = typer.Option("iex", help="Alpaca data feed (iex | sip)."),
    interval: float = typer.Option(None, help="Seconds between polls (default 5 for minute bars, 300 for "
                                              "daily; the stub 0.2)."),
    speed: float = typer.Option(60.0, help="stub: market seconds per real second (60: a minute bar a second)."),
    start: str = typer.Option(None, help="stub: where its clock starts (YYYY-MM-DD or ISO time; default "
                                         "data.replay_start)."),
    stub_source: str = typer.Option("sample", "--stub-source", help="stub: sample | synthetic."),
    max_seconds: float = typer.Option(None, "--max-seconds", help="Stop after this many seconds."),
    topic: str = typer.Option(None, help="Target topic (default: market.raw; reddit: social.sentiment)."),
    bucket: str = typer.Option("1d", help="reddit: bucket length, 1d (what the features join) | 1h."),
) -> None:
    """Publish new bars of one source to market.raw as they close (the DataIngestionService)."""
    if bar_type not in DEFAULT_INTERVAL_S:
        console.print(f"[red]--bar-type must be minute or daily, got {bar_type!r}[/red]")
        raise typer.Exit(2)
    if source == "alpaca":
        return _alpaca(symbols, bar_type, feed, max_seconds, topic)
    if source == "reddit":
        if bucket not in ("1h", "1d"):
            console.print(f"[red]--bucket must be 1h or 1d, got {bucket!r}[/red]")
            raise typer.Exit(2)
        if interval is not None and interval <= 0:
            console.print("[red]--interval must be > 0[/red]")
            raise typer.Exit(2)
        return _reddit(symbols, bucket, interval, max_seconds, topic)
    if source not in POLLED:
        console.print(f"[red]--source must be one of alpaca, {', '.join(POLLED)}, reddit; got {source!r}[/red]")
        raise typer.Exit(2)
    if stub_source not in ("sample", "synthetic"):
        console.print(f"[red]--stub-source must be sample or synthetic, got {stub_source!r}[/red]")
        raise typer.Exit(2)
    if speed <= 0 or (interval is not None and interval <= 0):
        console.print("[red]--speed and --interval must be > 0[/red]")
        raise typer.Exit(2)
    _polled(source, _symbols(symbols, ()), bar_type, interval, speed, start, stub_source, max_seconds, topic)


def _start_time(value: str | None, default: str) -> datetime:
    text = value or default
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        console.print(f"[red]--start must be YYYY-MM-DD or an ISO time, got {text!r}[/red]")
        raise typer.Exit(2) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _polled(source: str, symbols: list[str], bar_type: str, interval: float | None, speed: float,
            start: str | None, stub_source: str, max_seconds: float | None, topic: str | None) -> None:
    from awet_dagster.contracts.topics import MARKET_RAW, clock_topic_for
    from awet_dagster.sources import MissingCredentials
    from awet_dagster.sources.registry import get_source
    from awet_dagster.sources.settings import source_kwargs
    from awet_dagster.streaming.polling import BarPoller, SimulatedClock
    from live.ingest_poll import published_marks

    cfg = _config()
    symbols = symbols or list(cfg.data.symbols)
    vendor = stub_source if source == "stub" else source
    try:
        bars = get_source(vendor, **source_kwargs(vendor, cfg))
    except MissingCredentials as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    ep = _endpoints(cfg)
    topic = topic or MARKET_RAW
    marks = published_marks(ep.kafka_bootstrap, topic, symbols, bar_type, client=cfg.kafka.client_settings())
    simulated = None
    if source == "stub":
        at = _start_time(start, cfg.data.replay_start)
        if marks and set(symbols) <= marks.keys():
            at = max(at, min(marks.values()))  # a restarted stub goes on where it stopped
        simulated = SimulatedClock(at, speed)
        clock, catch_up = simulated, timedelta(0)
    else:
        clock, catch_up = (lambda: datetime.now(UTC)), None
    poller = BarPoller(bars, symbols, bar_type, clock=clock, source_name=source, catch_up=catch_up)
    poller.resume(marks)
    every = interval or (0.2 if source == "stub" else DEFAULT_INTERVAL_S[bar_type])
    # Each poll's bars into market.raw are followed by their clocks (risk's event-time order).
    _run_polling(cfg, ep, poller, topic, bar_type, every, max_seconds, simulated=simulated, label=source,
                 what=f"{', '.join(symbols)} ({bar_type})", resumed=len(marks),
                 clock_topic=clock_topic_for(topic))


def _reddit(symbols: list[str] | None, bucket: str, interval: float | None, max_seconds: float | None,
            topic: str | None) -> None:
    from awet_dagster.contracts import SentimentEvent
    from awet_dagster.contracts.topics import SOCIAL_SENTIMENT
    from awet_dagster.sources import MissingCredentials
    from awet_dagster.sources.reddit import reddit_client
    from awet_dagster.streaming.sentiment import SentimentPoller
    from live.ingest_poll import published_marks

    cfg = _config()
    symbols = _symbols(symbols, cfg.data.symbols)
    try:
        client = reddit_client(cfg.data, bucket)  # type: ignore[arg-type]
    except MissingCredentials as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    ep = _endpoints(cfg)
    topic = topic or SOCIAL_SENTIMENT
    marks = published_marks(ep.kafka_bootstrap, topic, symbols, bucket, client=cfg.kafka.client_settings(),
                            model=SentimentEvent, kind_field="bucket")
    poller = SentimentPoller(client, symbols, bucket, clock=lambda: datetime.now(UTC),
                             subreddits=cfg.data.reddit_subreddits, catch_up=timedelta(days=cfg.data.reddit_days))
    poller.resume(marks)
    every = interval or 300.0  # a poll asks Reddit only once a bucket has closed
    _run_polling(cfg, ep, poller, topic, bucket, every, max_seconds, label="reddit", service="ingest_reddit",
                 what=f"{', '.join(symbols)} ({bucket} buckets of r/{', r/'.join(poller.subreddits)})",
                 resumed=len(marks))


def _run_polling(cfg, ep, poller, topic: str, kind: str, every: float, max_seconds: float | None, *, label: str,
                 what: str, resumed: int, simulated=None, service: str = "ingest",
                 clock_topic: str | None = None) -> None:
    """Run a poller (bars or Reddit buckets) into ``topic`` until stopped: one instance per topic
    and ``kind`` (bar type or bucket), ``/metrics`` on ``service``'s port, a summary at the end.
    ``clock_topic``: after each poll's bars, one ``BarClock`` per bar time of them goes there."""
    from awet_dagster.sources import AuthenticationFailed, MissingCredentials
    from awet_dagster.streaming.sequencer import bar_clocks
    from live.ingest_poll import PollingIngestor, serve_ingest_metrics
    from awet_kafka.publish import publish_acknowledged

    producer = _producer(cfg, ep.kafka_bootstrap)
    flush_timeout = cfg.kafka.flush_timeout_s

    def publish(events) -> None:
        publish_acknowledged(producer, topic, events, timeout_s=flush_timeout)
        if clock_topic is not None:
            publish_acknowledged(producer, clock_topic, bar_clocks(events), timeout_s=flush_timeout)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stop = Interrupt()
    ingestor = PollingIngestor(poller, publish, interval_s=every, stop_event=stop, simulated=simulated)
    lock = _one_ingest(ep, topic, kind)
    server = serve_ingest_metrics(cfg, label, lambda: poller.stats, ingestor.health, service=service)
    console.print(f"ingest {label}: {what} -> {topic}, polling every {every:g}s"
                  + (f", resuming after {resumed} symbol(s) already published" if resumed else "")
                  + f"; metrics on {server.url}/metrics")
    with _stop_on_signals(stop), producer, server, _released(lock):
        try:
            result = ingestor.run(timeout_s=max_seconds)
        except (AuthenticationFailed, MissingCredentials) as exc:  # polling on cannot help
            console.print(f"[red]{label}: {exc}[/red]")
            raise typer.Exit(2) from None
    s = result.stats
    console.print(f"{label}: polls {s.polls}, published {s.published}, duplicates {s.duplicates}, late {s.late}, "
                  f"fetch errors {s.errors}, publish errors {ingestor.publish_errors} ({result.stopped_by})")
    if stop.signum:
        raise typer.Exit(stop.exit_code())


def _alpaca(symbols: list[str] | None, bar_type: str, feed: str, max_seconds: float | None,
            topic: str | None) -> None:
    cfg = _config()
    from awet_dagster.contracts.topics import MARKET_RAW, clock_topic_for
    from awet_dagster.sources import MissingCredentials
    from awet_dagster.streaming.alpaca_ingest import AlpacaBarIngestor, alpaca_stream_factory
    from live.ingest_poll import serve_ingest_metrics

    try:
        factory = alpaca_stream_factory(cfg.data.alpaca_api_key, cfg.data.alpaca_secret_key, feed=feed)
    except MissingCredentials as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    ep = _endpoints(cfg)
    producer = _producer(cfg, ep.kafka_bootstrap)
    topic = topic or MARKET_RAW
    flush_timeout = cfg.kafka.flush_timeout_s

    def publish(event) -> None:
        # A handful of bars per minute: flushing each one keeps "published" = acknowledged.
        producer.send(topic, event)
        producer.flush(flush_timeout)

    clock_topic = clock_topic_for(topic)

    def publish_clock(clock) -> None:  # each minute's clock after its bars (risk's event-time order)
        producer.send(clock_topic, clock)
        producer.flush(flush_timeout)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    ingestor = AlpacaBarIngestor(_symbols(symbols, cfg.data.symbols), publish, factory, bar_type=bar_type,
                                 publish_clock=publish_clock if clock_topic is not None else None)
    stop = Interrupt()
    watcher = threading.Thread(target=lambda: (stop.wait(), ingestor.stop()), daemon=True)
    watcher.start()
    lock = _one_ingest(ep, topic, bar_type)
    server = serve_ingest_metrics(cfg, "alpaca", lambda: ingestor.stats)
    with _stop_on_signals(stop), producer, server, _released(lock):
        try:
            stats = ingestor.run(timeout_s=max_seconds)
        finally:
            stop.set()
    console.print(f"alpaca: received {stats.received}, published {stats.published}, duplicates "
                  f"{stats.duplicates}, rejected {stats.rejected}, reconnects {stats.reconnects} "
                  f"({stats.stopped_by})")
    if stop.signum:
        raise typer.Exit(stop.exit_code())


@contextlib.contextmanager
def _released(lock):
    try:
        yield lock
    finally:
        lock.release()


def _one_ingest(ep, topic: str, bar_type: str):
    """The ingest's single-instance lock (held for the run): a second `awet ingest` of the same
    bar type into the same topic would publish every bar twice; it refuses to start instead."""
    from live.single_instance import InstanceLock, SingleInstanceError

    lock = InstanceLock(ep.database_url, "ingest", f"ingest:{topic}:{bar_type}",
                        "awet ingest runs as ONE instance per topic and bar type: two would publish every bar twice")
    try:
        return lock.acquire()
    except SingleInstanceError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from None
