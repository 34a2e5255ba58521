"""Streaming features: one `FeatureState` per symbol, O(1) work per bar.

Gives the same values as `compute_features` (to ~1e-12; tested to 1e-9) from the
same streaming indicators the rest of the live loop uses. The update is written
flat — locals, no per-feature objects or closures — because it runs once per bar
per symbol in the live service; see benchmarks/features.py for its throughput.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from awet_dagster.features import spec as S
from awet_dagster.indicators.streaming import (
    AtrStream,
    EmaStream,
    MacdStream,
    RollingMomentsStream,
    RsiStream,
)

NAN = math.nan
_LOG = math.log
_TZ = ZoneInfo(S.CALENDAR_TZ)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MAX_H = max(S.RET_HORIZONS)
_FLAT = S.FLAT_STD_REL


class FeatureState:
    """Feature state of one symbol. Feed bars in time order with `update`."""

    __slots__ = (
        "symbol",
        "_last_us",
        "_logc",
        "_n",
        "_rv5",
        "_rv15",
        "_sma5",
        "_sma20",
        "_sma50",
        "_ema5",
        "_ema20",
        "_rsi",
        "_macd",
        "_atr",
        "_vol",
        "_cal_hour",
        "_cal_offset_min",
    )

    def __init__(self, symbol: str = "") -> None:
        if S.RET_HORIZONS != (1, 5, 15) or S.RV_WINDOWS != (5, 15) or S.SMA_WINDOWS != (5, 20):
            raise AssertionError("FeatureState is written for the current spec; update it with spec.py")
        self.symbol = symbol
        self._last_us: int | None = None
        # Ring of the last 16 log closes (for 1/5/15-bar returns); _n counts bars.
        self._logc = [NAN] * (_MAX_H + 1)
        self._n = 0
        self._rv5 = RollingMomentsStream(5)
        self._rv15 = RollingMomentsStream(15)
        self._sma5 = RollingMomentsStream(5)
        # SMA(20) doubles as the Bollinger middle; its std is the Bollinger std.
        self._sma20 = RollingMomentsStream(S.BB_PERIOD)
        self._sma50 = RollingMomentsStream(S.REGIME_SLOW)
        self._ema5 = EmaStream(5)
        self._ema20 = EmaStream(20)
        self._rsi = RsiStream(S.RSI_PERIOD)
        self._macd = MacdStream(S.MACD_FAST, S.MACD_SLOW, S.MACD_SIGNAL)
        self._atr = AtrStream(S.ATR_PERIOD)
        self._vol = RollingMomentsStream(S.VOLUME_Z_WINDOW)
        self._cal_hour = -1
        self._cal_offset_min = 0

    @property
    def bars_seen(self) -> int:
        return self._n

    @property
    def is_warm(self) -> bool:
        """True once every non-nullable feature has a value."""
        return self._n > S.MAX_WARMUP

    def update(self, bar: Mapping) -> dict[str, float] | None:
        """Add one bar (a mapping with the bar-schema keys; `bid`, `ask`, `reddit_*`
        optional) and return all features for it, NaN where not available.

        Returns None — and changes nothing — for a bar not strictly after the previous
        one (a re-delivered or out-of-order bar must not advance the indicators)."""
        ts = bar["ts"]
        us = _to_epoch_us(ts)
        if self._last_us is not None and us <= self._last_us:
            return None
        self._last_us = us
        g = bar.get
        return self._step(
            us,
            bar["high"],
            bar["low"],
            bar["close"],
            bar["volume"],
            g("bid"),
            g("ask"),
            g("reddit_mentions"),
            g("reddit_sentiment"),
        )

    def _step(self, us, high, low, close, volume, bid, ask, mentions, sentiment) -> dict[str, float]:
        # --- returns and realized vol from a ring of log closes -------------------
        lc = _LOG(close)
        ring = self._logc
        n = self._n
        size = _MAX_H + 1
        i = n % size
        ring[i] = lc
        self._n = n + 1
        r1 = lc - ring[i - 1] if n >= 1 else NAN
        r5 = lc - ring[i - 5] if n >= 5 else NAN
        r15 = lc - ring[i - 15] if n >= 15 else NAN  # ring[-k] wraps: size is 16
        rv5m = self._rv5
        rv15m = self._rv15
        rv5m.update(r1)
        rv15m.update(r1)

        # --- moving averages, Bollinger, regime ------------------------------------
        sma5 = self._sma5.update(close)
        m20 = self._sma20
        sma20 = m20.update(close)
        sma50 = self._sma50.update(close)
        sd20 = m20.std()
        band = S.BB_K * sd20
        upper = sma20 + band
        lower = sma20 - band
        if sd20 <= _FLAT * abs(sma20):
            pct_b = 0.5
        else:
            pct_b = (close - lower) / (upper - lower)  # NaN while not ready

        ema5 = self._ema5.update(close)
        ema20 = self._ema20.update(close)
        rsi = self._rsi.update(close)
        line, _, hist = self._macd.update(close)
        atr = self._atr.update(high, low, close)

        vm = self._vol
        vmean = vm.update(volume)
        vsd = vm.std()
        if vmean != vmean:
            vz = NAN
        elif vsd <= _FLAT * abs(vmean):
            vz = 0.0
        else:
            vz = (volume - vmean) / vsd

        if bid is not None and ask is not None:
            mid = (bid + ask) / 2.0
            spread = (ask - bid) / mid * 1e4 if mid > 0 else NAN
        else:
            spread = NAN

        minute, dow = self._calendar(us)
        return {
            "ret_1": r1,
            "ret_5": r5,
            "ret_15": r15,
            "rv_5": rv5m.std(),
            "rv_15": rv15m.std(),
            "sma_5_ratio": sma5 / close - 1.0,
            "sma_20_ratio": sma20 / close - 1.0,
            "ema_5_ratio": ema5 / close - 1.0,
            "ema_20_ratio": ema20 / close - 1.0,
            "rsi_14": rsi,
            "macd_norm": line / close,
            "macd_hist_norm": hist / close,
            "atr_14_norm": atr / close,
            "bb_pct_b": pct_b,
            "bb_width": (upper - lower) / sma20,
            "volume_z_20": vz,
            "spread_bps": spread,
            "minute_of_day": minute,
            "day_of_week": dow,
            "regime_sma20_sma50": sma20 / sma50 - 1.0,
            "regime_close_sma20": close / sma20 - 1.0,
            "reddit_mentions": NAN if mentions is None else float(mentions),
            "reddit_sentiment": NAN if sentiment is None else float(sentiment),
        }

    def _calendar(self, us: int) -> tuple[float, float]:
        # The New York UTC offset only changes on a whole UTC hour (02:00 local), so
        # it is looked up once per hour instead of converting every timestamp.
        minutes = us // 60_000_000
        hour = minutes // 60
        if hour != self._cal_hour:
            local = datetime.fromtimestamp(hour * 3600, tz=_TZ)
            self._cal_offset_min = int(local.utcoffset().total_seconds()) // 60
            self._cal_hour = hour
        local_min = minutes + self._cal_offset_min
        # 1970-01-01 was a Thursday (Monday=0 -> 3).
        return float(local_min % 1440), float((local_min // 1440 + 3) % 7)


def _to_epoch_us(ts) -> int:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise ValueError("bar ts must be timezone-aware (UTC)")
        d = ts - _EPOCH
        return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds
    return int(ts)  # already epoch microseconds
