"""End to end: a REAL Prometheus scrapes a running replay of the whole live loop.

One running replay per module (fixture ``replay``), shared by the tests below:

- a small REAL champion: a TFT trained on the shipped sample's daily bars (2018 to Sept 2020,
  three symbols renamed for this run) with the real feature set, exported to ONNX, logged and
  registered in a temporary MLflow store and promoted by ``promotion.promote`` (which writes
  the champion metrics textfile), ``tests/_model_data.register_sample_champion``;
- every service of ``awet live --replay`` (``live.registry.REPLAY_SERVICES``: the eight loop
  services and the lag monitor) in one process through ``live.loop_harness.start_loop`` with its
  /metrics + /healthz endpoint on a free loopback port, fed with ``replay_through_loop`` in
  lockstep (the functions the CLI calls), on fresh topics and consumer groups, against the
  session's PostgreSQL and broker (tests/conftest.py), the bars before the replay preloaded
  into the bars table (the CLI's warm-up history). The inference service runs its real code
  with the default ``ChampionSource``; only its prediction-drift windows are small
  (``drift_window=20, drift_min_recent=5``, production default 500/50) so the PSI exists
  after 25 predictions;
- the textfile exporter (``python -m live.metrics --textfile-dir <home>/metrics``) serving
  the champion textfile, as deployed (docker/prometheus/prometheus.yml job ``awet-textfile``);
- ``/usr/bin/prometheus`` (Debian ``prometheus`` package, scripts/ci_system_deps.sh) scraping
  both every second and evaluating a copy of docker/prometheus/alerts.yml every second, the
  copy's ``for:`` durations rewritten to ``0s`` (expressions untouched).

Checked: every metric the Grafana dashboards query has samples, in direct scrapes of the
running replay and in Prometheus; every dashboard query evaluates in Prometheus without error
and with a result; tripping the kill switch the operator's way (``awet kill-switch trip``)
mid-replay makes ``KillSwitchActivated`` fire (read back from Prometheus' /api/v1/alerts),
resetting it resolves it. Skipped (with the reason) when the prometheus binary is missing.
The kill switch tripped is the GLOBAL one (the CLI has no namespace): the risk (with its exits) and
execution services run un-namespaced on symbols of their own, and the switch is always reset in a
``finally``. Every wait has a deadline.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from awet_dagster.infra import Endpoints
from awet_dagster.observability.promql import dashboard_queries, expand_grafana_variables, metric_names
from tests.conftest import isolated_database
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "docker" / "prometheus" / "alerts.yml"
DASHBOARDS = REPO / "docker" / "grafana" / "dashboards"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMETHEUS_BUILTINS = {"up"}

SYMBOLS = ("SPY", "AAPL", "IBM")
HISTORY = (date(2018, 1, 2), date(2020, 9, 30))  # training data and the bars table's warm-up history
REPLAY = (date(2020, 10, 1), date(2021, 3, 31))  # replayed through the loop (the sample ends 2021-03-31)
PHASE_A_DAYS = 30  # replayed before the tests look (then more, up to EXTRA_DAYS, until every metric is in)
EXTRA_DAYS = 30
DRIFT_WINDOW, DRIFT_MIN_RECENT = 20, 5
#: Gauges whose series exist only while the state they describe does (a position per symbol):
#: a dashboard query over them may be empty at a given instant.
STATEFUL = {"awet_exposure_dollars"}

needs_prometheus = pytest.mark.skipif(
    not os.access(PROMETHEUS, os.X_OK),
    reason="the prometheus server binary is not installed (apt-get install prometheus; scripts/ci_system_deps.sh)")


# --------------------------------------------------------------------------- helpers
def _get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 - loopback only
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _api(base: str, path: str, **params: str) -> dict:
    code, body = _get(f"{base}{path}{'?' + urllib.parse.urlencode(params) if params else ''}")
    return json.loads(body) if code in (200, 400, 422) and body else {}


def _wait(what: str, check: Callable[[], Any], timeout_s: float, poll_s: float = 0.25,
          on_poll: Callable[[], None] | None = None):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        if on_poll is not None:
            on_poll()
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


def shortened_rules(text: str) -> str:
    """The alert rules with every ``for:`` rewritten to ``0s`` (expressions untouched)."""
    out, n = re.subn(r"(?m)^(\s+for:\s*)\S+\s*$", r"\g<1>0s", text)
    assert n > 0, "no `for:` in the alert rules?"
    return out


def _rules_by_name(doc: dict) -> dict[str, dict]:
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs() -> list[tuple[str, str]]:
    """``("<dashboard>/<panel or variable>", expr)`` of every query of the Grafana dashboards."""
    return [(f"{path.stem}/{where}", expr) for path in sorted(DASHBOARDS.glob("*.json"))
            for where, expr in dashboard_queries(json.loads(path.read_text()))]


def dashboard_metric_names() -> set[str]:
    """Every metric name the Grafana dashboards' PromQL (panels and variables) references."""
    return set().union(*(metric_names(e) for _, e in dashboard_exprs()))


def sample_names(exposition: str) -> set[str]:
    """Names of the samples (not the ``# HELP``/``# TYPE`` declarations) of an exposition."""
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in exposition.splitlines()
            if line and not line.startswith("#")}


def _kill_switch_cli(*args: str) -> str:
    from typer.testing import CliRunner

    from awet_cli.main import app

    res = CliRunner().invoke(app, ["kill-switch", *args])
    assert res.exit_code == 0, res.output
    return res.output


# --------------------------------------------------------------------------- offline checks of the helpers
def test_shortened_rules_keep_every_expression():
    text = ALERTS.read_text()
    orig, short = _rules_by_name(yaml.safe_load(text)), _rules_by_name(yaml.safe_load(shortened_rules(text)))
    assert orig.keys() == short.keys()
    for name, rule in orig.items():
        assert short[name]["expr"] == rule["expr"], name
        assert short[name]["for"] == "0s", name
        assert {k: v for k, v in short[name].items() if k != "for"} == {k: v for k, v in rule.items() if k != "for"}


def test_sample_names_skip_declarations():
    text = ('# HELP a_total x\n# TYPE a_total counter\na_total{s="1"} 0.0\na_created{s="1"} 1.7e9\n'
            "# TYPE h histogram\n# TYPE g gauge\ng 1\n")
    assert sample_names(text) == {"a_total", "a_created", "g"}


# --------------------------------------------------------------------------- the running replay
@dataclass
class RunningReplay:
    prom_url: str
    metrics_url: str
    textfile_url: str
    topics: dict[str, str]
    producer: Any
    tracker: Any
    days: deque  # the replay's bars, one frame per timestamp, not replayed yet
    sampled: set[str] = field(default_factory=set)  # sample names seen scraping the two endpoints
    champion: Any = None  # the registry's ModelRef of the served champion
    replayed_days: int = 0
    tripped: bool = False
    last_day_at: float = 0.0

    def replay_day(self) -> None:
        """Publish the next timestamp's bars and wait until the whole loop has handled them."""
        from live.loop_harness import replay_through_loop

        if not self.days:
            pytest.fail(f"the replay ran out of bars after {self.replayed_days} day(s)")
        published, drained = replay_through_loop(self.producer, self.days.popleft(), self.tracker,
                                                 topic=self.topics["raw"], lockstep=True, drain_timeout_s=60)
        assert published and drained, self.tracker.lagging()
        self.replayed_days += 1
        self.last_day_at = time.monotonic()

    def pace(self, every_s: float = 0.4) -> Callable[[], None]:
        """An ``on_poll`` replaying one more day every ``every_s`` seconds (the replay keeps running)."""
        def poll() -> None:
            if time.monotonic() - self.last_day_at >= every_s:
                self.replay_day()
        return poll

    def scrape(self) -> str:
        text = ""
        for url in (self.metrics_url, self.textfile_url):
            code, body = _get(url + "/metrics")
            assert code == 200, (url, code, body[:200])
            text += body.decode()
        self.sampled |= sample_names(text)
        return text

    def query(self, expr: str) -> dict:
        return _api(self.prom_url, "/api/v1/query", query=expr)

    def values(self, expr: str) -> list[tuple[dict, float]]:
        res = self.query(expr).get("data", {}).get("result", [])
        return [(r["metric"], float(r["value"][1])) for r in res]

    def names_in_prometheus(self) -> set[str]:
        return set(_api(self.prom_url, "/api/v1/label/__name__/values").get("data", []))

    def alert_state(self, name: str) -> str | None:
        alerts = _api(self.prom_url, "/api/v1/alerts").get("data", {}).get("alerts", [])
        return next((a["state"] for a in alerts if a["labels"].get("alertname") == name), None)


def _topics_and_overrides(tmp: Path) -> tuple[dict[str, str], dict[str, dict]]:
    from live.services.lag_monitor import DEFAULT_SUBSCRIPTIONS

    uid = uuid.uuid4().hex[:8]
    t = {k: f"t-e2e-{k}-{uid}" for k in ("raw", "eng", "alpha", "pred", "scored", "approved", "rejected",
                                           "exits", "orders", "done")}
    g = {svc: f"e2e-{uid}.{svc}" for svc in DEFAULT_SUBSCRIPTIONS}
    # namespace "": the operator's CLI trips the global kill switch, which only an
    # un-namespaced risk service reads (execution and exits share its state namespace).
    overrides = {
        "persist_bars": {"input_topic": t["raw"], "group": g["persist_bars"]},
        "features": {"input_topic": t["raw"], "output_topic": t["eng"], "group": g["features"]},
        "lean_alpha": {"input_topic": t["raw"], "output_topic": t["alpha"], "group": g["lean_alpha"]},
        "inference": {"input_topic": t["eng"], "output_topic": t["pred"], "group": g["inference"],
                      "poll_s": 5.0, "drift_window": DRIFT_WINDOW, "drift_min_recent": DRIFT_MIN_RECENT},
        "signal": {"input_topic": t["raw"], "output_topic": t["scored"], "predictions_topic": t["pred"],
                   "alpha_topic": t["alpha"], "group": g["signal"], "weights_file": tmp / "weights.json"},
        "risk": {"input_topic": t["scored"], "approved_topic": t["approved"], "rejected_topic": t["rejected"],
                 "exits_topic": t["exits"], "done_topic": t["done"], "orders_topic": t["orders"], "group": g["risk"],
                 "namespace": ""},
        "execution": {"market_topic": t["raw"], "approved_topic": t["approved"], "exits_topic": t["exits"],
                      "orders_topic": t["orders"], "done_topic": t["done"], "group": g["execution"],
                      "namespace": ""},
    }
    default_topic = {"market.raw": t["raw"], "engineered": t["eng"], "signals.scored": t["scored"],
                     "risk.approved": t["approved"], "exec.exits": t["exits"]}
    overrides["lag_monitor"] = {"interval_s": 1.0, "groups": {
        g[svc]: tuple(default_topic[x] for x in topics) for svc, topics in DEFAULT_SUBSCRIPTIONS.items()
        if svc in overrides}}  # the replay's services (not the optional persist_sentiment)
    return t, overrides


@pytest.fixture(scope="module")
def replay(tmp_path_factory, test_config_for, database_url, template_database, kafka_bootstrap):
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("the prometheus server binary is not installed (apt-get install prometheus; "
                    "scripts/ci_system_deps.sh)")
    from tests._model_data import register_sample_champion
    from awet_dagster.sources.sample import SampleSource
    from awet_dagster.storage.bars import copy_upsert_bars
    from awet_dagster.storage.db import connect
    from awet_kafka.producer import EventProducer
    from awet_kafka.settings import FAST_DEV_PRODUCER_SETTINGS, producer_config
    from live.loop_harness import LoopTracker, start_loop
    from live.registry import REPLAY_SERVICES
    from awet_kafka.admin import ensure_topics

    tmp = tmp_path_factory.mktemp("e2e")
    home = tmp / "home"
    with pytest.MonkeyPatch.context() as mp, contextlib.ExitStack() as cleanup:
        # A database of this module's own: the kill switch it trips, its orders and positions are
        # seen by no other test, and its gauges start from a clean state.
        database_url = cleanup.enter_context(isolated_database(database_url, template_database))
        for k in list(os.environ):
            if k.startswith(("AWET__", "VAULT_")) or k == "MLFLOW_TRACKING_URI":
                mp.delenv(k)
        env = {"AWET_ENV": "test", "AWET_HOME": str(home), "DATABASE_URL": database_url,
               "KAFKA_BOOTSTRAP": kafka_bootstrap}
        for k, v in env.items():
            mp.setenv(k, v)
        cfg = test_config_for(home)
        endpoints = Endpoints(database_url, kafka_bootstrap)

        # bars: the sample's, under symbols of this run (positions/orders of other tests stay apart)
        tag = uuid.uuid4().hex[:5].upper()
        bars = SampleSource().fetch(list(SYMBOLS), HISTORY[0], REPLAY[1], "daily").with_columns(
            pl.col("symbol").replace_strict({s: f"{s}{tag}" for s in SYMBOLS}))
        history = bars.filter(pl.col("ts").dt.date() < REPLAY[0])
        to_replay = bars.filter(pl.col("ts").dt.date() >= REPLAY[0]).sort("ts", "symbol")
        days = deque(frame for _, frame in to_replay.group_by("ts", maintain_order=True))
        with connect(database_url) as conn:
            with conn.transaction():
                copy_upsert_bars(conn, history)  # what `awet live --replay --preload-days` loads
            champion = register_sample_champion(cfg, conn, history, tmp)
        assert (home / "metrics" / "champion.prom").is_file()  # written by the promotion

        t, overrides = _topics_and_overrides(tmp)
        ensure_topics(kafka_bootstrap, {name: 1 for name in t.values()}, timeout_s=30)

        # the textfile exporter, as deployed
        textfile_port = free_port()
        exporter_log = cleanup.enter_context(open(tmp / "exporter.log", "wb"))  # noqa: SIM115
        exporter = subprocess.Popen(
            [sys.executable, "-m", "live.metrics", "--textfile-dir", str(home / "metrics"), "--port",
             str(textfile_port)], env={**os.environ, **env}, stdout=exporter_log, stderr=subprocess.STDOUT, cwd=REPO)
        cleanup.callback(_stop_process, exporter)

        # the whole loop, one process, one metrics endpoint
        metrics_port = free_port()
        tracker = LoopTracker()
        loop = start_loop(cfg, endpoints, names=REPLAY_SERVICES, overrides=overrides, tracker=tracker,
                          timeout_s=600, backoff_s=0.2, metrics_port=metrics_port, metrics_host="127.0.0.1")
        cleanup.callback(_stop_loop, loop)

        # Prometheus scraping both, evaluating the rules
        prom_port = free_port()
        (tmp / "alerts.yml").write_text(shortened_rules(ALERTS.read_text()))
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(tmp / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "awet", "static_configs": [
                    {"targets": [f"127.0.0.1:{metrics_port}"], "labels": {"component": "runner"}}]},
                {"job_name": "awet-textfile", "static_configs": [
                    {"targets": [f"127.0.0.1:{textfile_port}"], "labels": {"component": "textfile_exporter"}}]},
            ],
        }))
        prom_log = cleanup.enter_context(open(tmp / "prometheus.log", "wb"))  # noqa: SIM115
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=prom_log, stderr=subprocess.STDOUT, cwd=tmp)
        cleanup.callback(_stop_process, prom)

        r = RunningReplay(f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{metrics_port}",
                          f"http://127.0.0.1:{textfile_port}", t,
                          EventProducer(producer_config(kafka_bootstrap, producer=FAST_DEV_PRODUCER_SETTINGS)),
                          tracker, days, champion=champion)
        cleanup.callback(lambda: r.tripped and _kill_switch_cli("reset", "--reason", "e2e cleanup",
                                                                "--operator", "e2e-test"))

        def healthy() -> bool:
            code, body = _get(r.metrics_url + "/healthz")
            return code == 200 and all(f"{s}=running".encode() in body for s in REPLAY_SERVICES)

        _wait("/healthz of the replay: every service running", healthy, 120,
              on_poll=lambda: loop.alive or pytest.fail(f"the loop stopped: {loop.join(1)}"))
        _wait("the textfile exporter", lambda: _get(r.textfile_url + "/metrics")[0] == 200, 60,
              on_poll=lambda: exporter.poll() is None or pytest.fail((tmp / "exporter.log").read_text()))
        _wait("prometheus ready", lambda: _get(r.prom_url + "/-/ready")[0] == 200, 60,
              on_poll=lambda: prom.poll() is None or pytest.fail((tmp / "prometheus.log").read_text()))
        _wait("both scrape targets up", lambda: [tg["health"] for tg in _api(r.prom_url, "/api/v1/targets").get(
            "data", {}).get("activeTargets", [])] == ["up", "up"], 60)

        # phase A: the replay runs; then on, while a dashboard metric has no sample yet
        wanted = dashboard_metric_names() - PROMETHEUS_BUILTINS
        for _ in range(PHASE_A_DAYS):
            r.replay_day()
            r.scrape()
        for _ in range(EXTRA_DAYS):
            if wanted <= r.sampled:
                break
            r.replay_day()
            r.scrape()
        # Prometheus has scraped every target twice since the last bar (1 s interval): it holds
        # the final values. Waited on its own report of each target's last scrape, not guessed.
        since = time.time()

        def scraped_twice() -> bool:
            targets = _api(r.prom_url, "/api/v1/targets").get("data", {}).get("activeTargets", [])
            last = [datetime.fromisoformat(tg["lastScrape"].replace("Z", "+00:00")).timestamp() for tg in targets]
            return bool(last) and min(last) > since + 1.0

        _wait("two more Prometheus scrapes", scraped_twice, 30)
        r.scrape()
        yield r

        assert loop.alive, "the loop stopped during the tests"
        results = _stop_loop(loop)
        assert all(res.error is None for res in results.values()), {n: res.error for n, res in results.items()}
        assert _get(r.metrics_url + "/healthz", timeout_s=2)[0] == 0  # the endpoint is gone with the run


def _stop_process(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _stop_loop(loop) -> dict:
    if not loop.stop_event.is_set():
        loop.stop()
    return loop.join(60)


@pytest.mark.slow
@needs_prometheus
@pytest.mark.timeout(300)
def test_a_scrape_of_the_running_replay_has_samples_of_every_dashboard_metric(replay):
    wanted = dashboard_metric_names() - PROMETHEUS_BUILTINS
    assert len(wanted) >= 30, sorted(wanted)
    # straight from the endpoints, while the replay ran (samples, not only # TYPE lines)
    missing = wanted - replay.sampled
    assert not missing, f"dashboard metrics without a sample in the running replay's scrapes: {sorted(missing)}"
    # and through Prometheus, which scraped the same endpoints every second
    missing = wanted - replay.names_in_prometheus()
    assert not missing, f"dashboard metrics Prometheus never scraped: {sorted(missing)}"
    assert "up" in replay.names_in_prometheus()

    # what the served champion reports: its version (from the inference service and from the
    # promotion's textfile), its walk-forward OOS Sharpe, the drift of its forecasts
    version = replay.champion.version
    info = replay.values("awet_model_champion_info")
    assert {(m["job"], m["model"], m["version"]) for m, _ in info} == {
        ("awet", replay.champion.name, version), ("awet-textfile", replay.champion.name, version)}
    sharpe = replay.values("awet_model_oos_sharpe")
    assert len(sharpe) == 2 and all(v == pytest.approx(1.3) for _, v in sharpe), sharpe
    ((_, n_pred),) = replay.values("sum(awet_model_confidence_count)")
    assert n_pred >= DRIFT_WINDOW + DRIFT_MIN_RECENT
    ((_, drift),) = replay.values("max(awet_model_prediction_drift)")
    assert math.isfinite(drift) and drift >= 0
    ((_, mean_conf),) = replay.values("sum(awet_model_confidence_sum) / sum(awet_model_confidence_count)")
    assert 0 < mean_conf < 1
    # legitimately zero counters are exported at 0, not absent
    errors = replay.values('awet_broker_api_errors_total{venue="paper"}')
    assert [(m["kind"], v) for m, v in errors] == [("timeout", 0.0)], errors
    # every service of the replay reports itself up (the Pipeline dashboard's $service variable)
    from live.registry import REPLAY_SERVICES

    up = {m["service"]: v for m, v in replay.values('awet_service_up{job="awet"}')}
    assert up == {s: 1.0 for s in REPLAY_SERVICES}, up
    print(f"\nreplayed {replay.replayed_days} day(s) of {len(SYMBOLS)} symbols; {n_pred:.0f} predictions, "
          f"mean confidence {mean_conf:.3f}, drift (PSI) {drift:.3f}; "
          f"{len(wanted)} dashboard metrics all sampled")


@pytest.mark.slow
@needs_prometheus
@pytest.mark.timeout(300)
def test_every_dashboard_query_evaluates_in_prometheus_against_the_replay(replay):
    live_names = {n for n in dashboard_metric_names() if replay.values(f'count({{__name__="{n}"}})')}
    absent_now = dashboard_metric_names() - live_names
    assert absent_now <= STATEFUL, f"metrics without a current series: {sorted(absent_now)}"
    empty, checked = [], 0
    for where, expr in dashboard_exprs():
        res = replay.query(expand_grafana_variables(expr))
        assert res.get("status") == "success", f"{where}: {expr!r} -> {res}"
        if res["data"]["result"]:
            checked += 1
            continue
        if " offset " in expr:
            continue  # a baseline of the past: this Prometheus has no data that old
        assert metric_names(expr) & absent_now, f"{where}: {expr!r} returned nothing"
        empty.append(where)
    print(f"\n{checked} of {len(dashboard_exprs())} dashboard queries returned data; empty (no current series of "
          f"{sorted(absent_now)} or a past baseline): {empty}")


@pytest.mark.slow
@needs_prometheus
@pytest.mark.timeout(300)
def test_every_alert_rule_evaluates_against_the_replay(replay):
    groups = _api(replay.prom_url, "/api/v1/rules")["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(rules) == set(_rules_by_name(yaml.safe_load(ALERTS.read_text())))
    _wait("every rule evaluated at least once", lambda: all(  # never evaluated: "0001-01-01T00:00:00Z"
        not r["lastEvaluation"].startswith("0001-") for g in _api(replay.prom_url, "/api/v1/rules")["data"]["groups"]
        for r in g["rules"]), 10)
    for name, rule in rules.items():
        assert rule["health"] == "ok" and not rule.get("lastError"), (name, rule.get("lastError"))


@pytest.mark.slow
@needs_prometheus
@pytest.mark.timeout(300)
def test_kill_switch_tripped_mid_replay_fires_the_alert_in_prometheus(replay):
    def gauge() -> float | None:
        v = replay.values("max(awet_kill_switch_active)")
        return v[0][1] if v else None

    assert gauge() == 0.0
    for name in ("KillSwitchActivated", "AgentDown", "ModelOOSSharpeLow", "PipelineStale"):
        assert replay.alert_state(name) is None, name
    rejected_before = sum(v for _, v in replay.values('awet_risk_rejections_total{reason="kill_switch_tripped"}'))
    try:
        # the operator trips it; the risk service sees it (1 s cache) at the next bars' signals
        _kill_switch_cli("trip", "--reason", "e2e")
        replay.tripped = True
        _wait("awet_kill_switch_active == 1", lambda: gauge() == 1.0, 60, on_poll=replay.pace())
        _wait("KillSwitchActivated firing", lambda: replay.alert_state("KillSwitchActivated") == "firing", 30,
              on_poll=replay.pace())
        alert = next(a for a in _api(replay.prom_url, "/api/v1/alerts")["data"]["alerts"]
                     if a["labels"]["alertname"] == "KillSwitchActivated")
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"] == "docs/runbook.md#killswitchactivated"
        # the signals that passed meanwhile were rejected for it, and counted by reason
        _wait("kill switch rejections counted", lambda: sum(v for _, v in replay.values(
            'awet_risk_rejections_total{reason="kill_switch_tripped"}')) > rejected_before, 60,
            on_poll=replay.pace())

        # the operator resets it: the gauge goes back to 0 and the alert stops firing
        _kill_switch_cli("reset", "--reason", "e2e done", "--operator", "e2e-test")
        replay.tripped = False
        _wait("awet_kill_switch_active == 0", lambda: gauge() == 0.0, 60, on_poll=replay.pace())
        _wait("KillSwitchActivated resolved", lambda: replay.alert_state("KillSwitchActivated") is None, 30,
              on_poll=replay.pace())
    finally:
        if replay.tripped:
            _kill_switch_cli("reset", "--reason", "e2e cleanup", "--operator", "e2e-test")
            replay.tripped = False
    print(f"\nkill switch: tripped and reset while the replay ran ({replay.replayed_days} days replayed)")


# --------------------------------------------------------------------------- lag monitor (ConsumerLag* alerts)
def test_lag_monitor_watches_the_groups_the_services_really_use():
    from live.registry import LOOP_SERVICES, SERVICE_INPUTS
    from live.services.lag_monitor import DEFAULT_SUBSCRIPTIONS

    # The loop's groups and, when deployed, persist_sentiment's (lag on social.sentiment).
    assert set(DEFAULT_SUBSCRIPTIONS) == set(LOOP_SERVICES) | {"persist_sentiment"}
    for name, topics in DEFAULT_SUBSCRIPTIONS.items():
        assert set(topics) == set(SERVICE_INPUTS[name]), name


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_awet_live_lag_monitor_serves_its_metrics(tmp_path, database_url, kafka_bootstrap):
    """`awet live --service lag_monitor`: a non-bus service of the runner, on its own port."""
    from awet_dagster.observability.metrics import SERVICE_PORT_OFFSETS

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWET", "VAULT_"))}
    env.update({"AWET_ENV": "test", "AWET_HOME": str(tmp_path / "home"), "DATABASE_URL": database_url,
                "KAFKA_BOOTSTRAP": kafka_bootstrap,
                "AWET__OBSERVABILITY__METRICS_PORT_BASE": str(port - SERVICE_PORT_OFFSETS["lag_monitor"])})
    proc = subprocess.Popen([str(Path(sys.executable).parent / "awet"), "live", "--service", "lag_monitor",
                             "--max-seconds", "40"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=tmp_path)
    try:
        def scraped():
            code, body = _get(f"http://127.0.0.1:{port}/metrics")
            text = body.decode()
            measured = "awet_consumer_lag{" in text or "awet_lag_monitor_errors_total{" in text
            return code == 200 and 'awet_service_up{service="lag_monitor"} 1.0' in text and measured and text

        _wait("lag monitor metrics", scraped, 60,
              on_poll=lambda: proc.poll() is not None and pytest.fail(proc.stdout.read()))
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out  # a clean stop that says it was interrupted
    assert "lag_monitor: processed 0" in out, out
