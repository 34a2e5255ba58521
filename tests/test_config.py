"""Configuration hierarchy: defaults < base.yaml < <env>.yaml < environment < Vault."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from awet_dagster.config import ConfigError, effective_values, load_config, load_config_with_sources


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    d = tmp_path / "configs"
    d.mkdir()
    (d / "base.yaml").write_text(
        "risk:\n  daily_loss_limit: 0.04\n  max_symbol_exposure: 9000\n"
        "signals:\n  weights:\n    tft: 0.6\n"
        "kafka:\n  topics:\n    market.raw: {partitions: 4}\n"
    )
    (d / "staging.yaml").write_text("risk:\n  max_symbol_exposure: 8000\n  cooldown_s: 30\n")
    return d


class FakeVault:
    """A KV v2 endpoint on loopback that records what it was asked."""

    def __init__(self, secrets: dict, token: str = "s.test-token", status: int = 200) -> None:
        self.secrets, self.token, self.status, self.requests = secrets, token, status, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                outer.requests.append((self.path, self.headers.get("X-Vault-Token")))
                if self.headers.get("X-Vault-Token") != outer.token:
                    return self._reply(403, {"errors": ["permission denied"]})
                if self.path.split("?")[0] != "/v1/secret/data/awet":
                    return self._reply(404, {"errors": []})
                if outer.status != 200:
                    return self._reply(outer.status, {"errors": ["boom"]})
                return self._reply(200, {"data": {"data": outer.secrets, "metadata": {"version": 3}}})

            def _reply(self, code, body):
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_code_defaults_apply_without_any_layer(tmp_path):
    cfg = load_config(environ={}, config_dir=tmp_path)  # empty dir: no yaml
    assert cfg.risk.daily_loss_limit == 0.05
    assert cfg.signals.weights.tft == 0.5
    assert cfg.signals.regime_scaling.bear == 0.7
    assert cfg.env == "dev"


def test_yaml_base_then_env_overlay(config_dir):
    loaded = load_config_with_sources(environ={"AWET_ENV": "staging"}, config_dir=config_dir)
    cfg = loaded.config
    assert cfg.risk.daily_loss_limit == 0.04  # base.yaml
    assert cfg.risk.max_symbol_exposure == 8000  # overlay beats base
    assert cfg.risk.cooldown_s == 30
    assert cfg.risk.max_orders_per_minute == 30  # code default
    assert cfg.kafka.topics["market.raw"].partitions == 4
    assert cfg.kafka.topics["engineered"].partitions == 3  # other topics keep defaults
    assert loaded.source_of("risk.max_symbol_exposure") == "configs/staging.yaml"
    assert loaded.source_of("risk.daily_loss_limit") == "configs/base.yaml"
    assert loaded.source_of("risk.max_orders_per_minute") == "default"


def test_environment_beats_yaml(config_dir):
    env = {"AWET_ENV": "staging", "AWET__RISK__MAX_SYMBOL_EXPOSURE": "7000", "KAFKA_BOOTSTRAP": "k:9092"}
    loaded = load_config_with_sources(environ=env, config_dir=config_dir)
    assert loaded.config.risk.max_symbol_exposure == 7000.0
    assert loaded.source_of("risk.max_symbol_exposure") == "env AWET__RISK__MAX_SYMBOL_EXPOSURE"
    assert loaded.config.kafka.bootstrap == "k:9092"
    assert loaded.source_of("kafka.bootstrap") == "env KAFKA_BOOTSTRAP"


def test_environment_mapping_value_merges(config_dir):
    env = {"AWET__KAFKA__TOPICS": '{"engineered": {"partitions": 8}}', "AWET__DATA__SYMBOLS": "[SPY, QQQ]"}
    cfg = load_config(environ=env, config_dir=config_dir)
    assert cfg.kafka.topics["engineered"].partitions == 8
    assert cfg.kafka.topics["market.raw"].partitions == 4  # yaml value survives the merge
    assert cfg.data.symbols == ("SPY", "QQQ")


def test_vault_beats_environment(config_dir):
    secrets = {"risk.max_symbol_exposure": 6000, "execution": {"alpaca_api_key": "AKVAULT"}}
    with FakeVault(secrets) as vault:
        env = {
            "AWET_ENV": "staging",
            "AWET__RISK__MAX_SYMBOL_EXPOSURE": "7000",
            "VAULT_ADDR": vault.addr,
            "VAULT_TOKEN": vault.token,
        }
        loaded = load_config_with_sources(environ=env, config_dir=config_dir)
    assert loaded.config.risk.max_symbol_exposure == 6000
    assert loaded.config.execution.alpaca_api_key.get_secret_value() == "AKVAULT"
    assert loaded.source_of("risk.max_symbol_exposure") == "vault:secret/awet"
    assert loaded.source_of("risk.cooldown_s") == "configs/staging.yaml"
    assert vault.requests and vault.requests[0][1] == vault.token


def test_vault_location_comes_from_lower_layers(config_dir):
    with FakeVault({"risk.cooldown_s": 5}) as vault:
        env = {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.token, "AWET__VAULT__PATH": "other"}
        with pytest.raises(ConfigError, match="no secret"):
            load_config(environ=env, config_dir=config_dir)
        assert vault.requests[0][0].startswith("/v1/secret/data/other")


def test_vault_errors_are_clear(config_dir):
    with FakeVault({}, status=500) as vault:
        env = {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.token}
        with pytest.raises(ConfigError, match="vault:secret/awet: cannot read"):
            load_config(environ=env, config_dir=config_dir)
    with FakeVault({}) as vault:
        env = {"VAULT_ADDR": vault.addr, "VAULT_TOKEN": "wrong"}
        with pytest.raises(ConfigError, match="permission denied"):
            load_config(environ=env, config_dir=config_dir)


def test_vault_unreachable_fails_fast(config_dir):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(environ={"VAULT_ADDR": f"http://127.0.0.1:{port}", "VAULT_TOKEN": "x"}, config_dir=config_dir)
    assert time.monotonic() - t0 < 10


def test_wrong_type_names_key_and_variable(config_dir):
    with pytest.raises(ConfigError) as exc:
        load_config(environ={"AWET__RISK__DAILY_LOSS_LIMIT": "lots"}, config_dir=config_dir)
    text = str(exc.value)
    assert "risk.daily_loss_limit" in text and "env AWET__RISK__DAILY_LOSS_LIMIT" in text and "'lots'" in text


def test_unknown_key_names_key_and_file(config_dir):
    (config_dir / "base.yaml").write_text("risk:\n  daily_los_limit: 0.04\n")
    with pytest.raises(ConfigError) as exc:
        load_config(environ={}, config_dir=config_dir)
    assert "risk.daily_los_limit: unknown key (from configs/base.yaml)" in str(exc.value)


def test_out_of_range_value_names_overlay(config_dir):
    (config_dir / "prod.yaml").write_text("kafka:\n  topics:\n    exec.done: {partitions: 0}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(environ={"AWET_ENV": "prod"}, config_dir=config_dir)
    assert "kafka.topics.exec.done.partitions" in str(exc.value)
    assert "configs/prod.yaml" in str(exc.value)


def test_invalid_yaml_is_reported_with_file(config_dir):
    (config_dir / "base.yaml").write_text("risk: [unclosed\n")
    with pytest.raises(ConfigError, match="base.yaml: not valid YAML"):
        load_config(environ={}, config_dir=config_dir)


def test_config_is_frozen(config_dir):
    cfg = load_config(environ={}, config_dir=config_dir)
    with pytest.raises(ValidationError):
        cfg.risk.daily_loss_limit = 0.5  # type: ignore[misc]


def test_secrets_are_masked_everywhere(config_dir):
    env = {
        "AWET__EXECUTION__ALPACA_SECRET_KEY": "supersecret-value",
        "DATABASE_URL": "postgresql://u:hunter2@db/awet",
        "AWET__KAFKA__CLIENT": '{"sasl.password": "pw-in-client", "security.protocol": "SASL_SSL"}',
    }
    loaded = load_config_with_sources(environ=env, config_dir=config_dir)
    rendered = json.dumps(effective_values(loaded))
    for secret in ("supersecret-value", "hunter2", "pw-in-client"):
        assert secret not in rendered
        assert secret not in repr(loaded.config)
    assert "SASL_SSL" in rendered


def test_cli_config_show_prints_sources_and_masks(config_dir, monkeypatch):
    from awet_cli.main import app

    monkeypatch.setenv("AWET_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("AWET_ENV", "staging")
    monkeypatch.setenv("AWET__EXECUTION__ALPACA_API_KEY", "AKSECRET123")
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    result = CliRunner().invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in json.loads(result.output)}
    assert rows["risk.max_symbol_exposure"] == {
        "key": "risk.max_symbol_exposure", "value": "8000.0", "source": "configs/staging.yaml"
    }
    assert rows["execution.alpaca_api_key"]["value"] == "********"
    assert "AKSECRET123" not in result.output

    monkeypatch.setenv("AWET__RISK__COOLDOWN_S", "soon")
    bad = CliRunner().invoke(app, ["config", "show"])
    assert bad.exit_code == 2
    assert "risk.cooldown_s" in bad.output and "AWET__RISK__COOLDOWN_S" in bad.output


def test_repo_configs_are_valid_for_every_environment():
    repo_configs = Path(__file__).resolve().parents[1] / "configs"
    for overlay in sorted(repo_configs.glob("*.yaml")):
        if overlay.name == "base.yaml":
            continue
        cfg = load_config(environ={"AWET_ENV": overlay.stem}, config_dir=repo_configs)
        assert cfg.env == overlay.stem


ENV_FILE = """\
# a comment, then the shapes a .env file takes
export AWET_ENV=staging
AWET__RISK__COOLDOWN_S=45   # trailing comment
AWET__RISK__MAX_SYMBOL_EXPOSURE='7500'
KAFKA_BOOTSTRAP="file:9092"
AWET__EXECUTION__ALPACA_API_KEY="AK \\"quoted\\" #not-a-comment"

"""


def test_env_file_is_the_environment_layer_below_real_variables(config_dir, tmp_path):
    env_file = tmp_path / "awet.env"
    env_file.write_text(ENV_FILE)
    loaded = load_config_with_sources(
        environ={"AWET_ENV_FILE": str(env_file), "AWET__RISK__COOLDOWN_S": "20"}, config_dir=config_dir)
    cfg = loaded.config
    assert cfg.env == "staging"  # AWET_ENV from the file chose the overlay
    assert loaded.source_of("risk.max_symbol_exposure") == f"env file {env_file} AWET__RISK__MAX_SYMBOL_EXPOSURE"
    assert cfg.risk.max_symbol_exposure == 7500  # above configs/staging.yaml's 8000
    assert cfg.risk.cooldown_s == 20 and loaded.source_of("risk.cooldown_s") == "env AWET__RISK__COOLDOWN_S"
    assert cfg.kafka.bootstrap == "file:9092"
    assert cfg.execution.alpaca_api_key.get_secret_value() == 'AK "quoted" #not-a-comment'


def test_env_file_in_the_working_directory_is_read_by_the_cli(config_dir, tmp_path, monkeypatch):
    from awet_cli.main import app

    (tmp_path / ".env").write_text("AWET__RISK__COOLDOWN_S=33\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWET_CONFIG_DIR", str(config_dir))
    for var in ("AWET_ENV", "AWET__RISK__COOLDOWN_S", "AWET_ENV_FILE", "VAULT_ADDR"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in json.loads(result.output)}
    assert rows["risk.cooldown_s"] == {"key": "risk.cooldown_s", "value": "33", "source": "env file .env AWET__RISK__COOLDOWN_S"}
    # A caller's own environ (tests, embedding code) does not pick up the working directory's file.
    assert load_config(environ={}, config_dir=config_dir).risk.cooldown_s == 60


@pytest.mark.parametrize(("text", "error"), [
    ("JUST A LINE\n", r"awet.env:1: expected KEY=value"),
    ("A=1\nB='open\n", r"awet.env:2: B: unterminated or malformed '-quoted value"),
    ('C="x" y\n', r"awet.env:1: C: unterminated or malformed \"-quoted value"),
    ("AWET__RISK__COOLDOWN_S=soon\n", r"risk.cooldown_s: .*got 'soon' \(from env file .*awet.env AWET__RISK__COOLDOWN_S\)"),
])
def test_a_bad_env_file_names_the_file_and_line(config_dir, tmp_path, text, error):
    env_file = tmp_path / "awet.env"
    env_file.write_text(text)
    with pytest.raises(ConfigError, match=error):
        load_config(environ={"AWET_ENV_FILE": str(env_file)}, config_dir=config_dir)


def test_a_missing_named_env_file_is_an_error(config_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"AWET_ENV_FILE: .*nope.env is not a file"):
        load_config(environ={"AWET_ENV_FILE": str(tmp_path / "nope.env")}, config_dir=config_dir)


def test_a_removed_setting_says_what_replaced_it(config_dir):
    with pytest.raises(ConfigError, match=r"risk.trailing_stop_pct: no longer a setting: .*exits.trailing_stop_pct"):
        load_config(environ={"AWET__RISK__TRAILING_STOP_PCT": "0.03"}, config_dir=config_dir)

