"""Prediction drift (PSI) of recent forecasts against the model's reference window."""
import numpy as np
import pytest

from awet_dagster.observability.drift import PredictionDrift, psi


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 5000)
    assert psi(ref, rng.normal(0, 1, 5000)) < 0.02
    small, large = psi(ref, rng.normal(0.3, 1, 5000)), psi(ref, rng.normal(1.5, 1, 5000))
    assert 0.05 < small < large and large > 0.25
    with pytest.raises(ValueError):
        psi(ref[:5], ref)


def test_prediction_drift_uses_the_first_window_as_reference_and_resets():
    d = PredictionDrift(window=200)
    rng = np.random.default_rng(1)
    assert all(d.update(v) is None for v in rng.normal(0, 1, 200))  # filling the reference
    values = [d.update(v) for v in rng.normal(2.0, 1, 200)]
    assert values[-1] is not None and values[-1] > 0.25
    d.reset()
    assert d.update(0.0) is None and d.reference == [0.0]


def test_prediction_drift_window_sizes_are_configurable():
    d = PredictionDrift(window=20, min_recent=5)
    assert all(d.update(float(v)) is None for v in range(20))  # the reference
    assert [d.update(100.0) is None for _ in range(5)] == [True] * 4 + [False]  # 5 recent values: a PSI
    assert d.update(100.0) > 0.25  # every recent value above the reference's range: drift
    assert PredictionDrift().min_recent == 50 and PredictionDrift(window=1000).min_recent == 100  # defaults
    with pytest.raises(ValueError):
        PredictionDrift(window=5)
