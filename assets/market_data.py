"""`raw_bars`: bars from the configured source into PostgreSQL, one asset per bar type.

Each materialization replaces exactly its partitions (COPY into staging, then upsert), keeps
rejected rows in `rejected_bars` with their reason, and evaluates blocking data-quality
checks, so a bad partition never feeds the feature tables.
"""
from collections.abc import Iterator
from datetime import timedelta

import polars as pl
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    BackfillPolicy,
    FreshnessPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets._checks import check_results
from assets.partitions import bar_partitions, windows_for
from awet_dagster.config import AwetConfig
from awet_dagster.quality import (
    calendar_gaps,
    duplicate_rows,
    ohlc_violations,
    session_gaps,
    staleness,
    tolerated_gaps,
)
from awet_dagster.sources.schema import empty_bars, ensure_schema, validate_bars
from awet_dagster.storage.bars import read_bars, record_gaps, replace_partition
from resources.database import DatabaseResource
from resources.market_data import MarketDataResource
from resources.settings import SettingsResource

BAR_CHECKS = {
    "no_duplicates": "No (symbol, bar_type, ts) twice, in the stored rows or the input.",
    "ohlc_consistent": "low ≤ open, close ≤ high; prices > 0; volume ≥ 0; no input row rejected.",
    "no_calendar_gaps": "Bars present for every XNYS session/minute (holidays, half days, DST), within the "
                        "tolerance per partition (data.max_missing_count / max_missing_fraction).",
    "not_stale": "Every symbol's newest bar is recent relative to the partition's end.",
}
#: Non-blocking: shown in the UI (warning), recorded in bar_gaps, never stops the features.
BAR_WARNINGS = {
    "calendar_gaps_tolerated": "Sessions missing a few bars within the tolerance (see the bar_gaps table).",
}


def _rejected_frame(source_client, rejected: pl.DataFrame) -> pl.DataFrame:
    # Vendor clients quarantine rows they could not parse; keep those as well.
    extra = getattr(source_client, "last_rejected", None)
    frames = [f for f in (rejected, extra) if f is not None and f.height]
    return pl.concat(frames, how="diagonal_relaxed") if frames else rejected


def bar_freshness(bar_type: str) -> FreshnessPolicy:
    """Daily bars should be refreshed every session; minute bars within the hour when live."""
    if bar_type == "daily":
        return FreshnessPolicy.time_window(fail_window=timedelta(days=4), warn_window=timedelta(days=1, hours=6))
    return FreshnessPolicy.time_window(fail_window=timedelta(hours=2), warn_window=timedelta(minutes=30))


def build_raw_bars(bar_type: str, cfg: AwetConfig):
    """``cfg``: the configuration the definitions were loaded with (partitions, symbols)."""
    key = AssetKey([bar_type, "raw_bars"])

    @asset(
        key=key,
        group_name=f"{bar_type}_market_data",
        partitions_def=bar_partitions(bar_type, cfg),
        # Daily: all symbols in one run; minute: one run per day × symbol partition.
        backfill_policy=BackfillPolicy.single_run() if bar_type == "daily" else BackfillPolicy.multi_run(1),
        check_specs=[AssetCheckSpec(name, asset=key, description=desc, blocking=True)
                     for name, desc in BAR_CHECKS.items()]
        + [AssetCheckSpec(name, asset=key, description=desc, blocking=False) for name, desc in BAR_WARNINGS.items()],
        deps=[AssetKey("platform_preflight")],
        freshness_policy=bar_freshness(bar_type),
        description=(
            f"{bar_type.capitalize()} OHLCV bars (with quote bid/ask where the source has them) "
            "loaded into the `bars` table. Partition = "
            + ("symbol (its whole configured history)." if bar_type == "daily" else "exchange day × symbol.")
        ),
        kinds={"postgres", "polars"},
    )
    def raw_bars(
        context: AssetExecutionContext, database: DatabaseResource, market_data: MarketDataResource,
        settings: SettingsResource,
    ) -> Iterator:
        cfg = settings.config
        client = market_data.client()
        windows = windows_for(bar_type, context.partition_keys, cfg)
        loaded = rejected_total = 0
        all_rejected = []
        with database.connect() as conn:
            for i, window in enumerate(windows, 1):
                raw = client.fetch(list(window.symbols), window.start, window.end, bar_type)
                good, rejected = validate_bars(ensure_schema(raw)) if raw.height else (empty_bars(), raw)
                rejected = _rejected_frame(client, rejected)
                result = replace_partition(conn, window, good, rejected, source=market_data.source_name())
                loaded += result.loaded
                rejected_total += result.rejected
                if rejected.height:
                    all_rejected.append(rejected)
                context.log.info(
                    "[%d/%d] %s %s: %d bars loaded, %d rejected, %d replaced",
                    i, len(windows), ",".join(window.symbols), bar_type, result.loaded, result.rejected, result.deleted,
                )
            stored = pl.concat(
                [read_bars(conn, w.symbols, bar_type, w.start, w.end) for w in windows], how="vertical"
            )
            gaps = session_gaps(stored, bar_type, cfg.data.max_missing_count, cfg.data.max_missing_fraction)
            record_gaps(conn, windows, gaps)
        rejected_all = pl.concat(all_rejected, how="diagonal_relaxed") if all_rejected else pl.DataFrame()
        checks = [
            duplicate_rows(stored, rejected_all),
            ohlc_violations(stored, rejected_all),
            calendar_gaps(stored, bar_type, cfg.data.max_missing_fraction, cfg.data.max_missing_count, gaps),
            tolerated_gaps(gaps, bar_type),
            staleness(stored, bar_type, max(w.end for w in windows), cfg.data.staleness_max_days),
        ]
        yield MaterializeResult(
            metadata={
                "rows_loaded": loaded,
                "rows_rejected": rejected_total,
                "symbols": MetadataValue.text(", ".join(sorted({s for w in windows for s in w.symbols}))),
                "first_ts": MetadataValue.text(str(stored["ts"].min()) if stored.height else "-"),
                "last_ts": MetadataValue.text(str(stored["ts"].max()) if stored.height else "-"),
                "preview": MetadataValue.md(_preview(stored)),
            }
        )
        yield from check_results(key, checks)

    return raw_bars


def _preview(stored: pl.DataFrame) -> str:
    """Daily closes per symbol (last 10 sessions) as a markdown table: readable in the UI."""
    if stored.height == 0:
        return "_no rows_"
    tail = stored.sort("ts").group_by("symbol", maintain_order=True).tail(10)
    pivot = (
        tail.with_columns(pl.col("ts").dt.strftime("%Y-%m-%d %H:%M"))
        .pivot(on="symbol", index="ts", values="close")
        .sort("ts")
    )
    header = "| " + " | ".join(pivot.columns) + " |"
    sep = "|" + "---|" * len(pivot.columns)
    rows = ["| " + " | ".join("" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v)) for v in r) + " |"
            for r in pivot.iter_rows()]
    return "\n".join([header, sep, *rows])
