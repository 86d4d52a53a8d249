"""Temperature calibration: recovery of a known miscalibration, the full-metric spinal fit, identity and
shapes of `apply_temperatures`, and cross-fitting that never fits a fold's temperatures on its own rows."""

import numpy as np
import pytest
from scipy import special

from lumbar_jax import calibration
from lumbar_jax import labels as labels_lib
from lumbar_jax import metrics

_GROUPS = tuple(labels_lib.CONDITION_GROUPS)


def _synthetic(seed: int, n: int, sharpen: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from random true rows p, and predictions softmax(sharpen * log q), where q is proportional
    to 1/2/4 x p: the row that minimises the metric's weighted log loss in expectation. So T = sharpen
    undoes the miscalibration (for foraminal and subarticular; spinal also carries any_severe_spinal)."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet([4.0, 1.5, 0.8], size=(n, labels_lib.NUM_TARGETS))
    labels = (rng.random((n, labels_lib.NUM_TARGETS, 1)) > np.cumsum(p, axis=-1)).sum(axis=-1)
    best = p * labels_lib.SEVERITY_WEIGHTS
    best /= best.sum(axis=-1, keepdims=True)
    return labels, special.softmax(sharpen * np.log(best), axis=-1)


def _score(labels, probs, temperatures) -> float:
    return metrics.competition_score(labels, calibration.apply_temperatures(probs, temperatures))["score"]


@pytest.mark.parametrize("sharpen", [3.0, 1.0, 0.5])
def test_fit_recovers_known_temperature_and_never_worsens(sharpen):
    labels, probs = _synthetic(seed=0, n=600, sharpen=sharpen)
    fitted = calibration.fit_temperatures(labels, probs)
    assert fitted["foraminal"] == pytest.approx(sharpen, rel=0.1)
    assert fitted["subarticular"] == pytest.approx(sharpen, rel=0.1)
    before = _score(labels, probs, dict.fromkeys(_GROUPS, 1.0))
    after = _score(labels, probs, fitted)
    assert after <= before
    if sharpen != 1.0:
        assert after < before - 0.05


def test_spinal_temperature_minimises_full_score_not_spinal_loss():
    # Overconfident spinal rows: the spinal log loss alone prefers T ~ 3, but any_severe_spinal (the largest
    # severe probability per study) prefers less softening, so the full-score optimum is lower.
    labels, probs = _synthetic(seed=0, n=600, sharpen=3.0)
    fitted = calibration.fit_temperatures(labels, probs)
    t = fitted["spinal"]
    for nearby in (t / 1.05, t * 1.05):
        assert _score(labels, probs, fitted) < _score(labels, probs, {**fitted, "spinal": nearby})

    def spinal_loss(temperature):
        calibrated = calibration.apply_temperatures(probs, {**fitted, "spinal": temperature})
        return metrics.competition_score(labels, calibrated)["spinal"]

    assert spinal_loss(t * 1.1) < spinal_loss(t)  # the spinal loss alone would have gone further


def test_search_finds_the_global_minimum_where_brent_alone_stops_at_a_local_one():
    # Global minimum at log T = -1.2, a local one at log T = 1.0 where a bounded Brent search over the whole
    # range ends up.
    def two_minima(log_t):
        return min((log_t - 1.0) ** 2 + 0.05, (log_t + 1.2) ** 2)

    assert calibration._minimise_log_temperature(two_minima) == pytest.approx(-1.2, abs=1e-3)


def test_fit_is_deterministic_and_keeps_unlabelled_group_at_one():
    labels, probs = _synthetic(seed=1, n=200, sharpen=2.0)
    labels[:, labels_lib.group_target_indices("subarticular")] = labels_lib.MISSING
    first = calibration.fit_temperatures(labels, probs)
    assert first == calibration.fit_temperatures(labels.copy(), probs.copy())
    assert first["subarticular"] == 1.0
    assert all(type(v) is float for v in first.values())


def test_apply_identity_shapes_and_per_group():
    _, probs = _synthetic(seed=2, n=4, sharpen=1.5)
    ones = dict.fromkeys(_GROUPS, 1.0)
    np.testing.assert_allclose(calibration.apply_temperatures(probs, ones), probs, atol=1e-12)
    np.testing.assert_allclose(calibration.apply_temperatures(probs[0], ones), probs[0], atol=1e-12)

    temperatures = {"spinal": 2.0, "foraminal": 1.0, "subarticular": 0.5}
    batched = calibration.apply_temperatures(probs, temperatures)
    assert batched.shape == probs.shape
    np.testing.assert_allclose(batched.sum(axis=-1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(batched.argmax(-1), probs.argmax(-1))
    np.testing.assert_allclose(calibration.apply_temperatures(probs[1], temperatures), batched[1], atol=1e-15)
    nested = calibration.apply_temperatures(probs.reshape(2, 2, labels_lib.NUM_TARGETS, 3), temperatures)
    np.testing.assert_allclose(nested.reshape(probs.shape), batched, atol=1e-15)

    spinal, foraminal, subarticular = (labels_lib.group_target_indices(g) for g in _GROUPS)
    np.testing.assert_allclose(batched[:, foraminal], probs[:, foraminal], atol=1e-12)
    assert np.all(batched[:, spinal].max(-1) < probs[:, spinal].max(-1))  # T > 1 softens
    assert np.all(batched[:, subarticular].max(-1) > probs[:, subarticular].max(-1))  # T < 1 sharpens


def test_apply_handles_zero_probabilities_and_rejects_bad_temperatures():
    probs = np.full((labels_lib.NUM_TARGETS, 3), 1 / 3)
    probs[0] = [1.0, 0.0, 0.0]
    out = calibration.apply_temperatures(probs, dict.fromkeys(_GROUPS, 2.0))
    assert np.all(np.isfinite(out)) and out[0, 0] == pytest.approx(1.0)
    with pytest.raises(KeyError, match="foraminal"):
        calibration.apply_temperatures(probs, {"spinal": 1.0, "subarticular": 1.0})
    with pytest.raises(ValueError, match="positive"):
        calibration.apply_temperatures(probs, {**dict.fromkeys(_GROUPS, 1.0), "spinal": 0.0})


def _two_opposite_folds():
    """Fold 0 overconfident (T ~ 3 fixes it), fold 1 underconfident (T ~ 0.5), plus unscored rows."""
    labels0, probs0 = _synthetic(seed=3, n=300, sharpen=3.0)
    labels1, probs1 = _synthetic(seed=4, n=300, sharpen=0.5)
    labels_x, probs_x = _synthetic(seed=5, n=20, sharpen=10.0)
    folds = np.repeat([0, 1, -1], [300, 300, 20])
    return np.concatenate([labels0, labels1, labels_x]), np.concatenate([probs0, probs1, probs_x]), folds


def test_cross_fitted_uses_only_the_other_folds():
    labels, probs, folds = _two_opposite_folds()
    result = calibration.cross_fitted(labels, probs, folds)

    # Each fold gets the other fold's temperatures: overconfident fold 0 is sharpened further (T < 1), which
    # fitting on its own rows (T ~ 3) would never do; so the honest "after" is worse than "before" here.
    by_fold = {entry["fold"]: entry for entry in result["per_fold"]}
    for k in (0, 1):
        other = folds == 1 - k
        assert by_fold[k]["temperatures"] == calibration.fit_temperatures(labels[other], probs[other])
    assert by_fold[0]["temperatures"]["foraminal"] < 1.0 < by_fold[1]["temperatures"]["foraminal"]
    assert result["after"] > result["before"]

    # "after" is the score of exactly those cross-fitted rows; unscored rows take no part anywhere.
    scored = folds >= 0
    calibrated = probs.copy()
    for k in (0, 1):
        calibrated[folds == k] = calibration.apply_temperatures(probs[folds == k], by_fold[k]["temperatures"])
    assert result["after"] == pytest.approx(metrics.competition_score(labels[scored], calibrated[scored])["score"])
    assert result["before"] == pytest.approx(metrics.competition_score(labels[scored], probs[scored])["score"])
    fitted = calibration.fit_temperatures(labels[scored], probs[scored])
    assert {g: v["temperature"] for g, v in result["groups"].items()} == fitted
    # opposite folds: cross-fitting worsens every group, so none is calibrated and no temperature is kept
    assert result["calibrated"] == [] and result["temperatures"] == {}
    changed = probs.copy()
    changed[~scored] = changed[~scored][..., ::-1]
    assert calibration.cross_fitted(labels, changed, folds) == result


def test_cross_fitted_never_passes_a_folds_own_rows(monkeypatch):
    labels, probs = _synthetic(seed=6, n=90, sharpen=2.0)
    folds = np.repeat([0, 1, 2], 30)
    probs[:, 0, 0] = np.arange(90) / 1000 + 0.01  # a row id readable from what the fit receives
    seen = []
    real_fit = calibration.fit_temperatures

    def recording_fit(fit_labels, fit_probs):
        seen.append(np.round(fit_probs[:, 0, 0] * 1000 - 10).astype(int))
        return real_fit(fit_labels, fit_probs)

    monkeypatch.setattr(calibration, "fit_temperatures", recording_fit)
    result = calibration.cross_fitted(labels, probs, folds)
    for k, rows in enumerate(seen[:3]):
        np.testing.assert_array_equal(rows, np.flatnonzero(folds != k))
    np.testing.assert_array_equal(seen[3], np.arange(90))
    assert [entry["fold"] for entry in result["per_fold"]] == [0, 1, 2]
    with pytest.raises(ValueError, match="at least 2"):
        calibration.cross_fitted(labels, probs, np.where(folds == 0, 0, -1))


def test_only_the_groups_whose_cross_fitted_score_improved_are_calibrated():
    """Opposite folds for spinal and subarticular (cross-fitting hurts), consistently overconfident foraminal
    rows (cross-fitting helps): only foraminal keeps its temperature, and applying the kept ones leaves the
    other groups' probabilities as they were."""
    labels, probs, folds = _two_opposite_folds()
    labels_f, probs_f = _synthetic(seed=6, n=len(folds), sharpen=3.0)
    foraminal = labels_lib.group_target_indices("foraminal")
    labels[:, foraminal], probs[:, foraminal] = labels_f[:, foraminal], probs_f[:, foraminal]
    result = calibration.cross_fitted(labels, probs, folds)
    assert result["calibrated"] == ["foraminal"]
    assert set(result["temperatures"]) == {"foraminal"} and result["temperatures"]["foraminal"] > 2.0
    for group, verdict in result["groups"].items():
        assert verdict["calibrated"] == (verdict["after"] < verdict["before"]) == (group == "foraminal")
    # the groups' losses add up to the score (times the four components); with only foraminal calibrated, the
    # score falls by exactly its own gain
    assert sum(v["before"] for v in result["groups"].values()) / 4 == pytest.approx(result["before"])
    foraminal_gain = result["groups"]["foraminal"]["before"] - result["groups"]["foraminal"]["after"]
    assert result["after_selected"] == pytest.approx(result["before"] - foraminal_gain / 4)
    applied = calibration.apply_selected(probs, calibration.applied_temperatures(result))
    others = np.setdiff1d(np.arange(labels_lib.NUM_TARGETS), foraminal)
    np.testing.assert_allclose(applied[:, others], probs[:, others], atol=1e-12)
    assert not np.allclose(applied[:, foraminal], probs[:, foraminal], atol=1e-3)
    described = calibration.describe(result)
    assert "foraminal T=" in described and "subarticular uncalibrated" in described
    assert calibration.applied_temperatures({"temperatures": {"spinal": 2.0}}) == {}  # no verdict: none applied
