"""Run an alpha model over a bar frame of many symbols (research, backtests)."""
from __future__ import annotations

import polars as pl

from awet_dagster.alphas.signal import AlphaSignal, signals_to_frame
from awet_dagster.sources.corporate_actions import adjusted_frame


def alpha_signals(bars: pl.DataFrame, model_cls, **params) -> pl.DataFrame:
    """Signals of `model_cls` (RsiAlpha, EmaCrossAlpha, MacdAlpha) for every symbol in
    `bars`, each symbol on its own history in ts order; same signals as feeding the
    streaming model bar by bar. Returns a frame with `SIGNAL_SCHEMA`."""
    out: list[AlphaSignal] = []
    frame = adjusted_frame(bars).sort("symbol", "ts")  # split/dividend-adjusted, as the streaming models
    for (symbol,), g in frame.group_by("symbol", maintain_order=True):
        bar_type = g["bar_type"][0] if "bar_type" in g.columns else "daily"
        out.extend(
            model_cls.batch(
                symbol, bar_type, g["ts"].to_list(), g["high"].to_numpy(), g["low"].to_numpy(),
                g["close"].to_numpy(), **params,
            )
        )
    return signals_to_frame(out)
