"""Ensemble weights: validated, changeable at runtime, renormalised over active components.

Why renormalise: a component that has no view for a bar (no TFT model loaded, an alpha
with no live insight) must not drag the score towards zero as if it had voted "flat";
its weight is shared out among the components that did vote.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from awet_dagster.config.schema import SignalWeights

COMPONENTS: tuple[str, ...] = ("tft", "rsi", "ema", "macd")


@dataclass(frozen=True)
class EnsembleWeights:
    tft: float = 0.5
    rsi: float = 0.2
    ema: float = 0.2
    macd: float = 0.1

    def __post_init__(self) -> None:
        values = self.as_dict()
        for name, w in values.items():
            if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"ensemble weight {name}={w!r} must be a finite number >= 0")
        if sum(values.values()) <= 0:
            raise ValueError("ensemble weights must not all be zero")

    @classmethod
    def from_config(cls, cfg: SignalWeights) -> EnsembleWeights:
        return cls(tft=cfg.tft, rsi=cfg.rsi, ema=cfg.ema, macd=cfg.macd)

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> EnsembleWeights:
        unknown = set(values) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown ensemble components {sorted(unknown)}; known: {list(COMPONENTS)}")
        return cls(**{k: float(v) for k, v in values.items()})

    def as_dict(self) -> dict[str, float]:
        return {"tft": self.tft, "rsi": self.rsi, "ema": self.ema, "macd": self.macd}

    def renormalised(self, active: Iterable[str]) -> dict[str, float]:
        """Weights of the `active` components scaled to sum to 1 ({} if none has weight)."""
        raw = self.as_dict()
        chosen = {name: raw[name] for name in COMPONENTS if name in set(active) and raw[name] > 0}
        total = sum(chosen.values())
        if total <= 0:
            return {}
        return {name: w / total for name, w in chosen.items()}
