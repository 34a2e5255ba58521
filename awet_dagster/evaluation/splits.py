"""Walk-forward splits with purging and an embargo, over a bar index 0..n-1.

A sample at bar t is labelled by the window [t, t + horizon] (its forward return). A
training sample leaks when its label window reaches into the test window, so it is
*purged*: train t must satisfy t + horizon < test_start. Test labels may run up to
`horizon` bars past test_end, so train samples in (test_end, test_end + horizon] would
overlap them too; together with serial correlation of features this is what the
*embargo* after each test window covers: no train sample in [test_end, test_end +
max(embargo, horizon)). The embargo also separates training from the test window that
follows it: a training label must end more than `embargo` bars before the test starts,
so features with slowly decaying serial correlation cannot bridge the boundary.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Fold:
    index: int
    train: np.ndarray  # sample (bar) indices used for training, sorted
    test_start: int  # first test bar
    test_end: int  # one past the last test bar
    horizon: int
    embargo: int

    @property
    def test(self) -> np.ndarray:
        return np.arange(self.test_start, self.test_end)

    @property
    def train_start(self) -> int:
        return int(self.train[0]) if len(self.train) else self.test_start

    @property
    def train_last(self) -> int:
        return int(self.train[-1]) if len(self.train) else self.test_start - 1


def _n(n_bars_or_timestamps: int | Sequence) -> int:
    if isinstance(n_bars_or_timestamps, (int, np.integer)):
        return int(n_bars_or_timestamps)
    return len(np.unique(np.asarray(n_bars_or_timestamps)))


def walk_forward_splits(
    n_bars_or_timestamps: int | Sequence,
    folds: int = 6,
    scheme: Literal["rolling", "expanding"] = "rolling",
    train_size: int | None = None,
    test_size: int | None = None,
    horizon: int = 1,
    embargo: int = 0,
    *,
    train_after_test: bool = False,
) -> list[Fold]:
    """`folds` consecutive test windows at the end of the index, each with the training
    samples before it (rolling: the last `train_size` bars; expanding: all of them),
    purged and embargoed (see the module doc).

    Defaults: test_size = n // (folds + 2) (so the first fold still trains on about two
    test windows), train_size = 2 * test_size for the rolling scheme. Raises if the data
    cannot hold the folds."""
    n = _n(n_bars_or_timestamps)
    if folds < 1:
        raise ValueError("folds must be >= 1")
    if horizon < 0 or embargo < 0:
        raise ValueError("horizon and embargo must be >= 0")
    guard = max(embargo, horizon)
    # Default: the first fold still trains on about two test windows, after the purge gap.
    test_size = int(test_size) if test_size else (n - horizon - guard - 1) // (folds + 2)
    if test_size < 1:
        raise ValueError(f"{n} bars are too few for {folds} folds")
    if scheme == "rolling" and not train_size:
        train_size = 2 * test_size
    first_test = n - folds * test_size
    min_train = (train_size or 1) if scheme == "rolling" else 1
    if first_test - horizon - guard - 1 < min_train - 1 or first_test <= horizon + guard:
        raise ValueError(
            f"{n} bars cannot hold {folds} test windows of {test_size} bars after a training "
            f"window (train_size={train_size}, horizon={horizon})"
        )
    out = []
    idx = np.arange(n)
    for k in range(folds):
        ts, te = first_test + k * test_size, first_test + (k + 1) * test_size
        lo = max(0, ts - guard - train_size) if scheme == "rolling" else 0
        cand = idx[lo:ts] if not train_after_test else np.concatenate([idx[lo:ts], idx[te:]])
        before = cand < ts
        # Purge: label window [t, t+h] must end before the test window starts; a sample
        # after the test window must start after the embargo.
        # Embargo on both sides: `embargo` bars separate the last training label from the test
        # window, so slowly-decaying serial correlation cannot leak across the boundary.
        keep = np.where(before, cand + horizon < ts - embargo, cand >= te + guard)
        if not keep[before].any():
            raise ValueError(
                f"fold {k}: no training sample left before bar {ts} after purging {horizon} bars "
                f"(train_size={train_size}); use more data, fewer folds or a longer training window"
            )
        out.append(Fold(k, cand[keep], ts, te, horizon, embargo))
    return out
