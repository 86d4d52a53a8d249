"""The competition metric against hand-computed values and an independent pandas + sklearn implementation."""

import math

import numpy as np
import pandas as pd
import pytest
import sklearn.metrics

from lumbar_jax import labels as labels_lib
from lumbar_jax import metrics


def _reference_score(labels: np.ndarray, probs: np.ndarray) -> dict:
    """The competition's procedure, written independently on long-format DataFrames with sklearn.

    Build solution/submission tables of labelled rows only (missing labels dropped, as the conventions say),
    then for each condition group call sklearn.metrics.log_loss with one-hot truth and 1/2/4 weights, and
    for any_severe_spinal group spinal rows by study.
    """
    rows = []
    for n in range(labels.shape[0]):
        for t, target in enumerate(labels_lib.TARGETS):
            if labels[n, t] < 0:
                continue
            row = {"study_id": n, "target": target, "label": labels[n, t]}
            row.update({c: float(probs[n, t, k]) for k, c in enumerate(labels_lib.SEVERITY_COLUMNS)})
            rows.append(row)
    df = pd.DataFrame(rows)
    df["condition"] = df["target"].map(
        lambda s: next(c for c in ("spinal", "foraminal", "subarticular") if c in s)
    )
    df["sample_weight"] = df["label"].map({0: 1, 1: 2, 2: 4})
    out = {}
    for condition in ("spinal", "foraminal", "subarticular"):
        part = df[df.condition == condition]
        out[condition] = sklearn.metrics.log_loss(
            part["label"], part[list(labels_lib.SEVERITY_COLUMNS)].values, sample_weight=part["sample_weight"],
            labels=[0, 1, 2],
        )
    spinal = df[df.condition == "spinal"]
    by_study = spinal.groupby("study_id")
    out["any_severe_spinal"] = sklearn.metrics.log_loss(
        (by_study["label"].max() == 2).astype(int), by_study["severe"].max(),
        sample_weight=by_study["sample_weight"].max(), labels=[0, 1],
    )
    out["score"] = float(np.mean(list(out.values())))
    return out


def _random_case(rng, n, missing_rate):
    labels = rng.choice(3, size=(n, labels_lib.NUM_TARGETS), p=[0.75, 0.17, 0.08])
    labels[rng.random(labels.shape) < missing_rate] = labels_lib.MISSING
    logits = rng.normal(size=(n, labels_lib.NUM_TARGETS, 3)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, probs


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_reference_implementation(seed):
    rng = np.random.default_rng(seed)
    labels, probs = _random_case(rng, n=40, missing_rate=0.1)
    # Extreme predictions exercise the clipping; a whole study without spinal labels exercises the grouping.
    probs[0, 0] = [1.0, 0.0, 0.0]
    labels[1, :5] = labels_lib.MISSING
    ours = metrics.competition_score(labels, probs)
    ref = _reference_score(labels, probs)
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key


def test_hand_computed_two_studies():
    labels = np.full((2, labels_lib.NUM_TARGETS), labels_lib.MISSING)
    probs = np.full((2, labels_lib.NUM_TARGETS, 3), 1 / 3)
    # Study 0: spinal l1_l2 Severe predicted severe=0.5; study 1: spinal l1_l2 Normal predicted normal=0.8.
    labels[0, 0], probs[0, 0] = 2, [0.25, 0.25, 0.5]
    labels[1, 0], probs[1, 0] = 0, [0.8, 0.1, 0.1]
    # One foraminal row (Moderate, p=0.2) and one subarticular row (Normal, p=0.6).
    labels[0, 5], probs[0, 5] = 1, [0.6, 0.2, 0.2]
    labels[0, 15], probs[0, 15] = 0, [0.6, 0.3, 0.1]
    spinal = (4 * -math.log(0.5) + 1 * -math.log(0.8)) / 5
    # any severe: study 0 label 1, pred 0.5, weight 4; study 1 label 0, pred 0.1 -> -log(0.9), weight 1.
    any_severe = (4 * -math.log(0.5) + 1 * -math.log(0.9)) / 5
    got = metrics.competition_score(labels, probs)
    assert got["spinal"] == pytest.approx(spinal)
    assert got["foraminal"] == pytest.approx(-math.log(0.2))
    assert got["subarticular"] == pytest.approx(-math.log(0.6))
    assert got["any_severe_spinal"] == pytest.approx(any_severe)
    assert got["score"] == pytest.approx((spinal - math.log(0.2) - math.log(0.6) + any_severe) / 4)


def test_no_severe_spinal_study_and_no_renormalisation():
    labels = np.zeros((3, labels_lib.NUM_TARGETS), dtype=int)
    probs = np.zeros((3, labels_lib.NUM_TARGETS, 3))
    probs[..., 0] = 0.5  # rows sum to 0.5: sklearn semantics do not renormalise
    got = metrics.competition_score(labels, probs)
    assert got["spinal"] == pytest.approx(-math.log(0.5))
    # No severe study anywhere: any_severe prediction 0 is clipped to eps, loss -log(1 - eps) ~ 0.
    assert got["any_severe_spinal"] == pytest.approx(0.0, abs=1e-12)


def test_missing_labels_are_not_scored():
    rng = np.random.default_rng(0)
    labels, probs = _random_case(rng, n=10, missing_rate=0.3)
    base = metrics.competition_score(labels, probs)
    changed = probs.copy()
    changed[labels == labels_lib.MISSING] = [0.0, 0.0, 1.0]
    assert metrics.competition_score(labels, changed) == pytest.approx(base)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="labels"):
        metrics.competition_score(np.zeros((2, 24), int), np.zeros((2, 24, 3)))
    with pytest.raises(ValueError, match="codes"):
        metrics.competition_score(np.full((1, 25), 3), np.full((1, 25, 3), 1 / 3))
    with pytest.raises(ValueError, match="finite"):
        metrics.competition_score(np.zeros((1, 25), int), np.full((1, 25, 3), np.nan))


def test_class_prior_baseline_is_training_frequencies():
    train = np.zeros((8, labels_lib.NUM_TARGETS), dtype=int)
    train[:2, 0] = 2
    train[2, 0] = labels_lib.MISSING
    exact = metrics.class_prior_baseline(train, 3, pseudo_count=0.0)
    assert exact.shape == (3, labels_lib.NUM_TARGETS, 3)
    np.testing.assert_allclose(exact[0, 0], [5 / 7, 0, 2 / 7])
    np.testing.assert_allclose(exact[:, 1], [[1, 0, 0]] * 3)
    smoothed = metrics.class_prior_baseline(train, 1)
    np.testing.assert_allclose(smoothed[0, 0], [6 / 10, 1 / 10, 3 / 10])


def test_majority_class_has_high_accuracy_and_one_third_balanced_accuracy():
    labels = np.zeros((20, labels_lib.NUM_TARGETS), dtype=int)
    labels[:2] = 2
    labels[2:4] = 1
    probs = np.broadcast_to([0.9, 0.05, 0.05], labels.shape + (3,))
    stats = metrics.classification_stats(labels, probs)
    assert stats["accuracy"] == pytest.approx(0.8)
    assert stats["balanced_accuracy"] == pytest.approx(1 / 3)
    assert stats["recall_severe"] == 0.0


def test_weighted_prior_is_the_best_constant_of_the_score():
    rng = np.random.default_rng(3)
    train = rng.choice(3, size=(200, labels_lib.NUM_TARGETS), p=[0.75, 0.17, 0.08])
    prior = metrics.weighted_prior_baseline(train, 1)[0]
    counts = np.stack([(train == k).sum(0) for k in range(3)], -1) + 1.0
    expected = counts * [1, 2, 4] / (counts * [1, 2, 4]).sum(-1, keepdims=True)
    others = np.setdiff1d(np.arange(labels_lib.NUM_TARGETS), labels_lib.group_target_indices("spinal"))
    np.testing.assert_allclose(prior[others], expected[others])
    # On the training labels themselves it beats the frequencies (which the metric's weights penalise) and
    # any perturbation of it does worse on the weighted loss of a target.
    freq = metrics.class_prior_baseline(train, len(train))
    best = metrics.weighted_prior_baseline(train, len(train))
    assert metrics.competition_score(train, best)["foraminal"] < metrics.competition_score(train, freq)["foraminal"]
    # Spinal rows are fitted jointly with any_severe_spinal: better than their closed form and, without
    # smoothing, a local minimum of the score on the labels they were fitted to.
    closed = np.broadcast_to(expected, best.shape)
    score = lambda p: metrics.competition_score(train, p)["score"]  # noqa: E731
    assert score(best) < score(closed) - 0.01
    fitted = metrics.weighted_prior_baseline(train, len(train), pseudo_count=0.0)
    for level, delta in ((0, [0.01, 0.0, -0.01]), (3, [-0.01, 0.0, 0.01]), (4, [0.0, 0.01, -0.01])):
        nudged = fitted.copy()
        nudged[:, level] += delta
        assert score(nudged) > score(fitted)
    # Without smoothing it is the exact minimiser: any perturbation of it raises a target's weighted loss.
    exact = metrics.weighted_prior_baseline(train, 1, pseudo_count=0.0)[0, 7]
    y = train[:, 7]
    weighted_nll = lambda p: -np.sum(np.array([1.0, 2.0, 4.0])[y] * np.log(p[y]))  # noqa: E731
    for delta in ([0.02, -0.01, -0.01], [-0.02, 0.0, 0.02], [0.0, 0.01, -0.01]):
        assert weighted_nll(exact + np.array(delta)) > weighted_nll(exact)


def test_per_study_loss_hand_computed_and_perfect_prediction():
    labels = np.full((3, labels_lib.NUM_TARGETS), labels_lib.MISSING)
    probs = np.full((3, labels_lib.NUM_TARGETS, 3), 1 / 3)
    # Study 0: a Severe row predicted 0.5 (weight 4) and a Normal row predicted 0.8 (weight 1).
    labels[0, 0], probs[0, 0] = 2, [0.25, 0.25, 0.5]
    labels[0, 17], probs[0, 17] = 0, [0.8, 0.1, 0.1]
    # Study 1: one Moderate row predicted 0.2 (weight 2); its unlabelled rows do not count, whatever they hold.
    labels[1, 6], probs[1, 6] = 1, [0.6, 0.2, 0.2]
    probs[1, 7] = [0.0, 0.0, 1.0]
    # Study 2: no label at all.
    got = metrics.per_study_loss(labels, probs)
    assert got.shape == (3,)
    assert got[0] == pytest.approx((4 * -math.log(0.5) + 1 * -math.log(0.8)) / 5)
    assert got[1] == pytest.approx(-math.log(0.2))
    assert np.isnan(got[2])

    rng = np.random.default_rng(1)
    labels, _ = _random_case(rng, n=4, missing_rate=0.2)
    perfect = np.eye(3)[np.maximum(labels, 0)]
    np.testing.assert_allclose(metrics.per_study_loss(labels, perfect), 0.0, atol=1e-12)
    # A zero probability on the true class is clipped to eps, as in the competition metric: finite.
    wrong = np.eye(3)[(np.maximum(labels, 0) + 1) % 3]
    assert np.all(np.isfinite(metrics.per_study_loss(labels, wrong)))


def test_row_score_shares_add_up_to_the_score_without_its_any_severe_part():
    rng = np.random.default_rng(3)
    labels = rng.integers(-1, 3, (30, labels_lib.NUM_TARGETS))
    probs = rng.dirichlet(np.ones(3), (30, labels_lib.NUM_TARGETS))
    score = metrics.competition_score(labels, probs)
    shares = metrics.row_score_shares(labels, probs)
    assert shares.sum() == pytest.approx(score["score"] - score["any_severe_spinal"] / 4, rel=1e-12)
    assert np.all(shares[labels < 0] == 0) and np.all(shares[labels >= 0] > 0)
    # One row made a confident mistake: its share grows by its weight x the log-loss change / its group's weight.
    worse = probs.copy()
    n, t = np.argwhere(labels == 2)[0]
    worse[n, t] = np.eye(3)[0] * (1 - 2e-3) + 1e-3
    group = labels_lib.group_target_indices(list(labels_lib.CONDITION_GROUPS)[labels_lib.TARGET_GROUP[t]])
    expected = 4 * -np.log(1e-3) / labels_lib.SEVERITY_WEIGHTS[labels[:, group][labels[:, group] >= 0]].sum() / 4
    assert metrics.row_score_shares(labels, worse)[n, t] == pytest.approx(expected)
