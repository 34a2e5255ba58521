"""The typed, frozen configuration tree.

Size (over 400 lines): a catalogue of every setting with its default and bounds, one file to
read (`awet config show` lists the same keys).

Code defaults live here; `configs/*.yaml`, environment variables and Vault override them
(see `loader.py`). Every section forbids unknown keys so a typo fails loudly instead of
being ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from awet_dagster.contracts.topics import ALL_TOPICS
from awet_dagster.infra.kafka_broker import DEFAULT_JVM_OPTIONS

# Every contract topic exists by default; configs only change partition counts.
DEFAULT_TOPICS = ALL_TOPICS


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class PathsConfig(Section):
    home: Path = Path(".awet")  # embedded servers, Dagster instance, MLflow store, logs


class DatabaseConfig(Section):
    url: SecretStr | None = None  # external Postgres/TimescaleDB; None = embedded
    connect_timeout_s: int = Field(10, gt=0)
    statement_timeout_ms: int = Field(60_000, gt=0)


_DAY_MS = 86_400_000


class TopicConfig(Section):
    partitions: int = Field(3, ge=1)
    replication_factor: int = Field(1, ge=1)
    # Kafka topic configs applied by `awet infra up` (and updated when they drift).
    # -1 keeps messages forever.
    retention_ms: int = Field(7 * _DAY_MS, ge=-1)
    cleanup_policy: Literal["delete", "compact", "compact,delete"] = "delete"

    @field_validator("retention_ms")
    @classmethod
    def _retention_not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("retention_ms 0 would delete every message at once; use -1 for forever")
        return v


def _default_topics() -> dict[str, TopicConfig]:
    return {name: TopicConfig() for name in DEFAULT_TOPICS}


class KafkaConfig(Section):
    bootstrap: str | None = None  # external Kafka; None = the embedded broker (infra.broker)
    group_prefix: str = "awet"
    dlq_suffix: str = ".dlq"
    # Dead letters are kept longer than their sources: an operator reads them after the
    # fact, and a replay of the source may be needed to reproduce one. Each DLQ keeps
    # max(dlq_retention_ms, dlq_retention_factor x its source topic's retention_ms).
    dlq_retention_ms: int = Field(30 * _DAY_MS, ge=-1)
    dlq_retention_factor: float = Field(4.0, ge=1.0)
    topics: dict[str, TopicConfig] = Field(default_factory=_default_topics)
    # Extra librdkafka settings for every client (e.g. security.protocol). Kept out of repr:
    # it may carry sasl.password.
    client: dict[str, str | int | float | bool] = Field(default_factory=dict, repr=False)
    # Consumer-only settings; the dev profile shortens group-join timeouts.
    consumer: dict[str, str | int | float | bool] = Field(default_factory=dict)
    producer: dict[str, str | int | float | bool] = Field(default_factory=dict)
    sasl_password: SecretStr | None = None
    poll_timeout_s: float = Field(0.5, gt=0)
    # A service's checkpoint waits this long for its outputs' verdicts. Longer than the
    # producers' message.timeout.ms (30 s; awet_kafka/settings.py): a broker that restarts
    # meanwhile (a Kafka starts in 5-10 s) then costs a pause, not a failed run whose purged
    # outputs would be produced again as duplicates.
    flush_timeout_s: float = Field(40.0, gt=0)
    batch_size: int = Field(500, ge=1)
    # Live services commit (flush, persist, store offsets) at most this often, at once when
    # their input is idle, and after this many uncommitted messages (awet_kafka.bus checkpoints).
    commit_interval_s: float = Field(0.1, ge=0)
    commit_max_messages: int = Field(5000, ge=1)
    # One process running several services that consume the same topics (``awet live``):
    # fetch them once and let each service read that (awet_kafka.shared_fetch); each keeps its
    # own group offsets. Off: one fetching consumer per service, as with --service.
    shared_fetch: bool = True

    @model_validator(mode="after")
    def _flush_outlasts_message_timeout(self) -> "KafkaConfig":
        timeout_ms = float(self.producer.get("message.timeout.ms", 30_000))
        if self.flush_timeout_s * 1000 <= timeout_ms:
            raise ValueError(
                f"flush_timeout_s ({self.flush_timeout_s}) must exceed the producer's message.timeout.ms "
                f"({timeout_ms:.0f} ms): a checkpoint must see each output acknowledged or failed"
            )
        return self

    def topic_configs(self) -> dict[str, dict[str, str]]:
        """Kafka configs of every configured topic and of its dead-letter twin."""
        out: dict[str, dict[str, str]] = {}
        for name, t in self.topics.items():
            out[name] = {"retention.ms": str(t.retention_ms), "cleanup.policy": t.cleanup_policy}
            if t.retention_ms == -1 or self.dlq_retention_ms == -1:
                dlq_ms = -1
            else:
                dlq_ms = max(self.dlq_retention_ms, int(t.retention_ms * self.dlq_retention_factor))
            # A DLQ is an audit trail of individual failures: never compacted by key.
            out[f"{name}{self.dlq_suffix}"] = {"retention.ms": str(dlq_ms), "cleanup.policy": "delete"}
        return out

    @field_validator("topics", mode="before")
    @classmethod
    def _topics_over_defaults(cls, v: object) -> object:
        # A layer names only the topics it changes; the others keep their defaults.
        if isinstance(v, dict):
            merged: dict[str, object] = {name: {} for name in DEFAULT_TOPICS}
            merged.update(v)
            return merged
        return v


    def client_settings(self) -> dict[str, str | int | float | bool]:
        """``client`` plus the SASL password (a secret, kept apart so reprs never show it): the
        settings every Kafka client of the project is built with."""
        out = dict(self.client)
        if self.sasl_password is not None:
            out.setdefault("sasl.password", self.sasl_password.get_secret_value())
        return out

class InfraConfig(Section):
    # Embedded broker: single-node Apache Kafka (KRaft, needs Java 17+; jars by Maven),
    # tansu (memory only: development and smoke tests), or auto = Kafka when it can run.
    broker: Literal["auto", "kafka", "tansu"] = "auto"
    postgres_start_timeout_s: int = Field(60, gt=0)
    # A JVM on a loaded 2-core machine takes 5-15 s to serve; tansu well under 1 s.
    broker_start_timeout_s: int = Field(90, gt=0)
    stop_timeout_s: int = Field(20, gt=0)
    # Where the Kafka jars are cached (default <paths.home>/kafka/libs/<version>).
    kafka_libs_dir: Path | None = None
    kafka_heap_mb: int = Field(512, ge=128)
    # JVM options of the embedded Kafka (why C1 only: kafka_broker.DEFAULT_JVM_OPTIONS); [] for
    # the JVM's defaults.
    kafka_jvm_options: tuple[str, ...] = DEFAULT_JVM_OPTIONS
    # Extra server.properties entries of the embedded Kafka (override the one-node defaults).
    kafka_settings: dict[str, str | int | float | bool] = Field(default_factory=dict)


class DagsterConfig(Section):
    home: Path | None = None  # default: <paths.home>/dagster
    ui_host: str = "127.0.0.1"
    ui_port: int = Field(3000, gt=0, lt=65536)


class MlflowConfig(Section):
    tracking_uri: str | None = None  # default: sqlite store under <paths.home>/mlflow
    registry_uri: str | None = None
    experiment: str = "awet"
    model_name: str = "awet-tft"
    champion_alias: str = "champion"


class DataConfig(Section):
    source: Literal["sample", "synthetic", "lean", "yfinance", "alpaca", "polygon"] = "sample"
    # source "lean": a Lean data folder (holding equity/usa, or equity/usa itself) to read from.
    lean_root: str | None = None
    bar_type: Literal["daily", "minute"] = "daily"
    symbols: tuple[str, ...] = ("SPY", "QQQ", "IWM", "AAPL", "IBM", "BAC", "AIG", "EEM")
    start: str = "2010-01-01"
    end: str = "2021-03-31"
    # Research (walk-forward, training) uses bars before the cutoff; the demo replay after it.
    cutoff: str = "2020-01-01"
    request_timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(4, ge=0)
    polygon_api_key: SecretStr | None = None
    alpaca_api_key: SecretStr | None = None
    alpaca_secret_key: SecretStr | None = None
    reddit_client_id: SecretStr | None = None
    reddit_client_secret: SecretStr | None = None
    reddit_days: int = Field(7, ge=1)  # Reddit's listings reach back only so far
    reddit_subreddits: tuple[str, ...] = ("wallstreetbets", "stocks", "investing")
    # Reddit's API and OAuth token hosts (a proxy, or a local fake in tests).
    reddit_api_url: str = "https://oauth.reddit.com"
    reddit_auth_url: str = "https://www.reddit.com"
    staleness_max_days: int = Field(5, ge=1)
    # Minute bars are partitioned by exchange day × symbol (backfills from the Dagster UI).
    minute_symbols: tuple[str, ...] = ("SPY", "IBM", "BAC", "AIG")
    minute_start: str = "2013-10-04"
    # `awet live --replay`: bars from this date to `end` are replayed through the live
    # loop; earlier bars are loaded into the bars table first (warm-up history). It must
    # not precede `cutoff`: the replay trades bars no model was trained or evaluated on.
    replay_start: str = "2020-07-01"
    # Calendar-gap tolerance per session (one day x symbol partition): a session missing at most
    # max_missing_count bars, or at most max_missing_fraction of its expected bars, is recorded
    # (bar_gaps table, a non-blocking warning check) instead of blocking the features. One missing
    # regular minute in a vendor day (1/390 = 0.26%) is normal.
    max_missing_count: int = Field(1, ge=0)
    max_missing_fraction: float = Field(0.002, ge=0, le=1)
    # Time sanity of every input bar (awet_dagster/streaming/time_guard.py): a bar starting more
    # than this ahead of the wall clock (live) or of the latest bar seen (a replay), or older
    # than its symbol's last bar by more than max_lateness_s, is dead-lettered with the reason.
    max_clock_skew_s: float = Field(300.0, ge=0)
    max_replay_lead_s: float = Field(5 * 86_400.0, ge=0)  # > the longest natural gap (long weekend)
    replay_after_s: float = Field(7 * 86_400.0, gt=0)  # latest bar this far behind the wall clock: a replay
    max_lateness_s: float = Field(0.0, ge=0)


    @model_validator(mode="after")
    def _replay_after_cutoff(self) -> "DataConfig":
        if self.replay_start < self.cutoff:
            raise ValueError(f"replay_start {self.replay_start} precedes cutoff {self.cutoff}")
        return self


class RetentionConfig(Section):
    minute_bars_days: int = Field(90, ge=1)
    signals_days: int = Field(180, ge=1)
    audit_days: int = Field(365, ge=1)
    # The retention job runs daily when no TimescaleDB policy does the work.
    schedule_enabled: bool = True
    schedule_cron: str = "30 3 * * *"


class SchedulesConfig(Section):
    # Daily incremental ingestion of the configured universe; off until an operator opts in.
    daily_ingest_enabled: bool = False
    daily_ingest_cron: str = "15 22 * * 1-5"  # after the US close, in UTC


class ModelConfig(Section):
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    lookback: int = Field(60, ge=2)
    horizons: tuple[int, ...] = (1, 5, 10)
    hidden_size: int = Field(16, ge=1)
    attention_heads: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    early_stopping_patience: int = Field(2, ge=0)
    seed: int = 42
    accelerator: str = "auto"
    # lookback/horizons above are the daily-bar shape; minute bars use these
    # (awet_dagster.model.dataset.model_shape picks by bar type).
    minute_lookback: int = Field(120, ge=2)
    minute_horizons: tuple[int, ...] = (30, 45, 60)
    # Seeded sample of windows per fold (None = all): many folds on 2 CPU cores.
    max_train_windows: int | None = Field(20_000, ge=1)
    max_val_windows: int | None = Field(5_000, ge=1)
    val_fraction: float = Field(0.2, ge=0, lt=1)  # early-stopping slice at the end of each training window

    @field_validator("quantiles")
    @classmethod
    def _sorted_quantiles(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if list(v) != sorted(v) or any(not 0 < q < 1 for q in v):
            raise ValueError("quantiles must be increasing and inside (0, 1)")
        return v


class WalkForwardConfig(Section):
    scheme: Literal["rolling", "expanding"] = "rolling"
    folds: int = Field(6, ge=1)
    min_folds: int = Field(6, ge=1)
    embargo_bars: int = Field(10, ge=0)  # minute data uses 180 (configs)
    train_bars: int | None = Field(None, ge=1)  # rolling window; None = 2 x test_bars
    test_bars: int | None = Field(None, ge=1)  # None = bars // (folds + 2)
    n_trials: int = Field(1, ge=1)  # configurations tried, for the deflated Sharpe ratio
    slippage_bps: float = Field(5.0, ge=0)
    fee_per_order: float = Field(1.0, ge=0)


class GateConfig(Section):
    min_median_oos_sharpe: float = 0.5
    min_oos_win_rate: float = Field(0.45, ge=0, le=1)
    require_not_worse_than_champion: bool = True


class PromotionConfig(Section):
    require_approval: bool = False


class SignalWeights(Section):
    tft: float = Field(0.5, ge=0)
    rsi: float = Field(0.2, ge=0)
    ema: float = Field(0.2, ge=0)
    macd: float = Field(0.1, ge=0)

    @model_validator(mode="after")
    def _positive_total(self) -> "SignalWeights":
        if self.tft + self.rsi + self.ema + self.macd <= 0:
            raise ValueError("ensemble weights must not all be zero")
        return self


class RegimeScaling(Section):
    bull: float = Field(1.0, ge=0)
    bear: float = Field(0.7, ge=0)
    sideways: float = Field(0.5, ge=0)


class RegimeRule(Section):
    """What a NEW position must clear in one regime, beyond ``signals.min_confidence``: the
    calibrated probability a long (short) entry needs; None = no extra bar."""

    long_min_prob: float | None = Field(None, ge=0, le=1)
    short_min_prob: float | None = Field(None, ge=0, le=1)


class RegimeFilter(Section):
    """The ``regime`` filter: no new longs in a bear market (nor shorts in a bull one) unless
    the call is this sure. A signal during the SMA50 warm-up is "sideways"."""

    bull: RegimeRule = RegimeRule(short_min_prob=0.65)
    bear: RegimeRule = RegimeRule(long_min_prob=0.65)
    sideways: RegimeRule = RegimeRule()


class SignalsConfig(Section):
    weights: SignalWeights = SignalWeights()
    # Which predicted horizon (bars) the TFT component trades on; None = the shortest.
    horizon: int | None = Field(None, ge=1)
    # Multiplies |signal_score| into ensemble_confidence, which the position is sized by.
    regime_scaling: RegimeScaling = RegimeScaling()
    regime_filter: RegimeFilter = RegimeFilter()
    min_confidence: float = Field(0.55, ge=0, le=1)
    min_avg_volume_10d: float = Field(500_000, ge=0)
    max_spread_pct: float = Field(0.001, ge=0)
    enforce_market_hours: bool = True
    earnings_blackout: tuple[str, ...] = ()  # "SYMBOL:YYYY-MM-DD"
    # Where the live signal service gets the Lean alphas: "topic" (the design: the lean_alpha
    # service's alpha.signals; a bar waits up to alpha_wait_s for that service's bar_done mark,
    # once the symbol has had one) or "internal" (the engine runs the same models itself).
    alpha_source: Literal["topic", "internal"] = "topic"
    alpha_wait_s: float = Field(0.5, ge=0)
    # Bars scored without a forecast use the newest alpha-only calibrator in `calibrations`
    # (the <bar_type>/alpha_calibration asset), re-read at most this often; false: uncalibrated.
    alpha_calibration: bool = True
    alpha_calibration_refresh_s: float = Field(60.0, gt=0)
    # Live signal service: how long a bar waits for its Prediction once the symbol's model
    # is live (has predicted before); after that the TFT component is absent for the bar.
    prediction_wait_s: float = Field(0.5, ge=0)
    # Runtime ensemble weights: a JSON object {"tft": .., "rsi": ..} re-read when it changes
    # (None: <paths.home>/signal_weights.json). Missing file = the configured weights.
    weights_file: Path | None = None


class RiskConfig(Section):
    position_size_pct: float = Field(0.02, gt=0, le=1)
    symbol_overrides: dict[str, float] = Field(default_factory=dict)
    max_total_exposure: float = Field(50_000, gt=0)
    max_symbol_exposure: float = Field(10_000, gt=0)
    daily_loss_limit: float = Field(0.05, gt=0, le=1)
    kill_switch_loss: float = Field(0.10, gt=0, le=1)
    max_drawdown: float = Field(0.15, gt=0, le=1)
    cvar_limit: float = Field(0.03, gt=0, le=1)
    sector_cap_pct: float = Field(0.20, gt=0, le=1)
    max_orders_per_minute: int = Field(30, ge=1)
    max_orders_per_symbol_day: int = Field(10, ge=1)
    cooldown_s: int = Field(60, ge=0)
    initial_equity: float = Field(100_000, gt=0)
    # Historical-simulation CVaR: bar returns of the held symbols over this many bars,
    # and the fewest common returns needed before an entry may be approved.
    cvar_lookback_bars: int = Field(250, ge=2)
    cvar_min_observations: int = Field(20, ge=2)
    allow_short: bool = True
    # Alpaca only (execution.broker alpaca): how long a bar waits for a fill the venue is
    # expected to have reported by then (an order decided on an earlier bar of the symbol). With
    # the paper venue risk computes its fills itself (execution.shadow) and never waits.
    fill_wait_s: float = Field(2.0, ge=0)
    # The order risk reads its scored signals in. "arrival": as the partitions deliver them.
    # "clock": in (ts, symbol) order, each bar time held until the bars its source listed on
    # market.clock have all come (every ingest and replay of this project publishes clocks;
    # configs/base.yaml sets "clock"), so decisions do not depend on partitioning or timing; a
    # time still incomplete clock_wait_s after its first signal goes anyway (logged).
    event_order: Literal["arrival", "clock"] = "arrival"
    clock_wait_s: float = Field(10.0, ge=0)


class ExecutionConfig(Section):
    broker: Literal["paper", "alpaca"] = "paper"
    dry_run: bool = True
    approval_file: Path = Path(".awet/APPROVE_LIVE_ORDERS")
    alpaca_base_url: str = "https://paper-api.alpaca.markets"
    alpaca_api_key: SecretStr | None = None
    alpaca_secret_key: SecretStr | None = None
    request_timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(4, ge=0)
    take_profit_pct: float = Field(0.03, gt=0)
    stop_loss_pct: float = Field(0.015, gt=0)
    slippage_bps: float = Field(5.0, ge=0)
    fee_per_order: float = Field(1.0, ge=0)
    # Paper simulator: at most this fraction of a bar's volume fills per bar (rest carries).
    max_participation: float = Field(0.10, gt=0, le=1)


class ExitsConfig(Section):
    take_profit_pct: float = Field(0.03, gt=0)
    stop_loss_pct: float = Field(0.015, gt=0)
    trailing_stop_pct: float = Field(0.02, gt=0)
    max_hold_minutes: int = Field(60, ge=1)
    max_hold_bars_daily: int = Field(10, ge=1)


class ObservabilityConfig(Section):
    metrics_port_base: int = Field(9400, gt=0, lt=65536)
    # Interface the live services' /metrics + /healthz endpoint binds (loopback by default;
    # containers set 0.0.0.0 so Prometheus and the kubelet can reach it).
    metrics_host: str = "127.0.0.1"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class VaultConfig(Section):
    # Connection comes from VAULT_ADDR / VAULT_TOKEN; these name where the secrets live.
    mount: str = "secret"
    path: str = "awet"
    timeout_s: float = Field(5.0, gt=0)


class AwetConfig(Section):
    env: str = "dev"
    paths: PathsConfig = PathsConfig()
    database: DatabaseConfig = DatabaseConfig()
    kafka: KafkaConfig = KafkaConfig()
    infra: InfraConfig = InfraConfig()
    dagster: DagsterConfig = DagsterConfig()
    mlflow: MlflowConfig = MlflowConfig()
    data: DataConfig = DataConfig()
    retention: RetentionConfig = RetentionConfig()
    schedules: SchedulesConfig = SchedulesConfig()
    model: ModelConfig = ModelConfig()
    walk_forward: WalkForwardConfig = WalkForwardConfig()
    gate: GateConfig = GateConfig()
    promotion: PromotionConfig = PromotionConfig()
    signals: SignalsConfig = SignalsConfig()
    risk: RiskConfig = RiskConfig()
    execution: ExecutionConfig = ExecutionConfig()
    exits: ExitsConfig = ExitsConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    vault: VaultConfig = VaultConfig()

    # Derived locations, so every caller agrees on them.
    @property
    def dagster_home(self) -> Path:
        return (self.dagster.home or self.paths.home / "dagster").resolve()

    @property
    def mlflow_tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{(self.paths.home / 'mlflow' / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifact_root(self) -> Path:
        return (self.paths.home / "mlflow" / "artifacts").resolve()
