"""`features`: the point-in-time feature table, partitioned like `raw_bars`."""
from collections.abc import Iterator
from datetime import timedelta

import polars as pl
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets._checks import check_results
from assets.market_data import bar_freshness
from assets.partitions import bar_partitions, warmup_start, windows_for
from awet_dagster.config import AwetConfig
from awet_dagster.features import FEATURE_COLUMNS, FEATURE_SET_VERSION, FEATURES, MAX_WARMUP, compute_features
from awet_dagster.quality.features import no_missing_after_warmup, values_in_range
from awet_dagster.storage.bars import read_bars
from awet_dagster.storage.features import replace_features
from awet_dagster.storage.reddit import join_mentions, read_mentions
from resources.database import DatabaseResource
from resources.settings import SettingsResource

FEATURE_CHECKS = {
    "no_missing_after_warmup": "Every non-optional feature is present once a symbol has warmed up.",
    "values_in_range": "RSI in 0–100, volatilities and widths ≥ 0, calendar fields valid, no infinities.",
}


def build_features(bar_type: str, cfg: AwetConfig):
    """``cfg``: the configuration the definitions were loaded with (partitions)."""
    key = AssetKey([bar_type, "features"])

    @asset(
        key=key,
        group_name=f"{bar_type}_features",
        partitions_def=bar_partitions(bar_type, cfg),
        backfill_policy=BackfillPolicy.single_run() if bar_type == "daily" else BackfillPolicy.multi_run(1),
        deps=[AssetKey([bar_type, "raw_bars"])],
        freshness_policy=bar_freshness(bar_type),
        check_specs=[AssetCheckSpec(n, asset=key, description=d, blocking=True) for n, d in FEATURE_CHECKS.items()],
        description=(
            f"{len(FEATURE_COLUMNS)} point-in-time features per {bar_type} bar (returns, volatility, "
            "SMA/EMA, RSI, MACD, ATR, Bollinger, volume z-score, spread, calendar, regime inputs), "
            "computed by the same core the live loop streams; stored in `features` (JSONB) "
            "under the feature-set version."
        ),
        kinds={"postgres", "polars"},
    )
    def features(context: AssetExecutionContext, database: DatabaseResource, settings: SettingsResource) -> Iterator:
        cfg = settings.config
        windows = windows_for(bar_type, context.partition_keys, cfg)
        written, computed = 0, []
        with database.connect() as conn:
            for window in windows:
                # Read enough history before the window that indicators are warm at its start.
                history = read_bars(conn, window.symbols, bar_type, warmup_start(window, bar_type, MAX_WARMUP),
                                    window.end)
                # Reddit mentions/sentiment where stored, joined point-in-time (closed buckets only).
                mentions = read_mentions(conn, window.symbols, history["ts"].min() - timedelta(days=2), window.end) \
                    if history.height else None
                if mentions is not None and mentions.height:
                    history = join_mentions(history, mentions, "1d")
                feats = compute_features(history)
                # Index of each row within its symbol's history: warm once past MAX_WARMUP.
                feats = feats.with_columns(pl.int_range(pl.len()).over("symbol").alias("_bar_index"))
                in_window = feats.filter((pl.col("ts") >= window.start) & (pl.col("ts") < window.end))
                written += replace_features(conn, window, in_window, list(FEATURE_COLUMNS), FEATURE_SET_VERSION)
                computed.append(in_window)
        table = pl.concat(computed, how="vertical") if computed else pl.DataFrame()
        context.log.info("wrote %d feature rows (%s) for %d partition(s)", written, FEATURE_SET_VERSION, len(windows))
        checks = [
            no_missing_after_warmup(table, table["_bar_index"] >= MAX_WARMUP),
            values_in_range(table),
        ]
        yield MaterializeResult(
            metadata={
                "rows": written,
                "feature_set_version": FEATURE_SET_VERSION,
                "feature_list": MetadataValue.json(
                    [{"name": f.name, "warmup": f.warmup, "description": f.description} for f in FEATURES]
                ),
                "n_features": len(FEATURE_COLUMNS),
            }
        )
        yield from check_results(key, checks)

    return features
