"""Temperature calibration: one temperature per condition group, fitted on out-of-fold predictions.

The metric is a log loss (docs/conventions.md section 2), so a model that ranks well but is over- or
under-confident loses score that a single scale of its log probabilities wins back. Per condition group g
(labels.CONDITION_GROUPS) the calibrated rows are softmax(log p / T_g): T > 1 softens, T < 1 sharpens, T = 1
leaves normalised rows unchanged, and the argmax never changes.

Each temperature minimises the competition score itself (metrics.competition_score), not a plain log loss:
the spinal temperature also moves `any_severe_spinal`, whose prediction is the largest spinal severe
probability of a study. Every component of the score depends on one group's rows only, so the score is a sum
of one function per group's temperature and one 1-D search per group finds the joint minimiser.

`cross_fitted` reports the gain honestly: fold k's rows are calibrated with temperatures fitted on the other
folds only, so no fold is scored with temperatures fitted on itself. A group is calibrated only where that
cross-fitted score of its own losses (`GROUP_LOSSES`) improved: only those groups' temperatures are kept
('temperatures') and applied (`applied_temperatures`); the others stay as the model predicted them.

Arrays are in labels.TARGETS order: labels int [N, 25] (-1 missing), probs float [N, 25, 3].
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

from lumbar_jax import labels as labels_lib
from lumbar_jax import metrics

LOG_T_BOUNDS = (np.log(0.25), np.log(4.0))  # the search range of log T
_GRID_POINTS = 17  # coarse grid over LOG_T_BOUNDS (odd: includes log T = 0) before the local refinement
_TINY = np.finfo(np.float64).tiny  # floor before the log, so a zero probability stays ~0 instead of -inf
# The losses of the score (metrics.LOSS_KEYS) that each group's temperature moves: the score is their sum over
# the groups, divided by 4, so a group's calibration helps exactly when the sum of its own losses falls.
GROUP_LOSSES = {"spinal": ("spinal", "any_severe_spinal"), "foraminal": ("foraminal",),
                "subarticular": ("subarticular",)}


def apply_temperatures(probs: np.ndarray, temperatures: dict[str, float]) -> np.ndarray:
    """Calibrated probabilities: per condition group g, softmax(log probs / temperatures[g]) over severities.

    Args:
      probs: float [..., 25, 3] probabilities (any leading dims, including none).
      temperatures: {group: T > 0} for every group in labels.CONDITION_GROUPS.
    Returns:
      float64 [..., 25, 3]; rows sum to 1. T = 1 returns normalised rows unchanged.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[-2:] != (labels_lib.NUM_TARGETS, labels_lib.NUM_SEVERITIES):
        raise ValueError(f"probs must be [..., {labels_lib.NUM_TARGETS}, {labels_lib.NUM_SEVERITIES}], got "
                         f"{probs.shape}")
    missing = set(labels_lib.CONDITION_GROUPS) - set(temperatures)
    if missing:
        raise KeyError(f"temperatures lack groups {sorted(missing)}; expected {list(labels_lib.CONDITION_GROUPS)}")
    if not all(float(temperatures[g]) > 0 for g in labels_lib.CONDITION_GROUPS):
        raise ValueError(f"temperatures must be positive, got {temperatures}")
    per_target = np.empty(labels_lib.NUM_TARGETS)
    for group in labels_lib.CONDITION_GROUPS:
        per_target[labels_lib.group_target_indices(group)] = float(temperatures[group])
    log_probs = np.log(np.maximum(probs, _TINY))
    return special.softmax(log_probs / per_target[:, None], axis=-1)


def fit_temperatures(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The per-group temperatures that minimise the competition score of `apply_temperatures(probs, .)`.

    One bounded 1-D search of log T per group (`_minimise_log_temperature`), the other groups at T = 1 (the
    score is separable by group, so this is the joint minimiser). A group without a labelled row keeps
    T = 1. Deterministic.

    Args:
      labels: int [N, 25] severity codes, -1 missing.
      probs: float [N, 25, 3] probabilities.
    Returns:
      {group: T} for every group in labels.CONDITION_GROUPS, as Python floats.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    metrics.competition_score(labels, probs)  # validates shapes and codes once, with the metric's messages
    identity = {group: 1.0 for group in labels_lib.CONDITION_GROUPS}
    fitted = dict(identity)
    for group in labels_lib.CONDITION_GROUPS:
        if np.any(labels[:, labels_lib.group_target_indices(group)] != labels_lib.MISSING):
            fitted[group] = _fit_one_group(labels, probs, group, identity)
    return fitted


def _fit_one_group(labels: np.ndarray, probs: np.ndarray, group: str, others: dict[str, float]) -> float:
    """The temperature of `group` minimising the full score, the other groups held at `others`."""

    def score(log_t: float) -> float:
        calibrated = apply_temperatures(probs, {**others, group: float(np.exp(log_t))})
        return metrics.competition_score(labels, calibrated)["score"]

    return float(np.exp(_minimise_log_temperature(score)))


def _minimise_log_temperature(objective) -> float:
    """The log T in LOG_T_BOUNDS minimising objective(log T): the best point of a coarse grid, refined by a
    bounded Brent search between its grid neighbours. The grid keeps the search off a local minimum (the
    any_severe_spinal term, a max over levels, need not be unimodal in T); Brent alone may stop there."""
    grid = np.linspace(*LOG_T_BOUNDS, _GRID_POINTS)
    grid_values = np.array([objective(x) for x in grid])
    best = int(np.argmin(grid_values))
    bracket = (grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)])
    refined = optimize.minimize_scalar(objective, bounds=bracket, method="bounded", options={"xatol": 1e-4})
    return float(refined.x) if refined.fun < grid_values[best] else float(grid[best])


def cross_fitted(labels: np.ndarray, probs: np.ndarray, folds: np.ndarray) -> dict:
    """The score before and after calibration, each fold calibrated with temperatures fitted on the others.

    Args:
      labels: int [N, 25] severity codes, -1 missing.
      probs: float [N, 25, 3] out-of-fold probabilities.
      folds: int [N], the fold whose model predicted each row; -1 = unscored (left out of everything).
    Returns:
      {'before': score of probs over the scored rows,
       'after': score of the cross-fitted calibrated probs over the same rows, every group calibrated,
       'after_selected': the same with only the 'calibrated' groups calibrated (what predict.py applies),
       'per_fold': [{'fold', 'before', 'after', 'temperatures'}] per fold (its own rows; temperatures fitted
         on the other folds),
       'groups': {group: {'before', 'after': the sum of its GROUP_LOSSES over the scored rows, uncalibrated
         and cross-fitted; 'calibrated': whether 'after' < 'before', 'temperature': fitted on all scored rows}},
       'calibrated': the groups that improved, in labels.CONDITION_GROUPS order,
       'temperatures': {group: T} fitted on all scored rows, for the calibrated groups only (what predict.py
         applies; `applied_temperatures`)}.
      Scores are metrics.competition_score(...)['score'].
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    folds = np.asarray(folds)
    if folds.shape != labels.shape[:1]:
        raise ValueError(f"folds must be [N] = {labels.shape[:1]}, got {folds.shape}")
    fold_ids = sorted(int(k) for k in np.unique(folds[folds >= 0]))
    if len(fold_ids) < 2:
        raise ValueError(f"cross-fitting needs at least 2 scored folds, got {fold_ids}")
    scored = folds >= 0
    calibrated = probs.copy()
    per_fold = []
    for k in fold_ids:
        own, others = folds == k, scored & (folds != k)
        temperatures = fit_temperatures(labels[others], probs[others])
        calibrated[own] = apply_temperatures(probs[own], temperatures)
        per_fold.append({
            "fold": k,
            "before": _score(labels[own], probs[own]),
            "after": _score(labels[own], calibrated[own]),
            "temperatures": temperatures,
        })
    fitted = fit_temperatures(labels[scored], probs[scored])
    before, after = _group_losses(labels[scored], probs[scored]), _group_losses(labels[scored], calibrated[scored])
    groups = {g: {"before": before[g], "after": after[g], "calibrated": bool(after[g] < before[g]),
                  "temperature": fitted[g]} for g in labels_lib.CONDITION_GROUPS}
    chosen = [g for g in labels_lib.CONDITION_GROUPS if groups[g]["calibrated"]]
    chosen_targets = np.isin(labels_lib.TARGET_GROUP, [list(labels_lib.CONDITION_GROUPS).index(g) for g in chosen])
    selected = np.where(chosen_targets[None, :, None], calibrated, probs)
    return {
        "before": _score(labels[scored], probs[scored]),
        "after": _score(labels[scored], calibrated[scored]),
        "after_selected": _score(labels[scored], selected[scored]),
        "per_fold": per_fold,
        "groups": groups,
        "calibrated": chosen,
        "temperatures": {g: fitted[g] for g in chosen},
    }


def applied_temperatures(record: dict) -> dict[str, float]:
    """{group: T} of the calibrated groups of a `cross_fitted` record (cv_summary.json 'calibration'); {} for a
    record without the per-group verdict (a run summarised before it existed: none is known to help)."""
    if "groups" not in record:
        return {}
    return {g: float(t) for g, t in record.get("temperatures", {}).items()}


def apply_selected(probs: np.ndarray, temperatures: dict[str, float]) -> np.ndarray:
    """`apply_temperatures` with T = 1 for every group not in `temperatures` (those left uncalibrated)."""
    return apply_temperatures(probs, {**dict.fromkeys(labels_lib.CONDITION_GROUPS, 1.0), **temperatures})


def describe(record: dict) -> str:
    """One line: per group whether it is calibrated, with its temperature, and the cross-fitted losses that
    decided it."""
    if "groups" not in record:
        return "calibration: no per-group verdict in this summary; no group calibrated"
    parts = [f"{g} {'T=%.2f' % v['temperature'] if v['calibrated'] else 'uncalibrated'} "
             f"({v['before']:.4f} -> {v['after']:.4f})" for g, v in record["groups"].items()]
    return ("temperature calibration per condition group, kept only where its cross-fitted OOF losses fell: "
            + ", ".join(parts))


def _group_losses(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """{group: the sum of its GROUP_LOSSES} (NaN when the group has no labelled row)."""
    losses = metrics.competition_score(labels, probs)
    return {g: float(sum(losses[k] for k in keys)) for g, keys in GROUP_LOSSES.items()}


def _score(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(metrics.competition_score(labels, probs)["score"])
