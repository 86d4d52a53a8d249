"""The competition metric, the class-prior baseline, and plain classification statistics.

One implementation serves training (validation), evaluation, cross-validation summaries and the `score`
CLI (docs/conventions.md section 2). Arrays are in `labels.TARGETS` order:

  labels  int   [N, 25]     severity codes 0/1/2, -1 = missing (dropped before scoring)
  probs   float [N, 25, 3]  predicted probabilities (normal_mild, moderate, severe)

The metric follows the competition's scoring code exactly: per condition group a sample-weighted
multi-class log loss (weights 1/2/4 by true class) over that group's labelled rows, with sklearn
`log_loss` semantics (predictions clipped to [eps, 1 - eps] for float64 eps, rows not renormalised), plus
`any_severe_spinal`: per study with at least one labelled spinal row, label = any labelled spinal row is
Severe, prediction = max `severe` probability over those rows, weight = max sample weight over those rows;
binary log loss. The score is the mean of the four losses. Dropping missing rows before scoring means the
any-severe maximum runs over the labelled spinal rows only, exactly what the competition code computes on a
solution without those rows.
"""

from __future__ import annotations

import numpy as np

from lumbar_jax import labels as labels_lib

_EPS = np.finfo(np.float64).eps
LOSS_KEYS = ("spinal", "foraminal", "subarticular", "any_severe_spinal")


def _check_shapes(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 2 or labels.shape[1] != labels_lib.NUM_TARGETS:
        raise ValueError(f"labels must be [N, {labels_lib.NUM_TARGETS}], got {labels.shape}")
    if probs.shape != labels.shape + (labels_lib.NUM_SEVERITIES,):
        raise ValueError(f"probs must be [N, {labels_lib.NUM_TARGETS}, {labels_lib.NUM_SEVERITIES}] like labels, got "
                         f"{probs.shape}")
    bad = set(np.unique(labels).tolist()) - {labels_lib.MISSING, 0, 1, 2}
    if bad:
        raise ValueError(f"labels hold codes {sorted(bad)}; expected -1 (missing), 0, 1, 2")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
        raise ValueError("probs must be finite probabilities in [0, 1]")
    return labels.astype(np.int64), probs


def _row_log_loss(onehot: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The per-row term of sklearn.metrics.log_loss: -log of the clipped true-class probability, rows not
    renormalised. onehot, probs [..., K] -> [...]."""
    return -np.sum(onehot * np.log(np.clip(probs, _EPS, 1 - _EPS)), axis=-1)


def _weighted_log_loss(onehot: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> float:
    """sklearn.metrics.log_loss with sample weights: clip, no renormalisation, weighted mean."""
    per_row = _row_log_loss(onehot, probs)
    return float(np.sum(per_row * weights) / np.sum(weights))


def competition_score(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The competition score and its four component losses (lower is better).

    Args:
      labels: int [N, 25] severity codes, -1 missing.
      probs: float [N, 25, 3] probabilities.
    Returns:
      {'spinal', 'foraminal', 'subarticular', 'any_severe_spinal', 'score'}; a component with no labelled
      row is NaN and the score is the mean of the components that exist.
    """
    labels, probs = _check_shapes(labels, probs)
    losses: dict[str, float] = {}
    for group in labels_lib.CONDITION_GROUPS:
        idx = labels_lib.group_target_indices(group)
        y = labels[:, idx].reshape(-1)
        p = probs[:, idx].reshape(-1, labels_lib.NUM_SEVERITIES)
        keep = y != labels_lib.MISSING
        if not keep.any():
            losses[group] = float("nan")
            continue
        y, p = y[keep], p[keep]
        losses[group] = _weighted_log_loss(np.eye(labels_lib.NUM_SEVERITIES)[y], p, labels_lib.SEVERITY_WEIGHTS[y])
    losses["any_severe_spinal"] = _any_severe_spinal_loss(labels, probs)
    finite = [v for v in losses.values() if np.isfinite(v)]
    losses["score"] = float(np.mean(finite)) if finite else float("nan")
    return losses


def _any_severe_spinal_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    spinal = labels_lib.group_target_indices("spinal")
    y = labels[:, spinal]  # [N, 5]
    labelled = y != labels_lib.MISSING
    studies = labelled.any(axis=1)
    if not studies.any():
        return float("nan")
    y, labelled = y[studies], labelled[studies]
    severe_prob = np.where(labelled, probs[studies][:, spinal, 2], -np.inf).max(axis=1)
    any_severe = ((y == 2) & labelled).any(axis=1).astype(np.float64)
    weights = np.where(labelled, labels_lib.SEVERITY_WEIGHTS[np.maximum(y, 0)], 0.0).max(axis=1)
    onehot = np.stack([1 - any_severe, any_severe], axis=1)
    binary = np.stack([1 - severe_prob, severe_prob], axis=1)
    return _weighted_log_loss(onehot, binary, weights)


def per_study_loss(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each study's metric-weighted log loss over its labelled targets, to find the worst-predicted studies.

    The competition's per-row term (clipped, not renormalised, weight 1/2/4 by true class) averaged with
    those weights over one study's labelled rows of all three condition groups (any_severe_spinal is a
    per-study term of its own and is left out). Not a decomposition of the score: the score averages per
    group over all studies first.

    Args:
      labels: int [N, 25] severity codes, -1 missing.
      probs: float [N, 25, 3] probabilities.
    Returns:
      float [N]; NaN for a study with no labelled target.
    """
    labels, probs = _check_shapes(labels, probs)
    labelled = labels != labels_lib.MISSING
    y = np.maximum(labels, 0)
    per_row = _row_log_loss(np.eye(labels_lib.NUM_SEVERITIES)[y], probs)  # [N, 25]
    weights = np.where(labelled, labels_lib.SEVERITY_WEIGHTS[y], 0.0)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (per_row * weights).sum(axis=1) / total, np.nan)


def row_score_shares(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each labelled row's part of the competition score: float [N, 25], 0 for a missing label.

    A row of group g adds w * -log p(true) / (sum of w over g's labelled rows) / (number of score components)
    to the score (clipped, not renormalised, w = 1/2/4 by true class, as `competition_score`), so the shares of
    all rows sum to the score less its any_severe_spinal part (a per-study term, not split over rows). What
    `analysis.costly` ranks the held-out predictions by.
    """
    labels, probs = _check_shapes(labels, probs)
    components = competition_score(labels, probs)
    num_components = sum(np.isfinite(components[k]) for k in LOSS_KEYS)
    labelled = labels != labels_lib.MISSING
    y = np.maximum(labels, 0)
    weights = np.where(labelled, labels_lib.SEVERITY_WEIGHTS[y], 0.0)
    weighted = weights * _row_log_loss(np.eye(labels_lib.NUM_SEVERITIES)[y], probs)
    shares = np.zeros(labels.shape)
    for group in labels_lib.CONDITION_GROUPS:
        idx = labels_lib.group_target_indices(group)
        total = weights[:, idx].sum()
        if total > 0:
            shares[:, idx] = weighted[:, idx] / total / num_components
    return shares


def class_prior_baseline(train_labels: np.ndarray, num_eval: int, pseudo_count: float = 1.0) -> np.ndarray:
    """The class-prior baseline: every study gets each target's training class frequencies.

    Args:
      train_labels: int [M, 25] training-fold labels, -1 missing (ignored).
      num_eval: N, the number of studies to predict.
      pseudo_count: added to every class count (add-one smoothing by default) so that a class unseen in
        training gets a small probability instead of eps: a fair prior-only predictor.
    Returns:
      float [N, 25, 3] probabilities.
    """
    train_labels = np.asarray(train_labels)
    counts = np.stack([(train_labels == k).sum(axis=0) for k in range(labels_lib.NUM_SEVERITIES)], axis=-1)
    freqs = (counts + pseudo_count) / (counts + pseudo_count).sum(axis=-1, keepdims=True)
    return np.broadcast_to(freqs, (num_eval, labels_lib.NUM_TARGETS, labels_lib.NUM_SEVERITIES)).astype(np.float64)


def weighted_prior_baseline(train_labels: np.ndarray, num_eval: int, pseudo_count: float = 1.0) -> np.ndarray:
    """The best constant predictor of the competition score, fitted on the training labels.

    Foraminal and subarticular targets: p_c proportional to w_c x count_c (w = 1/2/4), the closed-form
    minimiser of their weighted log loss. Spinal targets also enter `any_severe_spinal` (through the largest
    severe probability over a study's labelled levels), so their five constant rows are fitted jointly to the
    spinal loss plus that term (L-BFGS from the closed form). A model that learnt a constant and nothing from
    the images scores about this, and must be beaten by a model that reads the images.
    Arguments and result as `class_prior_baseline` (the pseudo-count smooths the counts of every target).
    """
    train_labels = np.asarray(train_labels)
    prior = class_prior_baseline(train_labels, 1, pseudo_count)[0] * labels_lib.SEVERITY_WEIGHTS
    prior /= prior.sum(axis=-1, keepdims=True)
    spinal = labels_lib.group_target_indices("spinal")
    prior[spinal] = _best_constant_spinal(train_labels[:, spinal], prior[spinal], pseudo_count)
    return np.broadcast_to(prior, (num_eval, labels_lib.NUM_TARGETS, labels_lib.NUM_SEVERITIES)).astype(np.float64)


def _best_constant_spinal(y: np.ndarray, start: np.ndarray, pseudo_count: float) -> np.ndarray:
    """Constant spinal rows [5, 3] minimising spinal loss + any_severe_spinal on labels y int [M, 5]."""
    from scipy import optimize, special

    counts = np.stack([(y == k).sum(axis=0) for k in range(labels_lib.NUM_SEVERITIES)], axis=-1) + pseudo_count
    class_weight = counts * labels_lib.SEVERITY_WEIGHTS  # [5, 3]: weighted (smoothed) counts
    labelled = y != labels_lib.MISSING
    studies = labelled.any(axis=1)
    if not studies.any():
        return start
    y, labelled = y[studies], labelled[studies]
    any_severe = ((y == 2) & labelled).any(axis=1)
    study_weight = np.where(labelled, labels_lib.SEVERITY_WEIGHTS[np.maximum(y, 0)], 0.0).max(axis=1)

    def objective(logits: np.ndarray) -> float:
        z = logits.reshape(start.shape)
        p = np.clip(special.softmax(z, axis=-1), _EPS, 1 - _EPS)
        spinal_loss = -np.sum(class_weight * np.log(p)) / class_weight.sum()
        severe = np.where(labelled, p[None, :, 2], -np.inf).max(axis=1)
        any_loss = -np.sum(study_weight * np.where(any_severe, np.log(severe), np.log1p(-severe)))
        return float(spinal_loss + any_loss / study_weight.sum())

    result = optimize.minimize(objective, np.log(start).ravel(), method="L-BFGS-B")
    return special.softmax(result.x.reshape(start.shape), axis=-1)


def classification_stats(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and per-class recall of argmax predictions over labelled rows.

    Shown beside the competition score because they are what earlier projects reported: a majority-class
    predictor scores high accuracy and 1/3 balanced accuracy.
    """
    labels, probs = _check_shapes(labels, probs)
    keep = labels != labels_lib.MISSING
    y, pred = labels[keep], probs.argmax(-1)[keep]
    stats = {"accuracy": float(np.mean(pred == y)) if y.size else float("nan")}
    recalls = []
    for k, name in enumerate(labels_lib.SEVERITY_COLUMNS):
        of_class = y == k
        recall = float(np.mean(pred[of_class] == k)) if of_class.any() else float("nan")
        stats[f"recall_{name}"] = recall
        if of_class.any():
            recalls.append(recall)
    stats["balanced_accuracy"] = float(np.mean(recalls)) if recalls else float("nan")
    return stats


def evaluate_predictions(labels: np.ndarray, probs: np.ndarray, train_labels: np.ndarray) -> dict:
    """Everything a report shows for one set of predictions: score, stats, the class-prior baseline beside
    them and the best constant (`weighted_prior`)."""
    return {
        **competition_score(labels, probs),
        **classification_stats(labels, probs),
        "baseline": competition_score(labels, class_prior_baseline(train_labels, len(labels))),
        "weighted_prior": competition_score(labels, weighted_prior_baseline(train_labels, len(labels))),
    }
