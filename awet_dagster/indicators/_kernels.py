"""Compiled (numba) kernels for the recursive indicators.

Every kernel runs the exact arithmetic of the streaming classes in
`awet_dagster.indicators.streaming`, element by element and in the same order:
seed = left-to-right sum of the first `period` inputs / period (leading NaN inputs
skipped), then y = alpha * x + (1 - alpha) * y. So batch == streaming bit for bit,
not just to a tolerance. numba without fastmath keeps IEEE semantics: no
reassociation and no fused multiply-add contraction; ``error_model="numpy"`` makes a
division by zero give inf/NaN like numpy and the streaming floats (numba's default
raises ZeroDivisionError).

Outputs are allocated by the caller with numpy and passed in: numpy asks the kernel
for transparent huge pages on large buffers, numba's own allocator does not, and at
1M rows the page faults of three fresh 8 MB arrays cost several times the loop itself.

`cache=True` stores the machine code next to this file (``__pycache__``) or in
``NUMBA_CACHE_DIR``; the first call in a fresh environment compiles (about a second
per kernel), later processes load it from the cache.
"""
from __future__ import annotations

import numpy as np
from numba import njit

_NAN = np.nan


@njit(cache=True, error_model="numpy", inline="always")
def _seeded_step(x, alpha, decay, period, count, total, y):
    """One update of a seeded smoother: (output, count, total, y) after input x.

    Mirrors `_SeededSmoother.update`: NaN until `period` inputs were seen (leading
    NaNs are not counted), then the seed mean, then the exponential recursion."""
    if count >= period:
        y = alpha * x + decay * y
        return y, count, total, y
    if count == 0 and x != x:
        return _NAN, count, total, y
    count += 1
    total += x
    if count == period:
        y = total / period
        return y, count, total, y
    return _NAN, count, total, y


@njit(cache=True, error_model="numpy")
def seeded_smoothing(x, period, alpha, out):
    """Lean EMA (alpha = 2/(n+1)) / Wilder (alpha = 1/n) of x into out (same length)."""
    n = x.shape[0]
    decay = 1.0 - alpha
    # Leading NaNs are skipped, the seed is the mean of the next `period` inputs.
    s = 0
    while s < n and x[s] != x[s]:
        out[s] = _NAN
        s += 1
    p = s + period - 1
    if p >= n:
        for i in range(s, n):
            out[i] = _NAN
        return
    total = 0.0
    for i in range(s, p):
        total += x[i]
        out[i] = _NAN
    total += x[p]
    y = total / period
    out[p] = y
    for i in range(p + 1, n):
        y = alpha * x[i] + decay * y
        out[i] = y
    return


@njit(cache=True, error_model="numpy")
def rsi(c, period, out):
    """Lean RSI (Wilder averages of gains/losses) of c into out; mirrors `RsiStream.update`."""
    n = c.shape[0]
    if n == 0:
        return
    out[0] = _NAN
    alpha = 1.0 / period
    decay = 1.0 - alpha
    count = 0
    sg = 0.0
    sl = 0.0
    ag = _NAN
    al = _NAN
    i = 1
    # Warm-up: leading NaN changes are skipped, then `period` changes seed the averages.
    while i < n and count < period:
        d = c[i] - c[i - 1]
        if d >= 0.0:
            g = d
            lo = 0.0
        elif d < 0.0:
            g = 0.0
            lo = -d
        else:
            g = _NAN
            lo = _NAN
        if count == 0 and g != g:
            out[i] = _NAN
            i += 1
            continue
        count += 1
        sg += g
        sl += lo
        if count == period:
            ag = sg / period
            al = sl / period
            out[i] = 100.0 if al == 0.0 else 100.0 - 100.0 / (1.0 + ag / al)
        else:
            out[i] = _NAN
        i += 1
    # Steady state: two independent Wilder recursions (instruction-level parallel),
    # written with selects instead of branches (a random walk's up/down moves would
    # mispredict half the time). NaN: `not d < 0` and `not d >= 0` are both true, so
    # gain and loss are NaN, as in RsiStream.
    for j in range(i, n):
        d = c[j] - c[j - 1]
        g = d if not d < 0.0 else 0.0
        lo = -d if not d >= 0.0 else 0.0
        ag = alpha * g + decay * ag
        al = alpha * lo + decay * al
        v = 100.0 - 100.0 / (1.0 + ag / al)
        out[j] = 100.0 if al == 0.0 else v
    return


@njit(cache=True, error_model="numpy")
def macd(c, fast_alpha, fast, slow_alpha, slow, signal_alpha, signal, line, sig, hist):
    """Lean MACD of c in one pass into line/sig/hist; mirrors `MacdStream.update`."""
    n = c.shape[0]
    fd = 1.0 - fast_alpha
    sd = 1.0 - slow_alpha
    gd = 1.0 - signal_alpha
    fc = 0
    ft = 0.0
    fy = _NAN
    sc = 0
    st = 0.0
    sy = _NAN
    gc = 0
    gt = 0.0
    gy = _NAN
    i = 0
    # Warm-up: until all three averages are seeded (the whole series if a NaN keeps
    # the line from ever becoming valid), the generic step with its branches.
    while i < n and not (fc >= fast and sc >= slow and gc >= signal):
        x = c[i]
        f, fc, ft, fy = _seeded_step(x, fast_alpha, fd, fast, fc, ft, fy)
        s, sc, st, sy = _seeded_step(x, slow_alpha, sd, slow, sc, st, sy)
        m = f - s
        g, gc, gt, gy = _seeded_step(m, signal_alpha, gd, signal, gc, gt, gy)
        line[i] = m
        sig[i] = g
        hist[i] = m - g
        i += 1
    # Steady state: the same products in the same order, no branches.
    for j in range(i, n):
        x = c[j]
        fy = fast_alpha * x + fd * fy
        sy = slow_alpha * x + sd * sy
        m = fy - sy
        gy = signal_alpha * m + gd * gy
        line[j] = m
        sig[j] = gy
        hist[j] = m - gy
