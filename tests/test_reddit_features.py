"""Reddit mentions: stored in their own table and joined into the features point-in-time."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
from dagster import DagsterInstance, materialize

from awet_dagster.storage.db import connect
from awet_dagster.storage.reddit import join_mentions, upsert_mentions


def _bars(days):
    ts = [datetime(2019, 3, d, 14, 30, tzinfo=UTC) for d in days]
    return pl.DataFrame({"symbol": "SPY", "ts": ts, "close": [1.0] * len(ts)})


def test_join_uses_only_closed_buckets():
    bars = _bars([4, 5, 6, 8])
    mentions = pl.DataFrame({
        "symbol": ["SPY", "SPY"], "ts": [datetime(2019, 3, 4, tzinfo=UTC), datetime(2019, 3, 5, tzinfo=UTC)],
        "mentions": [10.0, 30.0], "sentiment": [0.1, -0.4],
    })
    out = join_mentions(bars, mentions, "1d").sort("ts")
    # The bar of Mar 4 09:30 ET cannot see Mar 4's bucket (still open); Mar 5 sees Mar 4's; Mar 6 sees Mar 5's.
    assert out["reddit_mentions"].to_list() == [None, 10.0, 30.0, None]
    assert out["reddit_sentiment"].to_list() == [None, 0.1, -0.4, None]


def test_features_asset_joins_stored_mentions(database_url, kafka_bootstrap, monkeypatch, tmp_path):
    from awet_dagster.config import load_config
    from assets.features import build_features
    from assets.market_data import build_raw_bars
    from resources.database import DatabaseResource
    from resources.settings import SettingsResource
    from resources.market_data import MarketDataResource

    for k, v in {"AWET_ENV": "test", "AWET_HOME": str(tmp_path), "DATABASE_URL": database_url,
                 "KAFKA_BOOTSTRAP": kafka_bootstrap, "AWET__DATA__SYMBOLS": "[IWM]",
                 "AWET__DATA__START": "2019-01-02", "AWET__DATA__END": "2019-06-28"}.items():
        monkeypatch.setenv(k, v)
    day = datetime(2019, 4, 1, tzinfo=UTC)
    with connect(database_url) as conn:
        conn.execute("DELETE FROM reddit_mentions WHERE symbol = 'IWM'")
        upsert_mentions(conn, pl.DataFrame({"symbol": ["IWM"], "ts": [day], "mentions": [7], "sentiment": [0.25]}))
    result = materialize([build_raw_bars("daily", load_config()), build_features("daily", load_config())], partition_key="IWM",
                         resources={"database": DatabaseResource(), "settings": SettingsResource(), "market_data": MarketDataResource()},
                         instance=DagsterInstance.ephemeral())
    assert result.success
    with connect(database_url) as conn:
        rows = conn.execute(
            "SELECT ts, values->>'reddit_mentions' FROM features WHERE symbol='IWM' AND ts BETWEEN %s AND %s ORDER BY ts",
            (day - timedelta(days=1), day + timedelta(days=3)),
        ).fetchall()
    seen = {ts.date().isoformat(): v for ts, v in rows}
    assert seen["2019-04-01"] is None  # Apr 1's own bucket is still open at its 09:30 bar
    assert float(seen["2019-04-02"]) == 7.0
    assert seen["2019-04-03"] is None  # a day-old bucket is not carried forward
