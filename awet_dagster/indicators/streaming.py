"""Streaming (bar-by-bar) indicators giving the same values as the batch functions.

Each `update` is O(1) (amortised for the rolling windows) and returns the current
value, NaN while not ready. Classes use __slots__ and plain floats because the
live feature path calls them once per bar per symbol and must stay allocation-light.
"""
from __future__ import annotations

import math

NAN = math.nan


class _SeededSmoother:
    """y = mean of the first n inputs, then y = alpha*x + (1-alpha)*y (Lean EMA/Wilder).

    Leading NaN inputs are skipped (the batch form seeds from the first non-NaN
    value too); later NaNs propagate, as in the batch recursion."""

    __slots__ = ("period", "alpha", "_decay", "_count", "_sum", "value")

    def __init__(self, period: int, alpha: float) -> None:
        if period < 1:
            raise ValueError("period must be >= 1")
        self.period = period
        self.alpha = alpha
        self._decay = 1.0 - alpha
        self._count = 0
        self._sum = 0.0
        self.value = NAN

    @property
    def is_ready(self) -> bool:
        return self._count >= self.period

    def update(self, x: float) -> float:
        if self._count >= self.period:
            # Same two products, same order, as the batch IIR filter -> bitwise parity.
            v = self.alpha * x + self._decay * self.value
            self.value = v
            return v
        if self._count == 0 and x != x:
            return NAN
        self._count += 1
        self._sum += x
        if self._count == self.period:
            self.value = self._sum / self.period
            return self.value
        return NAN


class EmaStream(_SeededSmoother):
    """Lean EMA: SMA-seeded, k = 2/(n+1)."""

    __slots__ = ()

    def __init__(self, period: int) -> None:
        super().__init__(period, 2.0 / (period + 1))


class WilderStream(_SeededSmoother):
    """Wilder's moving average: SMA-seeded, k = 1/n."""

    __slots__ = ()

    def __init__(self, period: int) -> None:
        super().__init__(period, 1.0 / period)


class RollingMomentsStream:
    """Mean and population standard deviation of the last n values, O(1) amortised.

    Running sums are kept of x - shift, where the shift is re-centred on the window
    mean and the sums are recomputed exactly from the ring buffer every n updates.
    That bounds the floating-point drift of add/subtract updates to n steps, and
    the centring avoids the E[x^2] - E[x]^2 cancellation that wrecks the std of
    near-constant prices — so the values stay within ~1e-12 of the batch two-pass
    computation however long the stream runs. NaNs make the value NaN exactly while
    they are inside the window, like the batch form."""

    __slots__ = ("period", "_buf", "_pos", "_count", "_nans", "_shift", "_s1", "_s2", "mean")

    def __init__(self, period: int) -> None:
        if period < 1:
            raise ValueError("period must be >= 1")
        self.period = period
        self._buf = [0.0] * period
        self._pos = 0
        self._count = 0
        self._nans = 0
        self._shift = NAN
        self._s1 = 0.0
        self._s2 = 0.0
        self.mean = NAN

    @property
    def is_ready(self) -> bool:
        return self._count >= self.period and self._nans == 0

    def update(self, x: float) -> float:
        """Push x; return the window mean (NaN until the window is full)."""
        # State in locals, written back once (same operations in the same order as
        # the attribute-by-attribute form: s1 - d_old + d_new, etc.).
        buf = self._buf
        pos = self._pos
        n = self.period
        shift = self._shift
        s1 = self._s1
        s2 = self._s2
        nans = self._nans
        count = self._count
        if count == n:
            old = buf[pos]
            if old != old:
                nans -= 1
            else:
                d = old - shift
                s1 -= d
                s2 -= d * d
        else:
            count = self._count = count + 1
            if shift != shift and x == x:
                shift = self._shift = x
        buf[pos] = x
        if x != x:
            nans += 1
        else:
            d = x - shift
            s1 += d
            s2 += d * d
        pos += 1
        if pos == n:
            pos = 0
            if nans == 0:
                shift, s1, s2 = self._recentred()
                self._shift = shift
        elif count == n and nans == 0 and (s1 / n) ** 2 > 1e6 * (s2 / n - (s1 / n) ** 2):
            # The window moved far from the shift (an outlier left it: 78303 then 1.0, 1.5):
            # var = s2/n - (s1/n)^2 would cancel most digits (seen: a std off by 5e-7).
            # Re-centre now instead of at the end of the cycle; rare on real prices.
            shift, s1, s2 = self._recentred()
            self._shift = shift
        self._pos = pos
        self._s1 = s1
        self._s2 = s2
        self._nans = nans
        if count < n or nans:
            self.mean = NAN
            return NAN
        m = shift + s1 / n
        self.mean = m
        return m

    def std(self) -> float:
        """Population standard deviation of the current window (NaN until ready)."""
        if self._count < self.period or self._nans:
            return NAN
        n = self.period
        m1 = self._s1 / n
        var = self._s2 / n - m1 * m1
        return math.sqrt(var) if var > 0.0 else 0.0

    def _recentred(self) -> tuple[float, float, float]:
        """(shift, s1, s2) recomputed exactly from the ring buffer, centred on its mean."""
        buf = self._buf
        n = self.period
        total = 0.0
        for v in buf:
            total += v
        shift = total / n
        s1 = 0.0
        s2 = 0.0
        for v in buf:
            d = v - shift
            s1 += d
            s2 += d * d
        return shift, s1, s2


class SmaStream(RollingMomentsStream):
    """Simple moving average (the mean of RollingMomentsStream)."""

    __slots__ = ()

    @property
    def value(self) -> float:
        return self.mean


class RsiStream:
    """Lean RSI with Wilder averages; ready after period+1 closes; 100 when avg loss is 0."""

    __slots__ = ("period", "_prev", "_gain", "_loss", "value")

    def __init__(self, period: int = 14) -> None:
        self.period = period
        self._prev = None
        self._gain = WilderStream(period)
        self._loss = WilderStream(period)
        self.value = NAN

    def update(self, close: float) -> float:
        prev = self._prev
        self._prev = close
        if prev is None:
            return NAN
        d = close - prev
        if d >= 0.0:
            g, l = d, 0.0
        elif d < 0.0:
            g, l = 0.0, -d
        else:  # NaN
            g = l = NAN
        ag = self._gain.update(g)
        al = self._loss.update(l)
        if al == 0.0:
            v = 100.0
        else:
            v = 100.0 - 100.0 / (1.0 + ag / al)
        self.value = v
        return v


class MacdStream:
    """Lean MACD: line = EMA(fast) - EMA(slow); signal = EMA(signal) of the line."""

    __slots__ = ("_fast", "_slow", "_signal", "line", "signal", "histogram")

    def __init__(self, fast: int = 12, slow: int = 26, signal: int = 9) -> None:
        self._fast = EmaStream(fast)
        self._slow = EmaStream(slow)
        self._signal = EmaStream(signal)
        self.line = self.signal = self.histogram = NAN

    def update(self, close: float) -> tuple[float, float, float]:
        line = self._fast.update(close) - self._slow.update(close)
        sig = self._signal.update(line)
        self.line = line
        self.signal = sig
        self.histogram = hist = line - sig
        return line, sig, hist


class AtrStream:
    """Lean ATR (Wilder smoothing of the true range; first bar's TR is high - low)."""

    __slots__ = ("_prev_close", "_avg", "value")

    def __init__(self, period: int = 14) -> None:
        self._prev_close = None
        self._avg = WilderStream(period)
        self.value = NAN

    def update(self, high: float, low: float, close: float) -> float:
        prev = self._prev_close
        self._prev_close = close
        tr = high - low
        if prev is not None:
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
        v = self._avg.update(tr)
        self.value = v
        return v


class BollingerStream:
    """Lean Bollinger Bands: SMA middle +/- k population std."""

    __slots__ = ("k", "_moments", "middle", "upper", "lower")

    def __init__(self, period: int = 20, k: float = 2.0) -> None:
        self.k = k
        self._moments = RollingMomentsStream(period)
        self.middle = self.upper = self.lower = NAN

    def update(self, close: float) -> tuple[float, float, float]:
        mid = self._moments.update(close)
        band = self.k * self._moments.std()
        self.middle = mid
        self.upper = up = mid + band
        self.lower = lo = mid - band
        return mid, up, lo
