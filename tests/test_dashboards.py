"""docker/grafana: provisioning files and the three dashboards; every PromQL expression only
references metrics the code exports (and, when promtool is there, really parses)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from awet_dagster.observability.promql import dashboard_queries, expand_grafana_variables, metric_names, tokenize
from awet_dagster.observability.metrics import AwetMetrics

REPO = Path(__file__).resolve().parents[1]
GRAFANA = REPO / "docker" / "grafana"
DASHBOARDS = ("pipeline", "trading", "model")
PROMETHEUS_BUILTINS = {"up"}


def _dashboard(name: str) -> dict:
    return json.loads((GRAFANA / "dashboards" / f"{name}.json").read_text())


_exprs = dashboard_queries


def test_provisioning_files():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "awet.yml").read_text())
    assert prov["providers"][0]["type"] == "file"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_structure(name):
    d = _dashboard(name)
    assert d["uid"] == f"awet-{name}" and d["title"].startswith("AWET")
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "prometheus"
        assert all(t["datasource"]["uid"] == "prometheus" for t in p["targets"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24


def test_dashboards_cover_the_required_topics():
    used = {name: set().union(*(metric_names(e) for _, e in _exprs(_dashboard(name)))) for name in DASHBOARDS}
    assert {"awet_events_in_total", "awet_consumer_lag", "awet_dead_letters_total",
            "awet_handler_latency_seconds_bucket"} <= used["pipeline"]
    assert {"awet_pnl_total_dollars", "awet_daily_pnl_dollars", "awet_exposure_dollars", "awet_orders_submitted_total",
            "awet_risk_rejections_total", "awet_slippage_bps_bucket", "awet_kill_switch_active"} <= used["trading"]
    assert {"awet_model_confidence_sum", "awet_model_prediction_drift", "awet_model_oos_sharpe",
            "awet_model_champion_info"} <= used["model"]


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_queries_use_only_exported_metrics(name):
    exported = AwetMetrics().exported_names() | PROMETHEUS_BUILTINS
    for title, expr in _exprs(_dashboard(name)):
        used = metric_names(expr)
        assert used, f"{name}/{title}: no metric in {expr!r}"
        assert used <= exported, f"{name}/{title}: unknown metrics {sorted(used - exported)}"


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (group, topic) (awet_consumer_lag{group=~"a|b"}) > 100', {"awet_consumer_lag"}),
    ('histogram_quantile(0.99, sum(rate(x_bucket{s="$service"}[$__rate_interval])) by (le))', {"x_bucket"}),
    ("a / ignoring(b) group_left(c) d offset 5m", {"a", "d"}),
    ("time() - max(ts) > 900 and on () (hour() >= 14 < 20)", {"ts"}),
    ('count_values("v", foo) or bar[5m:1m]', {"foo", "bar"}),
    ("1e-3 * rate(m_total[1h30m])", {"m_total"}),
])
def test_tokenizer(expr, names):
    assert metric_names(expr) == names


def test_tokenizer_rejects_unbalanced():
    with pytest.raises(ValueError):
        tokenize("sum(rate(x[5m])")


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package `prometheus`; scripts/ci_system_deps.sh)")
def test_dashboard_queries_parse_with_promtool(tmp_path):
    rules = []
    for name in DASHBOARDS:
        for i, (_title, expr) in enumerate(_exprs(_dashboard(name))):
            rules.append({"record": f"awet:dash_{name}_{i}", "expr": expand_grafana_variables(expr)})
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dash", "rules": rules}]}))
    res = subprocess.run([shutil.which("promtool"), "check", "rules", str(tmp_path / "rules.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
