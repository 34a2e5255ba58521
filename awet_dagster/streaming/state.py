"""Per-symbol streaming state for the live feature and alpha services.

Both keep one state per (symbol, bar_type) and share the same rules:
- warm-up: the first time a (symbol, bar_type) is seen, its last ``warmup_bars`` bars
  before the event are read through a ``HistoryReader`` (the ``bars`` table in the live
  services) and fed to the state WITHOUT emitting anything. A restarted service thus
  continues with the values an uninterrupted one would have computed;
- a bar whose ts is not after the last one seen (redelivery, out-of-order) is skipped
  and counted: it must neither advance the indicators nor emit a second time.

Why ``DEFAULT_WARMUP_BARS`` is far above ``MAX_WARMUP``: ``MAX_WARMUP`` bars make every
feature *present*, but the recursive indicators (Lean EMA, Wilder RSI/ATR, MACD) still
remember their seed: its weight after n bars is about (1 - 1/14)^n for the slowest of
them (Wilder 14). After 1000 bars that is < 1e-30, so a warmed-up state equals a state
that saw the whole history to float precision (the live/batch parity tests need 1e-9).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from awet_dagster.alphas import EmaCrossAlpha, MacdAlpha, RsiAlpha
from awet_dagster.alphas.signal import AlphaSignal as CoreSignal
from awet_dagster.alphas.signal import Direction, bar_duration
from awet_dagster.contracts import AlphaSignal, FeatureEvent, MarketRawEvent
from awet_dagster.features import FEATURE_SET_VERSION, FeatureState
from awet_dagster.sources.corporate_actions import adjusted_bar
from awet_dagster.streaming.events import derived_event_id, event_to_bar
from awet_dagster.streaming.warmup import histories_by_key

DEFAULT_WARMUP_BARS = 1000


class HistoryReader(Protocol):
    """``(symbol, bar_type, before, limit) -> bars oldest first`` (bar-schema mappings)."""

    def __call__(self, symbol: str, bar_type: str, before: datetime, limit: int) -> list[Mapping[str, Any]]: ...


def no_history(symbol: str, bar_type: str, before: datetime, limit: int) -> list[Mapping[str, Any]]:
    return []


class ManyHistoryReader(Protocol):
    """``({symbol: before}, bar_type, limit) -> {symbol: bars oldest first}``: many symbols'
    history in one read (e.g. ``read_last_bars_many``)."""

    def __call__(self, wanted: Mapping[str, datetime], bar_type: str, limit: int) -> Mapping[str, list[Mapping[str, Any]]]: ...


@dataclass
class StreamCounters:
    """What a streaming engine did (exposed for logs, metrics and tests)."""

    bars: int = 0  # bars accepted (emitted for)
    skipped_stale: int = 0  # ts not after the last seen: duplicates / out of order
    warmups: int = 0  # (symbol, bar_type) states created
    warmup_bars: int = 0  # history bars fed without emitting


class _Keyed:
    """Shared keyed-state bookkeeping: warm-up on first sight, stale-bar skipping."""

    def __init__(self, history: HistoryReader | None, warmup_bars: int) -> None:
        if warmup_bars < 0:
            raise ValueError("warmup_bars must be >= 0")
        self._history = history or no_history
        self._warmup_bars = warmup_bars
        self._last_ts: dict[tuple[str, str], datetime] = {}
        self._warm: set[tuple[str, str]] = set()
        self.counters = StreamCounters()

    def forget(self) -> None:
        """Drop every key's state: each is warmed up again from history on its next bar
        (another instance may have handled its bars meanwhile: a consumer-group rebalance)."""
        self._last_ts.clear()
        self._warm.clear()
        self._clear()

    def _clear(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def knows(self, key: tuple[str, str]) -> bool:
        """Whether (symbol, bar_type) has state (warmed up or seen)."""
        return key in self._warm

    def _warm_up(self, key: tuple[str, str], ts: datetime, history: Sequence[Mapping[str, Any]]) -> None:
        self._create(key)
        self._warm.add(key)
        self.counters.warmups += 1
        for bar in history:
            if bar["ts"] < ts:  # defensive: the reader promised "before ts"
                self._feed(key, bar)
                self._last_ts[key] = bar["ts"]
                self.counters.warmup_bars += 1

    def warm_up_many(self, first: Mapping[tuple[str, str], datetime], read_many: ManyHistoryReader) -> int:
        """Warm up every unknown (symbol, bar_type) of ``first`` ({key: ts of its first bar})
        with one ``read_many`` call per bar type instead of one read per symbol (a live
        batch bringing 500 new symbols). The same warm-up as the one ``_accept`` does for a
        single new key. Returns how many keys were warmed up."""
        new = {key: ts for key, ts in first.items() if key not in self._warm}
        # Read first, create after: if the read fails (DB down) no half-made state stays.
        histories = histories_by_key(new, read_many, self._warmup_bars)
        for key, ts in new.items():
            self._warm_up(key, ts, histories[key])
        return len(new)

    def _accept(self, symbol: str, bar_type: str, ts: datetime) -> bool:
        """Warm the state up if new; True if the bar is new (strictly after the last)."""
        key = (symbol, bar_type)
        if key not in self._warm:
            # Read first, create after: if the read fails (DB down) no half-made state stays.
            self._warm_up(key, ts, self._history(symbol, bar_type, ts, self._warmup_bars))
        last = self._last_ts.get(key)
        if last is not None and ts <= last:
            self.counters.skipped_stale += 1
            return False
        self._last_ts[key] = ts
        self.counters.bars += 1
        return True

    def known(self) -> list[tuple[str, str]]:
        return sorted(self._last_ts)

    def _create(self, key: tuple[str, str]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _feed(self, key: tuple[str, str], bar: Mapping[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------- features
class FeatureEngine(_Keyed):
    """MarketRawEvent -> FeatureEvent, one ``FeatureState`` per (symbol, bar_type)."""

    def __init__(self, history: HistoryReader | None = None, *, warmup_bars: int = DEFAULT_WARMUP_BARS) -> None:
        super().__init__(history, warmup_bars)
        self._states: dict[tuple[str, str], FeatureState] = {}

    def _create(self, key: tuple[str, str]) -> None:
        self._states[key] = FeatureState(key[0])

    def _clear(self) -> None:
        self._states.clear()

    def _feed(self, key: tuple[str, str], bar: Mapping[str, Any]) -> None:
        self._states[key].update(bar)

    def on_bar(self, event: MarketRawEvent) -> FeatureEvent | None:
        """Features of the event's bar, or None for a stale/duplicate bar."""
        if not self._accept(event.symbol, event.bar_type, event.ts):
            return None
        values = self._states[(event.symbol, event.bar_type)].update(event_to_bar(event))
        if values is None:  # cannot happen after _accept, kept as a guard
            self.counters.skipped_stale += 1
            return None
        # NaN = not available (warm-up, no quotes): the contract carries finite values
        # only, so a missing feature is an absent key (a null in the batch table).
        features = {k: v for k, v in values.items() if v == v}
        return FeatureEvent(
            event_id=derived_event_id("features", event.symbol, event.bar_type, event.ts, FEATURE_SET_VERSION),
            correlation_id=event.correlation_id,
            symbol=event.symbol,
            bar_type=event.bar_type,
            ts=event.ts,
            feature_set_version=FEATURE_SET_VERSION,
            features=features,
        )


# --------------------------------------------------------------------------- alphas
#: Contract name of each alpha kind, and the factory of its streaming model.
ALPHA_MODELS: dict[str, Callable[[str, str], Any]] = {
    "rsi": lambda symbol, bar_type: RsiAlpha(symbol, bar_type=bar_type),
    "ema_cross": lambda symbol, bar_type: EmaCrossAlpha(symbol, bar_type=bar_type),
    "macd": lambda symbol, bar_type: MacdAlpha(symbol, bar_type=bar_type),
}
_KIND_BY_PREFIX = {"RsiAlphaModel": "rsi", "EmaCrossAlphaModel": "ema_cross", "MacdAlphaModel": "macd"}
_DIRECTION = {Direction.UP: "long", Direction.DOWN: "short", Direction.FLAT: "flat"}

#: Lean's RSI/EMA-cross/MACD models set neither magnitude nor confidence. The contract
#: requires both: magnitude 0 = "no size forecast"; confidence 1 = a full vote, so the
#: ensemble weights (signals config) alone decide how much an alpha counts.
DEFAULT_MAGNITUDE = 0.0
DEFAULT_CONFIDENCE = 1.0


def alpha_kind(model_name: str) -> str:
    """'rsi' | 'ema_cross' | 'macd' from a core model name like 'RsiAlphaModel(14,daily)'."""
    try:
        return _KIND_BY_PREFIX[model_name.split("(", 1)[0]]
    except KeyError:
        raise ValueError(f"unknown alpha model {model_name!r}") from None


def to_contract_signal(sig: CoreSignal, bar_type: str, correlation_id: str) -> AlphaSignal:
    """Contract ``AlphaSignal`` of a core alpha signal (period converted to bars)."""
    kind = alpha_kind(sig.alpha)
    period_bars = max(1, round(sig.period / bar_duration(bar_type)))
    return AlphaSignal(
        event_id=derived_event_id("alpha", sig.symbol, bar_type, sig.ts, kind),
        correlation_id=correlation_id,
        symbol=sig.symbol,
        ts=sig.ts,
        bar_type=bar_type,  # type: ignore[arg-type]
        alpha=kind,  # type: ignore[arg-type]
        direction=_DIRECTION[sig.direction],  # type: ignore[arg-type]
        magnitude=DEFAULT_MAGNITUDE if sig.magnitude is None else abs(sig.magnitude),
        confidence=DEFAULT_CONFIDENCE if sig.confidence is None else sig.confidence,
        period=period_bars,
    )


class AlphaBank(_Keyed):
    """MarketRawEvent -> AlphaSignals (on state change only) for each alpha kind."""

    def __init__(self, history: HistoryReader | None = None, *, kinds: tuple[str, ...] = tuple(ALPHA_MODELS),
                 warmup_bars: int = DEFAULT_WARMUP_BARS) -> None:
        unknown = sorted(set(kinds) - set(ALPHA_MODELS))
        if unknown:
            raise ValueError(f"unknown alpha kind(s) {unknown}; known: {sorted(ALPHA_MODELS)}")
        super().__init__(history, warmup_bars)
        self.kinds = tuple(kinds)
        self._models: dict[tuple[str, str], list[Any]] = {}

    def _create(self, key: tuple[str, str]) -> None:
        self._models[key] = [ALPHA_MODELS[k](key[0], key[1]) for k in self.kinds]

    def _clear(self) -> None:
        self._models.clear()

    def _feed(self, key: tuple[str, str], bar: Mapping[str, Any]) -> None:
        adjusted = adjusted_bar(bar)
        for model in self._models[key]:
            model.update(adjusted)  # warm-up: state only, the signals are dropped

    def on_bar(self, event: MarketRawEvent) -> list[AlphaSignal]:
        """The bar's insights (the alphas whose view changed), then its ``bar_done`` mark;
        nothing for a stale/duplicate bar. The models see split/dividend-adjusted prices,
        as the signal engine's own alphas do (a 4:1 split is not a crash to RSI)."""
        if not self._accept(event.symbol, event.bar_type, event.ts):
            return []
        bar = adjusted_bar(event_to_bar(event))
        out: list[AlphaSignal] = []
        for model in self._models[(event.symbol, event.bar_type)]:
            for sig in model.update(bar):
                out.append(to_contract_signal(sig, event.bar_type, event.correlation_id))
        out.append(AlphaSignal(
            event_id=derived_event_id("alpha", event.symbol, event.bar_type, event.ts, "bar_done"),
            correlation_id=event.correlation_id, symbol=event.symbol, ts=event.ts,
            bar_type=event.bar_type, status="bar_done"))  # type: ignore[arg-type]
        return out
