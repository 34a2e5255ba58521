"""The time check every service applies to its input bars (awet_dagster.streaming.time_guard)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from awet_dagster.streaming.time_guard import TimeGuard, TimeLimits, TimeRejected

NOW = datetime(2026, 12, 2, 21, 0, tzinfo=UTC)


def guard(**kw) -> TimeGuard:
    return TimeGuard(TimeLimits(**kw), now=lambda: NOW)


def test_live_bar_ahead_of_the_wall_clock_is_refused_with_the_reason():
    g = guard(max_clock_skew_s=300)
    g.admit("SPY", "minute", NOW - timedelta(minutes=1))
    g.admit("SPY", "minute", NOW + timedelta(minutes=4))  # within the skew
    with pytest.raises(TimeRejected, match=r"SPY minute bar at 2099-01-02T14:30:00\+00:00 is .* ahead of the live "
                                           r"clock .*data.max_clock_skew_s"):
        g.admit("SPY", "minute", datetime(2099, 1, 2, 14, 30, tzinfo=UTC))
    assert g.rejected == 1


def test_replay_clock_is_the_latest_bar_seen_and_a_refusal_moves_nothing():
    g = guard(max_replay_lead_s=5 * 86_400)
    t0 = datetime(2020, 7, 1, 13, 30, tzinfo=UTC)
    g.admit("AAPL", "daily", t0)
    g.admit("SPY", "daily", t0 + timedelta(days=4))  # a long weekend: fine
    assert g.clock() == ("replay", t0 + timedelta(days=4))
    with pytest.raises(TimeRejected, match="ahead of the replay clock"):
        g.admit("AAPL", "daily", t0 + timedelta(days=30))  # far ahead of the replay, still years behind the wall
    with pytest.raises(TimeRejected):
        g.admit("AAPL", "daily", datetime(2099, 1, 1, tzinfo=UTC))
    # Nothing moved: the next real bar of the symbol passes.
    g.admit("AAPL", "daily", t0 + timedelta(days=1))
    assert g.clock() == ("replay", t0 + timedelta(days=4))


def test_older_than_the_last_bar_beyond_the_lateness_is_refused_but_a_redelivery_passes():
    g = guard(max_lateness_s=60)
    t = NOW - timedelta(hours=1)
    g.admit("IBM", "minute", t)
    g.admit("IBM", "minute", t)  # the same bar again (redelivery): the service skips it itself
    g.admit("IBM", "minute", t - timedelta(seconds=60))  # late, within the allowance
    with pytest.raises(TimeRejected, match=r"is 2.0 min older than the symbol's last bar"):
        g.admit("IBM", "minute", t - timedelta(minutes=2))
    g.admit("BAC", "minute", t - timedelta(minutes=2))  # per symbol


def test_the_first_bar_of_a_stream_is_judged_by_the_wall_clock():
    g = guard()
    assert g.clock() == ("live", NOW)
    with pytest.raises(TimeRejected, match="ahead of the live clock"):
        g.admit("SPY", "daily", datetime(2099, 1, 2, tzinfo=UTC))
    g.admit("SPY", "daily", datetime(2013, 10, 4, tzinfo=UTC))


def test_limits_come_from_the_configuration(test_config_for, tmp_path):
    cfg = test_config_for(tmp_path / "home", AWET__DATA__MAX_CLOCK_SKEW_S="12", AWET__DATA__MAX_LATENESS_S="3")
    limits = TimeLimits.from_config(cfg)
    assert (limits.max_clock_skew_s, limits.max_lateness_s, limits.max_replay_lead_s) == (12.0, 3.0, 432_000.0)


def test_each_partition_keeps_its_own_replay_clock_and_a_rebalance_restarts_them():
    # Kafka orders a partition, not a topic: one that another instance moved on comes back
    # weeks ahead of this instance's others. Its bars are not "ahead of the replay".
    g = guard(max_replay_lead_s=5 * 86_400)
    t0 = datetime(2019, 3, 1, 14, 30, tzinfo=UTC)
    g.admit("IBM", "daily", t0, ("raw", 0))
    g.admit("SPY", "daily", t0 + timedelta(days=61), ("raw", 1))  # its own lane: judged by the wall clock
    with pytest.raises(TimeRejected, match="ahead of the replay clock"):
        g.admit("IBM", "daily", t0 + timedelta(days=61), ("raw", 0))  # lane 0 is at t0: a 61-day jump
    assert g.clock(("raw", 0)) == ("replay", t0)
    assert g.clock(("raw", 1)) == ("replay", t0 + timedelta(days=61))
    # Partitions moved: every lane starts again (still no 2099 bar gets in).
    g.forget()
    with pytest.raises(TimeRejected, match="ahead of the live clock"):
        g.admit("IBM", "daily", datetime(2099, 1, 1, tzinfo=UTC), ("raw", 0))
    g.admit("IBM", "daily", t0 + timedelta(days=61), ("raw", 0))
    assert g.clock(("raw", 0)) == ("replay", t0 + timedelta(days=61))
