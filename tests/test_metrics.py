"""The metrics: the catalogue (awet_dagster/observability/metrics.py), the bus hook adapter, the HTTP endpoint (live/metrics.py), the textfiles."""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from awet_dagster.observability import textfile as tf
from awet_kafka.bus import MetricSample
from awet_dagster.observability.metrics import SERVICE_PORT_OFFSETS, AwetMetrics, reason_code, service_port
from live.metrics import start_metrics_server


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback test server
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_every_name_is_prefixed_and_registries_are_independent():
    a, b = AwetMetrics(), AwetMetrics()  # two registries in one process: no duplicate errors
    names = {n for n in a.exported_names() if not n.startswith("process_")}
    assert names and all(n.startswith("awet_") for n in names)
    a.service("x")(MetricSample("messages_in", "t", 3))
    assert a.registry.get_sample_value("awet_events_in_total", {"service": "x", "topic": "t"}) == 3
    assert b.registry.get_sample_value("awet_events_in_total", {"service": "x", "topic": "t"}) is None


def test_service_metrics_maps_every_bus_sample():
    m = AwetMetrics(clock=lambda: 1_000.0)
    s = m.service("features")
    for sample in [
        MetricSample("messages_in", "market.raw", 1), MetricSample("messages_in", "market.raw", 1),
        MetricSample("messages_out", "engineered", 1), MetricSample("dead_letters", "market.raw", 1),
        MetricSample("commit_failures", "market.raw", 1), MetricSample("handle_seconds", "market.raw", 0.002),
        MetricSample("event_age_seconds", "market.raw", 0.3), MetricSample("batch_seconds", "market.raw", 0.01),
        MetricSample("something_new", "x", 1),  # ignored, never raises
    ]:
        s(sample)
    v = m.registry.get_sample_value
    assert v("awet_events_in_total", {"service": "features", "topic": "market.raw"}) == 2
    assert v("awet_events_out_total", {"service": "features", "topic": "engineered"}) == 1
    assert v("awet_dead_letters_total", {"service": "features", "topic": "market.raw"}) == 1
    assert v("awet_commit_failures_total", {"service": "features"}) == 1
    assert v("awet_handler_latency_seconds_count", {"service": "features"}) == 1
    assert v("awet_handler_latency_seconds_bucket", {"service": "features", "le": "0.0025"}) == 1
    assert v("awet_event_age_seconds_sum", {"service": "features"}) == pytest.approx(0.3)
    assert v("awet_batch_seconds_count", {"service": "features"}) == 1
    assert v("awet_pipeline_last_event_timestamp_seconds", {"service": "features"}) == 1_000.0


def test_domain_metrics():
    now = [10_000.0]
    m = AwetMetrics(clock=lambda: now[0])
    s = m.service("execution")
    v = m.registry.get_sample_value
    assert v("awet_kill_switch_active") is None  # owned gauges only appear once set
    s.set_up()
    s.set_kill_switch(True)
    s.set_pnl(realised=120.0, unrealised=-20.0)
    s.set_daily_pnl(-3500.0)
    s.set_exposure({"SPY": 5000.0, "AAPL": -2000.0})
    s.set_exposure({"SPY": 4000.0})  # AAPL closed: its series disappears
    s.order_submitted("BUY", "paper")
    s.risk_rejection("throttle: 31 orders in the last minute (max 30)")
    s.broker_error("alpaca", "http_429")
    s.slippage("SPY", "paper", 7.5)
    s.bar_seen("SPY", 9_940.0)
    s.bar_seen("SPY", 9_000.0)  # older bar: ignored
    s.bar_to_order(0.4)
    s.prediction(0.72)
    s.set_drift(0.12)
    s.set_champion("awet-tft", 3, 0.8)
    s.set_champion("awet-tft", 4, 1.1)
    assert v("awet_risk_signals_held") is None  # owned by risk, in event-time order only
    s.event_order(held=4, incomplete_total=2)
    s.event_order(held=0, incomplete_total=3)  # a running count: the counter adds what is new
    assert v("awet_risk_signals_held") == 0 and v("awet_risk_incomplete_bar_times_total") == 3
    assert v("awet_service_up", {"service": "execution"}) == 1
    assert v("awet_kill_switch_active") == 1
    assert v("awet_pnl_total_dollars") == 100.0
    assert v("awet_daily_pnl_dollars") == -3500.0
    assert v("awet_exposure_total_dollars") == 4000.0
    assert v("awet_exposure_dollars", {"symbol": "AAPL"}) is None
    assert v("awet_orders_submitted_total", {"side": "buy", "venue": "paper"}) == 1
    assert v("awet_risk_rejections_total", {"reason": "throttle"}) == 1
    assert v("awet_broker_api_errors_total", {"venue": "alpaca", "kind": "http_429"}) == 1
    assert v("awet_slippage_last_bps", {"symbol": "SPY"}) == 7.5
    assert v("awet_slippage_bps_bucket", {"venue": "paper", "le": "10.0"}) == 1
    assert v("awet_last_bar_age_seconds", {"symbol": "SPY"}) == 60.0
    now[0] += 30
    assert v("awet_last_bar_age_seconds", {"symbol": "SPY"}) == 90.0  # computed at scrape time
    assert v("awet_bar_to_order_latency_seconds_count") == 1
    assert v("awet_model_confidence_sum") == pytest.approx(0.72)
    assert v("awet_model_prediction_drift") == pytest.approx(0.12)
    assert v("awet_model_champion_info", {"model": "awet-tft", "version": "3"}) is None
    assert v("awet_model_champion_info", {"model": "awet-tft", "version": "4"}) == 1
    assert v("awet_model_oos_sharpe", {"model": "awet-tft"}) == 1.1


def test_zero_series_exist_before_the_first_event():
    # Counters that are legitimately 0 are exported at 0 (increase() then sees the first event).
    m = AwetMetrics()
    s = m.service("execution")
    v = m.registry.get_sample_value
    s(MetricSample("messages_in", "market.raw", 1))
    assert v("awet_dead_letters_total", {"service": "execution", "topic": "market.raw"}) == 0
    assert v("awet_commit_failures_total", {"service": "execution"}) == 0
    s.venue_ready("paper")
    assert v("awet_broker_api_errors_total", {"venue": "paper", "kind": "timeout"}) == 0
    assert v("awet_orders_submitted_total", {"side": "buy", "venue": "paper"}) == 0
    assert v("awet_orders_submitted_total", {"side": "sell", "venue": "paper"}) == 0
    assert v("awet_slippage_bps_count", {"venue": "paper"}) == 0


def test_no_sum_is_claimed_for_the_signed_slippage_histogram():
    # A histogram with negative buckets exports no _sum (prometheus_client, as OpenMetrics
    # requires): the catalogue must not offer one to alert rules and dashboards.
    m = AwetMetrics()
    m.service("execution").slippage("SPY", "paper", -3.0)
    text = m.exposition().decode()
    assert 'awet_slippage_bps_count{venue="paper"} 1.0' in text and "awet_slippage_bps_sum" not in text
    assert "awet_slippage_bps_sum" not in m.exported_names()
    assert "awet_slippage_bps_bucket" in m.exported_names() and "awet_model_confidence_sum" in m.exported_names()


def test_champion_series_follow_the_served_model():
    m = AwetMetrics()
    s = m.service("inference")
    v = m.registry.get_sample_value
    s.set_champion("awet-tft", 3, -0.2)
    s.set_champion("other", 1)  # no Sharpe known for it: the previous model's must not linger
    assert v("awet_model_oos_sharpe", {"model": "awet-tft"}) is None
    assert v("awet_model_champion_info", {"model": "other", "version": "1"}) == 1
    s.set_champion("awet-tft", 4, 0.7)
    s.clear_champion()  # idle: nothing served
    assert v("awet_model_champion_info", {"model": "awet-tft", "version": "4"}) is None
    assert v("awet_model_oos_sharpe", {"model": "awet-tft"}) is None


def test_champion_source_reports_the_served_versions_oos_sharpe():
    from awet_dagster.inference import ChampionSource
    from awet_dagster.model.registry import ModelRef

    class Registry:
        refs = iter([ModelRef("m", "1", "r1", "u"), ModelRef("m", "2", "r2", "u"), None])

        def get_champion(self):
            return next(self.refs)

        def load_version(self, version):
            return object()

        def version_oos_sharpe(self, version):
            return {"1": 0.8}[version]  # v2: KeyError, like an unreadable run

    src = ChampionSource(Registry(), poll_s=0.0)
    assert src.current()[0] == "m:1" and src.oos_sharpe == 0.8
    assert src.current()[0] == "m:2" and src.oos_sharpe is None  # served all the same
    assert src.current() is None and src.oos_sharpe is None


@pytest.mark.parametrize(("text", "code"), [
    ("throttle: 31 orders", "throttle"), ("Max Exposure exceeded", "max_exposure_exceeded"),
    ("", "unknown"), ("   :x", "unknown"), ("x" * 100, "x" * 40),
])
def test_reason_code_is_bounded(text, code):
    assert reason_code(text) == code


def test_service_ports_from_config(test_config_for, tmp_path):
    cfg = test_config_for(tmp_path / "awet")
    base = cfg.observability.metrics_port_base
    assert service_port(cfg, "runner") == base
    assert service_port(cfg, "lag_monitor") == base + SERVICE_PORT_OFFSETS["lag_monitor"]
    assert len(set(SERVICE_PORT_OFFSETS.values())) == len(SERVICE_PORT_OFFSETS)
    with pytest.raises(KeyError):
        service_port(cfg, "nope")


def test_http_endpoint_serves_metrics_health_and_textfiles(tmp_path):
    m = AwetMetrics()
    m.service("risk").set_up()
    healthy = [True]
    tf.write_champion_metrics(tmp_path, "awet-tft", 7, -0.25)
    with start_metrics_server(0, m, textfile_dir=tmp_path, health=lambda: (healthy[0], "db ok" if healthy[0] else "db down")) as srv:
        assert srv.host == "127.0.0.1" and srv.port > 0
        code, body = _get(srv.url + "/metrics")
        assert code == 200
        fams = {f.name: f for f in text_string_to_metric_families(body)}  # parses as a whole
        assert fams["awet_service_up"].samples[0].value == 1
        assert fams["awet_model_oos_sharpe"].samples[0].value == -0.25
        assert fams["awet_model_champion_info"].samples[0].labels == {"model": "awet-tft", "version": "7"}
        assert _get(srv.url + "/healthz") == (200, "db ok\n")
        healthy[0] = False
        assert _get(srv.url + "/healthz") == (503, "db down\n")
        assert _get(srv.url + "/nope")[0] == 404


def test_textfile_render_is_valid_and_atomic(tmp_path):
    path = tf.write_textfile(tmp_path, "train", [
        tf.Sample("awet_model_oos_sharpe", 1.5, {"model": 'we"ird\\name\n'}),
        tf.Sample("awet_model_oos_sharpe", float("nan"), {"model": "other"}),
    ], now=123.0)
    assert path == tmp_path / "train.prom" and not list(tmp_path.glob(".*tmp"))
    fams = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    samples = {s.labels["model"]: s.value for s in fams["awet_model_oos_sharpe"].samples}
    assert samples['we"ird\\name\n'] == 1.5
    assert samples["other"] != samples["other"]  # NaN
    assert fams["awet_textfile_write_timestamp_seconds"].samples[0].value == 123.0
    assert tf.read_textfiles(tmp_path / "missing") == ""
    with pytest.raises(ValueError):
        tf.render([tf.Sample("bad name", 1)])
    with pytest.raises(ValueError):
        tf.write_textfile(tmp_path, "../x", [])


def test_textfile_metrics_are_declared_with_the_same_labels_in_the_catalogue():
    m = AwetMetrics()
    declared = {tf.MODEL_OOS_SHARPE: m.model_oos_sharpe, tf.MODEL_CHAMPION_INFO: m.champion_info,
                tf.TEXTFILE_WRITE_TS: m.textfile_write_ts}
    assert set(declared) == set(tf.TEXTFILE_METRICS)
    for name, (_help, labels) in tf.TEXTFILE_METRICS.items():
        assert name in m.exported_names()
        assert declared[name]._labelnames == labels
