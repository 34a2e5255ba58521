"""Contracts version 2: stored bars name their feed, stored signals are ScoredSignal v2.

Revision ID: 0005_contracts_v2
Revises: 0004_bar_factors
Create Date: 2026-12-03

* ``bars.source`` holds the design's four feeds (``contracts.bar_source``): "polygon",
  "alpaca", "yfinance", or "stub" for the offline sample, a Lean folder, the synthetic
  generator and a v1 "replay" (whose feed was not recorded). A CHECK keeps it so.
* ``signals``: ``direction`` "flat" becomes "neutral", and each ``payload`` (the event as
  published) is rewritten from ScoredSignal v1 to v2 field by field: symbol -> ticker,
  direction -> ensemble_direction, score -> signal_score, confidence ->
  ensemble_confidence, active_alphas [names] -> {name: vote} (the vote from the alpha's
  component score), tft_* from the TFT component and quantiles, regime "warmup" ->
  "sideways" with regime_ready false. v1 did not record which calibrator it used:
  ``calibrator`` is "unrecorded (v1)".
The downgrade maps back (bars keep "stub": the v1 names are not recoverable).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005_contracts_v2"
down_revision: str | Sequence[str] | None = "0004_bar_factors"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FEEDS = "('polygon', 'alpaca', 'yfinance', 'stub')"

# v1 alpha name -> its ComponentScores key (the vote is the sign of that score).
_VOTE = """
    CASE WHEN (p->'components'->>'{component}')::float8 > 0 THEN 'UP'
         WHEN (p->'components'->>'{component}')::float8 < 0 THEN 'DOWN' ELSE 'FLAT' END"""
_ALPHA_COMPONENT = {"rsi": "rsi", "ema_cross": "ema", "macd": "macd"}

# The TFT's own call, as signals/tft.py reads its quantiles: the sign of q50, and confidence
# |q50| / (|q50| + (q90 - q10) / 2) (1 for a point forecast with a sign).
_HAS_TFT = "(p->'components'->'tft' IS NOT NULL AND jsonb_typeof(p->'components'->'tft') <> 'null')"
_Q50 = "(p->'quantiles'->>'q50')::float8"
_HALF = "(((p->'quantiles'->>'q90')::float8 - (p->'quantiles'->>'q10')::float8) / 2)"
_TFT_DIRECTION = f"""
    CASE WHEN NOT {_HAS_TFT} THEN 'null'::jsonb
         WHEN {_Q50} > 0 THEN '"long"'::jsonb WHEN {_Q50} < 0 THEN '"short"'::jsonb ELSE '"neutral"'::jsonb END"""
_TFT_CONFIDENCE = f"""
    CASE WHEN NOT {_HAS_TFT} THEN 'null'::jsonb
         WHEN {_HALF} <= 0 THEN to_jsonb(CASE WHEN {_Q50} = 0 THEN 0.0 ELSE 1.0 END)
         ELSE to_jsonb(abs({_Q50}) / (abs({_Q50}) + {_HALF})) END"""


def _v2_payload() -> str:
    alphas = " || ".join(
        f"CASE WHEN p->'active_alphas' ? '{name}' THEN jsonb_build_object('{name}', {_VOTE.format(component=comp)}) "
        f"ELSE '{{}}'::jsonb END"
        for name, comp in _ALPHA_COMPONENT.items()
    )
    return f"""
    (p - 'symbol' - 'direction' - 'score' - 'confidence' - 'active_alphas' - 'regime') || jsonb_build_object(
        'schema_version', 2,
        'ticker', p->'symbol',
        'ensemble_direction', CASE WHEN p->>'direction' = 'flat' THEN 'neutral' ELSE p->>'direction' END,
        'signal_score', p->'score',
        'ensemble_confidence', p->'confidence',
        'active_alphas', {alphas},
        'tft_direction', {_TFT_DIRECTION},
        'tft_confidence', {_TFT_CONFIDENCE},
        'tft_q50', CASE WHEN {_HAS_TFT} THEN p->'quantiles'->'q50' ELSE 'null'::jsonb END,
        'calibrator', 'unrecorded (v1)',
        'regime', CASE WHEN p->>'regime' = 'warmup' THEN 'sideways' ELSE p->>'regime' END,
        'regime_ready', p->>'regime' <> 'warmup')"""


def _v1_payload() -> str:
    return """
    (p - 'ticker' - 'ensemble_direction' - 'signal_score' - 'ensemble_confidence' - 'active_alphas' - 'regime'
       - 'regime_ready' - 'tft_direction' - 'tft_confidence' - 'tft_q50' - 'calibrator') || jsonb_build_object(
        'schema_version', 1,
        'symbol', p->'ticker',
        'direction', CASE WHEN p->>'ensemble_direction' = 'neutral' THEN 'flat' ELSE p->>'ensemble_direction' END,
        'score', p->'signal_score',
        'confidence', p->'ensemble_confidence',
        'active_alphas', COALESCE((SELECT jsonb_agg(k ORDER BY k) FROM jsonb_object_keys(p->'active_alphas') AS k),
                                  '[]'::jsonb),
        'regime', CASE WHEN p->>'regime_ready' = 'false' THEN 'warmup' ELSE p->>'regime' END)"""


def _rewrite(expr: str, version: int) -> None:
    # ``p`` names the old payload; only rows of the other version are touched (idempotent).
    op.execute(
        f"UPDATE signals AS s SET payload = (SELECT {expr} FROM (SELECT s.payload AS p) AS old) "
        f"WHERE s.payload IS NOT NULL AND COALESCE((s.payload->>'schema_version')::int, 1) <> {version}"
    )


def upgrade() -> None:
    op.execute(f"UPDATE bars SET source = 'stub' WHERE source NOT IN {FEEDS}")
    op.create_check_constraint("ck_bars_source", "bars", f"source IN {FEEDS}")
    op.execute("UPDATE signals SET direction = 'neutral' WHERE direction = 'flat'")
    _rewrite(_v2_payload(), 2)


def downgrade() -> None:
    _rewrite(_v1_payload(), 1)
    op.execute("UPDATE signals SET direction = 'flat' WHERE direction = 'neutral'")
    op.drop_constraint("ck_bars_source", "bars", type_="check")
