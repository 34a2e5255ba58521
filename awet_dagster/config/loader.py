"""Layered configuration: code defaults < configs/base.yaml < configs/<AWET_ENV>.yaml
< environment (a ``.env`` file < the process's variables) < Vault.

The ``.env`` file: ``AWET_ENV_FILE`` if set (a missing file is an error), else ``.env`` in the
working directory if there is one. Its variables mean what the same environment variables
mean (``AWET__RISK__CVAR_LIMIT=0.02``, ``DATABASE_URL=…``, ``AWET_ENV=…``), a real variable
wins over the file's. A caller passing its own ``environ`` (tests) gets no ``.env`` from the
working directory, only the ``AWET_ENV_FILE`` that environ names.

Every leaf value remembers the layer it came from, so `awet config show` can say where a
value came from and a validation error can name the file or variable to fix.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from awet_dagster.config.layers import ConfigError, Layer, Path_, leaves, set_nested
from awet_dagster.config.schema import AwetConfig
from awet_dagster.config.vault import vault_layer

ENV_PREFIX = "AWET__"
# Conventional variables that map straight onto config keys (documented in the README).
ENV_ALIASES = {
    "DATABASE_URL": "database.url",
    "KAFKA_BOOTSTRAP": "kafka.bootstrap",
    "MLFLOW_TRACKING_URI": "mlflow.tracking_uri",
    "AWET_HOME": "paths.home",
    "DAGSTER_HOME": "dagster.home",
}
DEFAULT_LAYER = "default"
# Settings that were removed or moved, with what to use instead (each setting has one reader).
MOVED_KEYS = {
    "risk.trailing_stop_pct": "the trailing stop is the exit monitor's: use exits.trailing_stop_pct",
}
_SENSITIVE = re.compile(r"password|secret|token|api[_.-]?key|credential", re.IGNORECASE)


@dataclass(frozen=True)
class LoadedConfig:
    config: AwetConfig
    sources: dict[Path_, str]  # leaf key path -> layer that set it

    def source_of(self, key: str | Path_) -> str:
        path = tuple(key.split(".")) if isinstance(key, str) else key
        return _source_for(path, self.sources)


def find_config_dir(start: Path | None = None) -> Path:
    """`AWET_CONFIG_DIR`, else the nearest `configs/` holding base.yaml up from cwd."""
    explicit = os.environ.get("AWET_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "configs" / "base.yaml").is_file():
            return d / "configs"
    # Installed without a checkout: fall back to the repo the package came from.
    return Path(__file__).resolve().parents[2] / "configs"


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def yaml_layer(path: Path) -> Layer | None:
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    name = f"configs/{path.name}"
    return Layer(name, data, {k: name for k in leaves(data)})


def _parse_env_value(raw: str) -> Any:
    # Lists and mappings arrive as JSON/YAML flow text; scalars stay strings and are
    # coerced by the typed model (so "0.05" becomes a float only where a float is expected).
    text = raw.strip()
    if text.startswith(("[", "{")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return raw
    return raw


def env_layer(environ: Mapping[str, str], label: str = "env") -> Layer:
    """The config keys set by ``environ``'s AWET__* variables and aliases; each origin reads
    ``"<label> <VAR>"`` ("env DATABASE_URL", "env file .env AWET__RISK__CVAR_LIMIT")."""
    values: dict[str, Any] = {}
    origins: dict[Path_, str] = {}
    for var, dotted in ENV_ALIASES.items():
        if environ.get(var):
            path = tuple(dotted.split("."))
            set_nested(values, path, environ[var])
            origins[path] = f"{label} {var}"
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        path = tuple(p for p in var[len(ENV_PREFIX):].lower().split("__"))
        if not all(path):
            raise ConfigError(f"{label} {var}: malformed name; use AWET__SECTION__KEY")
        value = _parse_env_value(raw)
        set_nested(values, path, value)
        # A mapping value (JSON/YAML text) sets several leaves from one variable.
        for leaf in leaves({path[-1]: value}) if isinstance(value, Mapping) else [path[-1:]]:
            origins[(*path[:-1], *leaf)] = f"{label} {var}"
    return Layer(label, values, origins)


_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_DQ_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "$": "$"}


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a dotenv file: ``#`` comments and blank lines skipped, an optional
    ``export``, values bare (a `` #`` starts a comment), 'single-quoted' (literal) or
    "double-quoted" (\\n \\t \\" \\\\ escapes). No variable expansion. A line that is none of
    these is an error naming the file and line."""
    out: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"env file {path}: cannot read it: {exc}") from exc
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _ENV_LINE.match(stripped)
        if m is None:
            raise ConfigError(f"env file {path}:{n}: expected KEY=value, got {stripped[:60]!r}")
        key, raw = m.group(1), m.group(2).strip()
        if raw[:1] in ("'", '"'):
            value, rest = _quoted(raw)
            if value is None or (rest and not rest.startswith("#")):
                raise ConfigError(f"env file {path}:{n}: {key}: unterminated or malformed {raw[0]}-quoted value")
        else:
            value = re.split(r"\s+#", raw, maxsplit=1)[0].strip()
        out[key] = value
    return out


def _quoted(raw: str) -> tuple[str | None, str]:
    """(value, what follows the closing quote) of a quoted dotenv value; (None, "") if unclosed."""
    quote = raw[0]
    if quote == "'":
        end = raw.find("'", 1)
        return (None, "") if end < 0 else (raw[1:end], raw[end + 1:].strip())
    out, i = [], 1
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            out.append(_DQ_ESCAPES.get(raw[i + 1], ch + raw[i + 1]))
            i += 2
            continue
        if ch == '"':
            return "".join(out), raw[i + 1:].strip()
        out.append(ch)
        i += 1
    return None, ""


def env_file_path(environ: Mapping[str, str], *, look_in_cwd: bool) -> Path | None:
    """The ``.env`` file to read (see the module doc), or None."""
    explicit = environ.get("AWET_ENV_FILE")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"env AWET_ENV_FILE: {path} is not a file")
        return path
    local = Path.cwd() / ".env"
    return local if look_in_cwd and local.is_file() else None


def _merged_sources(layers: list[Layer]) -> tuple[dict[str, Any], dict[Path_, str]]:
    merged: dict[str, Any] = {}
    sources: dict[Path_, str] = {}
    for layer in layers:
        merged = _merge(merged, layer.values)
        for key in leaves(layer.values):
            # A layer replacing a whole subtree owns every leaf below it.
            for old in [k for k in sources if k[: len(key)] == key and len(k) > len(key)]:
                del sources[old]
            sources[key] = layer.origins.get(key, layer.name)
    return merged, sources


def _error_origin(loc: tuple[Any, ...], sources: dict[Path_, str]) -> str:
    return _source_for(tuple(str(p) for p in loc), sources)


def build_config(layers: list[Layer]) -> LoadedConfig:
    merged, sources = _merged_sources(layers)
    try:
        cfg = AwetConfig.model_validate(merged)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<root>"
            origin = _error_origin(err["loc"], sources)
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            if err["type"] == "extra_forbidden" and key in MOVED_KEYS:
                msg = f"no longer a setting: {MOVED_KEYS[key]}"
            got = err.get("input")
            if err["type"] != "extra_forbidden" and not _SENSITIVE.search(key) and not isinstance(got, (dict, list)):
                msg += f", got {got!r}"
            lines.append(f"{key}: {msg} (from {origin})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
    return LoadedConfig(cfg, sources)


def load_config_with_sources(
    environ: Mapping[str, str] | None = None,
    config_dir: Path | None = None,
    use_vault: bool = True,
) -> LoadedConfig:
    process_env = environ is None
    environ = os.environ if environ is None else environ
    env_file = env_file_path(environ, look_in_cwd=process_env)
    file_env = read_env_file(env_file) if env_file is not None else {}
    file_label = f"env file {env_file.name if env_file == Path.cwd() / '.env' else env_file}"
    # What the process sees: the file's variables under the real ones.
    effective = {**file_env, **environ}
    config_dir = config_dir or find_config_dir()
    env_name = effective.get("AWET_ENV", "dev")
    layers: list[Layer] = []
    for path in (config_dir / "base.yaml", config_dir / f"{env_name}.yaml"):
        layer = yaml_layer(path)
        if layer is not None:
            layers.append(layer)
    name_origin = "env AWET_ENV" if "AWET_ENV" in environ else f"{file_label} AWET_ENV"
    layers.append(Layer("AWET_ENV", {"env": env_name}, {"env": name_origin}))
    if file_env:
        layers.append(env_layer(file_env, label=file_label))
    layers.append(env_layer(environ))
    if use_vault:

        # Vault's location settings may themselves come from yaml/env.
        location = build_config(layers).config.vault
        layer = vault_layer(effective, location)
        if layer is not None:
            layers.append(layer)
    return build_config(layers)


def load_config(environ: Mapping[str, str] | None = None, config_dir: Path | None = None) -> AwetConfig:
    return load_config_with_sources(environ, config_dir).config


def effective_values(loaded: LoadedConfig) -> list[tuple[str, str, str]]:
    """(key, masked value, source) for every leaf, secrets masked."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: BaseModel, prefix: str) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            key = (*prefix, name)
            if isinstance(value, BaseModel):
                walk(value, key)
            elif isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
                for sub, sub_model in value.items():
                    walk(sub_model, (*key, sub))
            else:
                rows.append((".".join(key), _render(value), _source_for(key, loaded.sources)))

    walk(loaded.config, ())
    return rows


def _source_for(key: Path_, sources: dict[Path_, str]) -> str:
    """The layer of a leaf, of the nearest ancestor a layer set whole, or of its newest child."""
    for i in range(len(key), 0, -1):
        if key[:i] in sources:
            return sources[key[:i]]
    children = [v for k, v in sources.items() if k[: len(key)] == key]
    return children[-1] if children else DEFAULT_LAYER


def _render(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else "''"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        # Free-form client settings may carry credentials (sasl.password, ...).
        value = {k: ("********" if _SENSITIVE.search(str(k)) else v) for k, v in value.items()}
        return json.dumps(value, default=str)
    if isinstance(value, (tuple, list)):
        return json.dumps(value, default=str)
    return "null" if value is None else str(value)
