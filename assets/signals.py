"""The alpha-only ensemble's Platt calibrator, fitted on its backtest outcomes.

Bars the live loop scores without a TFT forecast (no champion yet, a symbol the model does
not know, a model that gave no forecast) are the Lean alphas' call alone. This asset replays
the research window's bars through the signal engine (``signals.alpha_calibration``), fits
P(direction right | |score|) and stores it in ``calibrations``; the live signal service then
uses the newest fit and names it on each signal (``platt:alpha:<bar_type>:<id>``).
"""

import base64
import io

from dagster import AssetExecutionContext, AssetKey, MetadataValue, Output, asset

from resources.database import DatabaseResource
from resources.settings import SettingsResource


def _reliability_png(calls, calibrator) -> bytes:
    """Realised hit rate per confidence bin against the fitted curve (what calibration means)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    edges = np.linspace(0.0, 1.0, 6)
    mids, hits, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (calls.confidence >= lo) & ((calls.confidence < hi) | (hi == 1.0))
        if m.any():
            mids.append((lo + hi) / 2)
            hits.append(calls.right[m].mean())
            counts.append(int(m.sum()))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(mids, hits, s=[max(10, c / 20) for c in counts], label="realised hit rate (size: calls)")
    x = np.linspace(0, 1, 50)
    ax.plot(x, [calibrator(v) for v in x] if calibrator else 0.5 + x / 2,
            label="fitted Platt map" if calibrator else "uncalibrated 0.5 + |score|/2")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_xlabel("|signal_score| (alpha-only)")
    ax.set_ylabel("P(direction right)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def build_alpha_calibration(bar_type: str):
    @asset(
        key=AssetKey([bar_type, "alpha_calibration"]),
        group_name=f"{bar_type}_model",
        deps=[AssetKey([bar_type, "raw_bars"])],
        description=(
            "Platt calibration of the alpha-only ensemble (RSI / EMA cross / MACD) on its backtest "
            "outcomes in the research window: the signal engine replays the bars, each call's "
            "|score| is paired with whether the next bar moved its way. Stored in `calibrations`; "
            "the live signal service uses the newest for bars without a forecast."
        ),
        kinds={"postgres"},
    )
    def alpha_calibration(context: AssetExecutionContext, database: DatabaseResource, settings: SettingsResource):
        from awet_dagster.model.pipeline import training_window
        from awet_dagster.signals.alpha_calibration import alpha_calls, fit_alpha_calibrator
        from awet_dagster.storage.bars import read_bars
        from awet_dagster.storage.calibrations import store_calibration

        cfg = settings.config
        start, cutoff = training_window(cfg)
        symbols = list(cfg.data.symbols if bar_type == "daily" else cfg.data.minute_symbols)
        with database.connect() as conn:
            bars = read_bars(conn, symbols, bar_type, start, cutoff)
        if bars.height == 0:
            raise ValueError(f"no {bar_type} bars between {start:%Y-%m-%d} and {cutoff:%Y-%m-%d} for {symbols}: "
                             "materialize raw_bars first")
        context.log.info("alpha calibration: replaying %d %s bars of %d symbols", bars.height, bar_type,
                         bars["symbol"].n_unique())
        calls = alpha_calls(bars, cfg.signals)
        calibrator = fit_alpha_calibrator(calls)
        metadata = {
            "calls": int(calls.confidence.size),
            "hit_rate": float(calls.hit_rate) if calls.confidence.size else None,
            "reliability": MetadataValue.md(
                f"![reliability](data:image/png;base64,{base64.b64encode(_reliability_png(calls, calibrator)).decode()})"),
        }
        if calibrator is None:
            # Too few calls (or one outcome only): nothing stored, bars keep the uncalibrated map.
            context.log.warning("alpha calibration: %d calls, not enough to fit", calls.confidence.size)
            return Output(None, metadata={**metadata, "stored": False})
        with database.connect() as conn, conn.transaction():
            stored = store_calibration(
                conn, "alpha", bar_type, calibrator, n_calls=int(calls.confidence.size), hit_rate=calls.hit_rate,
                details={"symbols": symbols, "start": start.isoformat(), "end": cutoff.isoformat(), "horizon": 1})
        return Output(stored.name, metadata={**metadata, "stored": True, "name": f"platt:{stored.name}",
                                             "a": calibrator.a, "b": calibrator.b})

    return alpha_calibration
