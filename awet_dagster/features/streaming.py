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
from awet_dagster.sources.corporate_actions import adjusted_bar

NAN = math.nan
_LOG = math.log
_TZ = ZoneInfo(S.CALENDAR_TZ)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MAX_H = max(S.RET_HORIZONS)
_FLAT = S.FLAT_STD_REL


def _coefficients(stream) -> tuple[float, float]:
    # Taken from the stream objects themselves, so the inlined recursion below uses
    # exactly the same alpha and 1 - alpha floats as the classes.
    return stream.alpha, stream._decay


_E5A, _E5D = _coefficients(EmaStream(5))
_E20A, _E20D = _coefficients(EmaStream(20))
_RSIA, _RSID = _coefficients(RsiStream(S.RSI_PERIOD)._gain)
_MFA, _MFD = _coefficients(MacdStream(S.MACD_FAST, S.MACD_SLOW, S.MACD_SIGNAL)._fast)
_MSA, _MSD = _coefficients(MacdStream(S.MACD_FAST, S.MACD_SLOW, S.MACD_SIGNAL)._slow)
_MGA, _MGD = _coefficients(MacdStream(S.MACD_FAST, S.MACD_SLOW, S.MACD_SIGNAL)._signal)
_ATRA, _ATRD = _coefficients(AtrStream(S.ATR_PERIOD)._avg)


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
        # Hot path: once every EMA/Wilder average is seeded, their state lives here as
        # plain floats and _step runs the recursions inline (same arithmetic).
        "_hot",
        "_prev_close",
        "_e5",
        "_e20",
        "_avg_gain",
        "_avg_loss",
        "_macd_fast",
        "_macd_slow",
        "_macd_signal",
        "_atr_v",
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
        self._hot = False
        self._prev_close = NAN
        self._e5 = self._e20 = self._avg_gain = self._avg_loss = NAN
        self._macd_fast = self._macd_slow = self._macd_signal = self._atr_v = NAN

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
        bar = adjusted_bar(bar)  # split/dividend-adjusted, as compute_features
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

        if self._hot:
            # EmaStream / RsiStream / MacdStream / AtrStream steady state, inlined:
            # the same products and sums in the same order as their update().
            prev = self._prev_close
            self._prev_close = close
            ema5 = self._e5 = _E5A * close + _E5D * self._e5
            ema20 = self._e20 = _E20A * close + _E20D * self._e20
            d = close - prev
            if d >= 0.0:
                g, lo = d, 0.0
            elif d < 0.0:
                g, lo = 0.0, -d
            else:  # NaN
                g = lo = NAN
            ag = self._avg_gain = _RSIA * g + _RSID * self._avg_gain
            al = self._avg_loss = _RSIA * lo + _RSID * self._avg_loss
            rsi = 100.0 if al == 0.0 else 100.0 - 100.0 / (1.0 + ag / al)
            mf = self._macd_fast = _MFA * close + _MFD * self._macd_fast
            ms = self._macd_slow = _MSA * close + _MSD * self._macd_slow
            line = mf - ms
            sig = self._macd_signal = _MGA * line + _MGD * self._macd_signal
            hist = line - sig
            tr = high - low
            a = high - prev
            if a < 0.0:
                a = -a
            b = low - prev
            if b < 0.0:
                b = -b
            if a > tr:
                tr = a
            if b > tr:
                tr = b
            atr = self._atr_v = _ATRA * tr + _ATRD * self._atr_v
        else:
            ema5 = self._ema5.update(close)
            ema20 = self._ema20.update(close)
            rsi = self._rsi.update(close)
            line, _, hist = self._macd.update(close)
            atr = self._atr.update(high, low, close)
            self._maybe_go_hot(close)

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

    def _maybe_go_hot(self, close: float) -> None:
        """Switch to the inlined recursions once every average is seeded (only then is
        each update() the plain recursion); a series that never gets there (NaNs)
        simply stays on the stream objects."""
        r, m = self._rsi, self._macd
        if not (self._ema5.is_ready and self._ema20.is_ready and r._gain.is_ready and r._loss.is_ready
                and m._fast.is_ready and m._slow.is_ready and m._signal.is_ready and self._atr._avg.is_ready):
            return
        self._prev_close = close  # == r._prev == self._atr._prev_close
        self._e5, self._e20 = self._ema5.value, self._ema20.value
        self._avg_gain, self._avg_loss = r._gain.value, r._loss.value
        self._macd_fast, self._macd_slow, self._macd_signal = m._fast.value, m._slow.value, m._signal.value
        self._atr_v = self._atr._avg.value
        self._hot = True

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
