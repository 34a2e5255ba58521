"""Alternative data: Reddit ticker mentions and VADER sentiment, stored for the feature table."""
from datetime import datetime, timedelta, timezone

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from awet_dagster.sources.reddit import reddit_client
from awet_dagster.storage.reddit import upsert_mentions
from resources.database import DatabaseResource
from resources.settings import SettingsResource


@asset(
    key=["alt_data", "reddit_mentions"],
    group_name="alt_data",
    description="Daily mention counts and mean VADER sentiment of the configured symbols on "
                "data.reddit_subreddits over the last `data.reddit_days` days (Reddit lists only recent posts). "
                "Needs data.reddit_client_id/secret; the features join it point-in-time when present. "
                "Live, `awet ingest --source reddit` streams the same buckets into social.sentiment.",
    kinds={"postgres"},
)
def reddit_mentions(context: AssetExecutionContext, database: DatabaseResource,
                    settings: SettingsResource) -> MaterializeResult:
    cfg = settings.config
    client = reddit_client(cfg.data, "1d")
    end = datetime.now(timezone.utc)
    frame = client.fetch(list(cfg.data.symbols), end - timedelta(days=cfg.data.reddit_days), end)
    with database.connect() as conn:
        n = upsert_mentions(conn, frame, bucket="1d")
    context.log.info("stored %d (symbol, day) mention buckets", n)
    return MaterializeResult(metadata={"rows": n, "symbols": MetadataValue.text(", ".join(sorted(set(frame["symbol"]))))
                                       if frame.height else "-"})
