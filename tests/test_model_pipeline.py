"""The model lifecycle through Dagster (in-process `materialize`), a real MLflow store, real
ONNX Runtime and the real embedded PostgreSQL:

- bars with a planted, learnable signal → the candidate passes the gate, is exported,
  registered and promoted by the sensor;
- bars with no signal (a random walk: targets carry no information) → the gate fails,
  nothing downstream runs, the champion stays;
- a tampered ONNX graph fails the blocking parity check and is never registered.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from dagster import AssetKey, DagsterInstance, build_sensor_context, materialize

from awet_dagster.sources.registry import register_source
from awet_dagster.sources.synthetic import session_timestamps
from awet_dagster.storage.db import connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
SYMBOLS = ["AAA", "BBB", "CCC"]
NOISE = 0.003


def _bars(symbols, start, end, beta: float, seed: int) -> pl.DataFrame:
    """Daily bars where today's abnormal volume predicts tomorrow's return:
    r_{t+1} = beta * z(volume_t) + noise (beta=0: volume says nothing, a random walk)."""
    ts = session_timestamps(start, end, "daily")
    frames = []
    for i, sym in enumerate(symbols):
        rng = np.random.default_rng(seed + i)
        z = rng.normal(0.0, 1.0, len(ts))
        volume = 2_000_000.0 * np.exp(0.5 * z)
        r = np.empty(len(ts))
        r[0] = 0.0
        r[1:] = beta * z[:-1] + rng.normal(0.0, NOISE, len(ts) - 1)
        close = 50.0 * np.exp(np.cumsum(r))
        open_ = np.concatenate([[50.0], close[:-1]])
        frames.append(pl.DataFrame({
            "symbol": sym, "bar_type": "daily", "ts": ts,
            "open": open_, "high": np.maximum(open_, close) * 1.002, "low": np.minimum(open_, close) * 0.998,
            "close": close, "volume": volume, "bid": None, "ask": None, "source": "planted",
        }))
    return pl.concat(frames).with_columns(pl.col("bid").cast(pl.Float64), pl.col("ask").cast(pl.Float64))


class PlantedSource:
    name = "planted"

    def __init__(self, beta: float, seed: int) -> None:
        self.beta, self.seed = beta, seed

    def fetch(self, symbols, start, end, timeframe):
        from datetime import date

        frame = _bars(SYMBOLS, date(2012, 1, 3), date(2017, 12, 29), self.beta, self.seed)
        return frame.filter(pl.col("symbol").is_in(list(symbols)) & (pl.col("ts") >= start) & (pl.col("ts") < end))


@pytest.fixture
def model_env(monkeypatch, database_url, kafka_bootstrap, tmp_path):
    env = {
        "AWET_ENV": "test", "AWET_HOME": str(tmp_path / "awet"), "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP": kafka_bootstrap, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "AWET__DATA__SYMBOLS": "[AAA, BBB, CCC]", "AWET__DATA__START": "2012-01-03",
        "AWET__DATA__END": "2017-12-29", "AWET__DATA__CUTOFF": "2017-06-01",
        # A tiny but real TFT: enough to learn a planted AR(1) signal in seconds per fold.
        "AWET__MODEL__HIDDEN_SIZE": "8", "AWET__MODEL__ATTENTION_HEADS": "1", "AWET__MODEL__LOOKBACK": "20",
        "AWET__MODEL__MAX_EPOCHS": "8", "AWET__MODEL__MAX_TRAIN_WINDOWS": "800", "AWET__MODEL__MAX_VAL_WINDOWS": "200",
        "AWET__MODEL__LEARNING_RATE": "0.03", "AWET__MODEL__DROPOUT": "0.0",
        "AWET__MODEL__EARLY_STOPPING_PATIENCE": "4",
        # The planted edge lasts one bar: hold one bar, like the signal's horizon.
        "AWET__EXITS__MAX_HOLD_BARS_DAILY": "1",
        "AWET__MLFLOW__MODEL_NAME": f"awet-test-{tmp_path.name[-12:]}",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("VAULT_ADDR", raising=False)
    with connect(database_url) as conn:
        for table in ("bars", "features", "rejected_bars"):
            conn.execute(f"DELETE FROM {table} WHERE symbol = ANY(%s)", (SYMBOLS,))
    return env


def _assets():
    from assets.features import build_features
    from assets.market_data import build_raw_bars
    from assets.model import build_model_assets
    from assets.platform import platform_preflight

    return [platform_preflight, build_raw_bars("daily"), build_features("daily"), *build_model_assets("daily")]


def _materialize(source: str, instance):
    from resources.database import DatabaseResource
    from resources.market_data import MarketDataResource

    return materialize(
        _assets(), instance=instance, raise_on_error=False,
        resources={"database": DatabaseResource(), "market_data": MarketDataResource(source=source)},
        tags={"dagster/asset_partition_range_start": SYMBOLS[0], "dagster/asset_partition_range_end": SYMBOLS[-1]},
    )


def _checks(result):
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}


def _materialized(result):
    return {e.asset_key for e in result.get_asset_materialization_events()}


def _promote_via_sensor(instance):
    from sensors.promotion import model_promotion_sensor, promote_model_job
    from resources.database import DatabaseResource

    sensor_result = model_promotion_sensor(build_sensor_context(instance=instance))
    for req in sensor_result.run_requests:
        run = promote_model_job.execute_in_process(run_config=req.run_config, instance=instance,
                                                   resources={"database": DatabaseResource()})
        assert run.success
    return sensor_result


def test_planted_signal_passes_the_gate_and_is_promoted_then_noise_is_blocked(model_env, database_url):
    from awet_dagster.config import load_config
    from awet_dagster.model import registry

    register_source("planted", lambda **_: PlantedSource(beta=0.01, seed=7))
    register_source("noise", lambda **_: PlantedSource(beta=0.0, seed=7))
    instance = DagsterInstance.ephemeral()

    good = _materialize("planted", instance)
    checks = _checks(good)
    assert all(checks.values()), checks
    assert AssetKey(["daily", "registered_model"]) in _materialized(good)
    cfg = load_config()
    assert registry.get_champion(cfg) is None  # registration alone promotes nothing
    sensor_result = _promote_via_sensor(instance)
    assert len(sensor_result.run_requests) == 1
    champion = registry.get_champion(cfg)
    assert champion is not None and champion.version == "1"
    with connect(database_url) as conn:
        audit = conn.execute(
            "SELECT actor, details->>'reason' FROM audit_log WHERE action = 'model.promote' AND subject = %s",
            (f"{cfg.mlflow.model_name}:v1",),
        ).fetchall()
        folds = conn.execute("SELECT count(*) FROM walk_forward_results WHERE fold >= 0 AND model_name = %s",
                             (cfg.mlflow.model_name,)).fetchone()[0]
    assert audit and "every check passed" in audit[0][1]
    assert folds >= 6
    # The promoted model loads from the registry and predicts (ONNX Runtime).
    predictor = registry.load_champion(cfg)
    assert predictor.preprocessing.horizons

    # Same pipeline, same universe, targets without information: blocked at the gate.
    bad = _materialize("noise", instance)
    assert not bad.success
    bad_checks = _checks(bad)
    assert bad_checks["median_oos_sharpe"] is False
    assert not ({AssetKey(["daily", k]) for k in ("onnx_model", "registered_model")} & _materialized(bad))
    assert len(registry.list_versions(cfg)) == 1  # nothing registered
    _promote_via_sensor(instance)
    assert registry.get_champion(cfg).version == "1"  # the champion stays


def test_tampered_onnx_fails_parity_and_is_not_registered(model_env, monkeypatch):
    import onnx

    from awet_dagster.model import onnx_export

    register_source("planted", lambda **_: PlantedSource(beta=0.01, seed=7))
    real_export = onnx_export.export_onnx

    def tampered_export(trained, directory, example_batch=2):
        path = real_export(trained, directory, example_batch)
        model = onnx.load(str(path))
        biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        arr = onnx.numpy_helper.to_array(biggest).copy()
        arr += np.random.default_rng(0).normal(0, 0.05, arr.shape).astype(arr.dtype)
        biggest.CopyFrom(onnx.numpy_helper.from_array(arr, biggest.name))
        onnx.save(model, str(path))
        return path

    monkeypatch.setattr(onnx_export, "export_onnx", tampered_export)
    # The model's quality is irrelevant here: train as little as possible.
    monkeypatch.setenv("AWET__MODEL__MAX_EPOCHS", "1")
    monkeypatch.setenv("AWET__MODEL__MAX_TRAIN_WINDOWS", "100")
    result = _materialize("planted", DagsterInstance.ephemeral())
    checks = _checks(result)
    assert checks["onnx_parity"] is False
    assert AssetKey(["daily", "registered_model"]) not in _materialized(result)
