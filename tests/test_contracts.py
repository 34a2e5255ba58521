"""Event contracts: validation rules, JSON round trip, registry and committed JSON Schemas.

(The round trip of every contract through the real broker is in tests/test_bus.py.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from awet_dagster.contracts import (
    ALL_TOPICS,
    CONTRACT_MODELS,
    TOPIC_REGISTRY,
    DeadLetter,
    ExecutionReport,
    ExitEvent,
    MarketRawEvent,
    Prediction,
    Quantiles,
    RiskDecision,
    ScoredSignal,
    UNSUPPORTED_VERSION,
    all_topics_with_dlq,
    bar_source,
    dlq_topic,
    model_for_topic,
)
from awet_dagster.contracts.examples import example_events
from awet_dagster.contracts.schema_export import SCHEMA_DIR, main, render_schemas, stale_schemas

EXAMPLES = example_events()


def _bar_kwargs(**over):
    base = EXAMPLES[MarketRawEvent].model_dump(exclude={"event_id", "produced_at"})
    base.update(over)
    return base


@pytest.mark.parametrize("model", CONTRACT_MODELS, ids=lambda m: m.__name__)
def test_json_round_trip(model):
    event = EXAMPLES[model]
    wire = event.model_dump_json()
    assert model.model_validate_json(wire) == event
    assert model.model_validate_json(wire.encode()) == event
    payload = json.loads(wire)
    assert payload["schema_version"] == model.model_fields["schema_version"].default
    assert payload["correlation_id"] == "corr-example"
    assert payload["produced_at"].endswith("Z")


def test_every_event_gets_a_uuid4_event_id_and_utc_produced_at():
    a, b = MarketRawEvent(**_bar_kwargs()), MarketRawEvent(**_bar_kwargs())
    assert a.event_id != b.event_id and len(a.event_id) == 36 and a.event_id[14] == "4"
    assert a.produced_at.tzinfo is not None and a.produced_at.utcoffset() == timedelta(0)


def test_naive_datetime_rejected_with_clear_error():
    with pytest.raises(ValidationError, match="naive datetime rejected"):
        MarketRawEvent(**_bar_kwargs(ts=datetime(2024, 1, 2, 14, 30)))
    wire = EXAMPLES[MarketRawEvent].model_dump_json().replace("14:30:00Z", "14:30:00")
    with pytest.raises(ValidationError, match="naive datetime rejected"):
        MarketRawEvent.model_validate_json(wire)


def test_other_offsets_converted_to_utc():
    ny = timezone(timedelta(hours=-5))
    ev = MarketRawEvent(**_bar_kwargs(ts=datetime(2024, 1, 2, 9, 30, tzinfo=ny)))
    assert ev.ts == datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    assert ev.ts.utcoffset() == timedelta(0) and ev.ts.hour == 14
    assert '"ts":"2024-01-02T14:30:00Z"' in ev.model_dump_json()
    from_json = MarketRawEvent.model_validate_json(
        EXAMPLES[MarketRawEvent].model_dump_json().replace("14:30:00Z", "16:30:00+02:00")
    )
    assert from_json.ts == datetime(2024, 1, 2, 14, 30, tzinfo=UTC) and from_json.ts.hour == 14


def test_extra_field_rejected():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        MarketRawEvent(**_bar_kwargs(vwap=185.2))
    wire = json.loads(EXAMPLES[ScoredSignal].model_dump_json())
    wire["components"]["lstm"] = 0.1  # nested models are strict too
    with pytest.raises(ValidationError):
        ScoredSignal.model_validate(wire)


def test_events_are_frozen():
    ev = EXAMPLES[MarketRawEvent]
    with pytest.raises(ValidationError):
        ev.close = 1.0  # type: ignore[misc]
    assert isinstance(EXAMPLES[ScoredSignal].filters_passed, tuple)
    assert hash(ev)  # hashable: usable in sets for de-duplication


@pytest.mark.parametrize("bad", ["", "   "])
def test_correlation_id_required_and_non_empty(bad):
    kwargs = _bar_kwargs()
    kwargs.pop("correlation_id")
    with pytest.raises(ValidationError, match="correlation_id"):
        MarketRawEvent(**kwargs)
    with pytest.raises(ValidationError, match="correlation_id"):
        MarketRawEvent(**kwargs, correlation_id=bad)


@pytest.mark.parametrize("model", CONTRACT_MODELS, ids=lambda m: m.__name__)
def test_an_unknown_major_version_is_refused_naming_both_versions(model):
    ours = model.model_fields["schema_version"].default
    wire = json.loads(EXAMPLES[model].model_dump_json())
    wire["schema_version"] = ours + 1
    with pytest.raises(ValidationError) as err:
        model.model_validate_json(json.dumps(wire))
    assert [e["type"] for e in err.value.errors()] == [UNSUPPORTED_VERSION]
    assert f"schema_version {ours + 1} is not supported: this consumer reads major version {ours}" in str(err.value)
    wire.pop("schema_version")  # absent: the version this consumer reads
    assert model.model_validate_json(json.dumps(wire)).schema_version == ours


def test_a_version_1_scored_signal_is_refused_as_a_version_not_as_renamed_fields():
    v1 = {"correlation_id": "c", "schema_version": 1, "symbol": "AAPL", "ts": "2024-01-02T14:30:00Z",
          "direction": "flat", "score": 0.1, "confidence": 0.1}
    with pytest.raises(ValidationError) as err:
        ScoredSignal.model_validate_json(json.dumps(v1))
    assert [e["type"] for e in err.value.errors()] == [UNSUPPORTED_VERSION]


# The design's fields, by name: JSON type (None: nullable too) and value set where it has one.
DESIGN_FIELDS = {
    ScoredSignal: {
        "ticker": ("string", False, None),
        "tft_direction": ("string", True, {"long", "short", "neutral"}),
        "tft_confidence": ("number", True, None),
        "tft_q50": ("number", True, None),
        "ensemble_direction": ("string", False, {"long", "short", "neutral"}),
        "ensemble_confidence": ("number", False, None),
        "signal_score": ("number", False, None),
        "active_alphas": ("object", False, None),
        "regime": ("string", False, {"bull", "bear", "sideways"}),
    },
    MarketRawEvent: {
        "symbol": ("string", False, None), "ts": ("string", False, None),
        "open": ("number", False, None), "high": ("number", False, None), "low": ("number", False, None),
        "close": ("number", False, None), "volume": ("integer", False, None),
        "source": ("string", False, {"polygon", "alpaca", "yfinance", "stub"}),
    },
}


def _json_kind(prop: dict) -> tuple[str, bool, set | None]:
    """(JSON type, nullable, enum values) of a property of a model's JSON Schema."""
    options = prop.get("anyOf", [prop])
    nullable = any(o.get("type") == "null" for o in options)
    (main,) = [o for o in options if o.get("type") != "null"]
    values = set(main["enum"]) if "enum" in main else ({main["const"]} if "const" in main else None)
    return main.get("type", "string" if values else None), nullable, values


@pytest.mark.parametrize("model", list(DESIGN_FIELDS), ids=lambda m: m.__name__)
def test_contract_fields_are_the_designs_field_by_field(model):
    props = model.model_json_schema()["properties"]
    for name, (kind, nullable, values) in DESIGN_FIELDS[model].items():
        assert name in props, f"{model.__name__} lacks the design's field {name}"
        assert _json_kind(props[name]) == (kind, nullable, values), name
    # Names the design replaced are gone (no second spelling of the same fact).
    gone = {ScoredSignal: {"symbol", "direction", "score", "confidence"}, MarketRawEvent: set()}[model]
    assert not gone & set(props)


def test_active_alphas_map_each_alpha_to_its_vote():
    sig = EXAMPLES[ScoredSignal].model_dump()
    assert ScoredSignal(**{**sig, "active_alphas": {"rsi": "UP", "macd": "DOWN"}}).active_alphas["macd"] == "DOWN"
    with pytest.raises(ValidationError, match="active_alphas"):
        ScoredSignal(**{**sig, "active_alphas": {"rsi": "long"}})
    with pytest.raises(ValidationError, match="all set .* or all null"):
        ScoredSignal(**{**sig, "tft_direction": None})
    assert EXAMPLES[ScoredSignal].symbol == EXAMPLES[ScoredSignal].ticker  # the partition key


def test_market_raw_volume_is_whole_shares_and_source_a_design_feed():
    with pytest.raises(ValidationError, match="fractional part"):
        MarketRawEvent(**_bar_kwargs(volume=10.5))
    for bad in ("sample", "replay", "synthetic"):
        with pytest.raises(ValidationError, match="source"):
            MarketRawEvent(**_bar_kwargs(source=bad))
    replayed = MarketRawEvent(**_bar_kwargs(source="yfinance", replay=True))
    assert (replayed.source, replayed.replay) == ("yfinance", True)
    assert [bar_source(n) for n in ("polygon", "alpaca", "yfinance", "sample", "lean", "synthetic", None)] == [
        "polygon", "alpaca", "yfinance", "stub", "stub", "stub", "stub"]


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"open": 0.0}, "greater than 0"),
        ({"close": -1.0}, "greater than 0"),
        ({"volume": -5.0}, "greater than or equal to 0"),
        ({"high": 185.0}, "high .* below"),
        ({"low": 185.5}, "low .* above"),
        ({"bid": 186.0, "ask": 185.0}, "crossed quote"),
        ({"close": float("nan")}, "finite"),
        ({"bar_type": "hourly"}, "bar_type"),
    ],
)
def test_market_bar_validation(over, match):
    with pytest.raises(ValidationError, match=match):
        MarketRawEvent(**_bar_kwargs(**over))


def test_domain_rules_of_other_contracts():
    with pytest.raises(ValidationError, match="q10 <= q50 <= q90"):
        Quantiles(q10=0.1, q50=0.0, q90=0.2)
    pred = EXAMPLES[Prediction].model_dump()
    with pytest.raises(ValidationError, match="quantiles keys"):
        Prediction(**{**pred, "horizons": (1, 5)})
    with pytest.raises(ValidationError, match="at least one horizon"):
        Prediction(**{**pred, "horizons": (), "quantiles": {}})
    # "No forecast" is an explicit answer: a reason, nothing else.
    none = {**pred, "status": "no_forecast", "reason": "window_incomplete", "horizons": (), "quantiles": {}}
    assert Prediction(**none).status == "no_forecast"
    for bad in ({"reason": None}, {"horizons": (1,), "quantiles": {1: pred["quantiles"][1]}}):
        with pytest.raises(ValidationError, match="no_forecast"):
            Prediction(**{**none, **bad})
    with pytest.raises(ValidationError, match="reason is for no_forecast"):
        Prediction(**{**pred, "reason": "x"})
    risk = EXAMPLES[RiskDecision].model_dump(exclude={"event_id", "produced_at"})
    with pytest.raises(ValidationError, match="at least one reason"):
        RiskDecision(**{**risk, "approved": False, "reasons": ()})
    with pytest.raises(ValidationError, match="stop_loss must be below"):
        RiskDecision(**{**risk, "stop_loss": 190.0})
    rep = EXAMPLES[ExecutionReport].model_dump(exclude={"event_id", "produced_at"})
    with pytest.raises(ValidationError, match="filled_qty"):
        ExecutionReport(**{**rep, "filled_qty": 11.0})
    with pytest.raises(ValidationError, match="score"):
        ScoredSignal(**{**EXAMPLES[ScoredSignal].model_dump(), "signal_score": 1.5})
    assert EXAMPLES[ExitEvent].side == "sell"


def test_prediction_horizon_keys_survive_json():
    ev = Prediction.model_validate_json(EXAMPLES[Prediction].model_dump_json())
    assert set(ev.quantiles) == {1, 5, 15} and all(isinstance(k, int) for k in ev.quantiles)


def test_topic_registry():
    assert TOPIC_REGISTRY["market.raw"] is MarketRawEvent
    assert TOPIC_REGISTRY["engineered"].__name__ == "FeatureEvent"
    assert TOPIC_REGISTRY["alpha.signals"].__name__ == "AlphaSignal"
    assert TOPIC_REGISTRY["predictions"] is Prediction
    assert TOPIC_REGISTRY["signals.scored"] is ScoredSignal
    assert TOPIC_REGISTRY["risk.approved"] is TOPIC_REGISTRY["risk.rejected"] is RiskDecision
    assert TOPIC_REGISTRY["exec.done"] is ExecutionReport
    assert TOPIC_REGISTRY["exec.exits"] is ExitEvent
    assert TOPIC_REGISTRY["exec.orders"].__name__ == "OrderEvent"
    assert model_for_topic("market.raw.dlq") is DeadLetter
    assert dlq_topic("market.raw") == "market.raw.dlq"
    with pytest.raises(ValueError):
        dlq_topic("market.raw.dlq")
    with pytest.raises(KeyError, match="no contract registered"):
        model_for_topic("nope")
    assert len(all_topics_with_dlq()) == 2 * len(ALL_TOPICS)
    with pytest.raises(TypeError):
        TOPIC_REGISTRY["x"] = MarketRawEvent  # type: ignore[index]


def test_committed_json_schemas_are_current():
    stale = stale_schemas()
    assert not stale, f"stale: {stale}; run: python -m awet_dagster.contracts.schema_export"
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(render_schemas())
    schema = json.loads((SCHEMA_DIR / "MarketRawEvent.json").read_text())
    assert schema["additionalProperties"] is False and "correlation_id" in schema["required"]


def test_schema_export_check_detects_drift(tmp_path, capsys):
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "MarketRawEvent.json").write_text("{}\n")
    (tmp_path / "Removed.json").write_text("{}\n")
    assert main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "MarketRawEvent.json" in err and "Removed.json" in err
    main(["--out", str(tmp_path)])
    assert not (tmp_path / "Removed.json").exists() and not stale_schemas(tmp_path)
