"""Out-of-fold predictions of a run directory: reading them, and the numbers behind calibration,
confusion and worst-study views.

Pure numpy / pandas, no plotting. A run directory (docs/conventions.md section 5) holds `oof_predictions.csv`
(row_id, normal_mild, moderate, severe, fold; 25 rows per labelled study) and `cv_summary.json`
({"oof": {...}, "folds": [{"fold", "best_step", "val": {...}}]}). Arrays follow `metrics`:
labels int [N, 25] (-1 missing), probs float [N, 25, 3].
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

from lumbar_jax import labels as labels_lib
from lumbar_jax import metrics, rundir
from lumbar_jax.analysis.label_stats import short_name

def check_run_dir(workdir: str) -> tuple[str, str]:
    """The paths of a run directory's OOF CSV and CV summary; FileNotFoundError naming what is missing."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"run directory {workdir} not found (or not a directory)")
    paths = rundir.oof_path(workdir), rundir.summary_path(workdir)
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: {workdir} is not a finished cross-validation run "
                                    f"(expected {rundir.OOF_FILE} and {rundir.SUMMARY_FILE})")
    return paths


def read_oof(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """oof_predictions.csv -> (study_ids int [N] sorted, probs float [N, 25, 3], fold int [N]).

    Row ids are parsed by `labels.parse_row_id` (as `score.read_submission` does; that reader rejects the
    extra `fold` column). Every study needs all 25 rows and one fold; errors name the file and an example.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    table = pd.read_csv(path)
    expected = ["row_id", *labels_lib.SEVERITY_COLUMNS, "fold"]
    if sorted(table.columns) != sorted(expected):
        raise ValueError(f"{path}: columns must be {expected}, got {list(table.columns)}")
    if table["row_id"].duplicated().any():
        raise ValueError(f"{path}: duplicated row_id, e.g. {table.loc[table['row_id'].duplicated(), 'row_id'].iloc[0]}")
    try:
        parsed = np.array([labels_lib.parse_row_id(r) for r in table["row_id"]], dtype=np.int64).reshape(-1, 2)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    study_ids, position = np.unique(parsed[:, 0], return_inverse=True)
    probs = np.full((len(study_ids), labels_lib.NUM_TARGETS, labels_lib.NUM_SEVERITIES), np.nan)
    probs[position, parsed[:, 1]] = table[list(labels_lib.SEVERITY_COLUMNS)].to_numpy(np.float64)
    absent = np.argwhere(np.isnan(probs).any(-1))
    if len(absent):
        s, t = absent[0]
        example = labels_lib.row_id(study_ids[s], labels_lib.TARGETS[t])
        raise ValueError(f"{path}: {len(absent)} rows missing, e.g. {example}")
    folds_per_study = pd.Series(table["fold"].to_numpy()).groupby(position).unique()
    mixed = [int(study_ids[i]) for i, f in folds_per_study.items() if len(f) != 1]
    if mixed:
        raise ValueError(f"{path}: studies with rows in several folds, e.g. {mixed[:3]}")
    folds = np.array([f[0] for f in folds_per_study.sort_index()], dtype=np.int64)
    return study_ids, probs, folds


def align_labels(oof_ids: np.ndarray, label_ids: np.ndarray, labels: np.ndarray,
                 source: str = rundir.OOF_FILE) -> np.ndarray:
    """The train.csv labels of the OOF studies, in OOF order: int [N, 25].

    ValueError naming a few study ids of `source` that train.csv does not hold (predictions of another
    dataset, or a stale run directory).
    """
    index = {int(s): i for i, s in enumerate(label_ids)}
    unknown = [int(s) for s in oof_ids if int(s) not in index]
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} of {len(oof_ids)} study ids are not in train.csv, "
                         f"e.g. {unknown[:5]}")
    return np.asarray(labels)[[index[int(s)] for s in oof_ids]]


def read_summary(path: str) -> dict:
    """cv_summary.json -> its dict; ValueError naming the file if it lacks 'oof' or 'folds'."""
    with open(path) as f:
        summary = json.load(f)
    if not isinstance(summary, dict) or "oof" not in summary or "folds" not in summary:
        raise ValueError(f"{path}: expected keys 'oof' and 'folds'")
    return summary


def fold_scores(summary: dict) -> pd.DataFrame:
    """Per fold and OOF: the model's score beside the class-prior baseline and the best constant.

    Returns a DataFrame indexed by 'fold 0'..'fold K-1', 'OOF' with columns model, baseline, weighted_prior
    (competition scores; NaN where the summary lacks one) and best_step (NaN for OOF).
    """
    def row(result: dict, best_step=np.nan) -> dict:
        return {
            "model": result.get("score", np.nan),
            "baseline": result.get("baseline", {}).get("score", np.nan),
            "weighted_prior": result.get("weighted_prior", {}).get("score", np.nan),
            "best_step": best_step,
        }

    rows = {f"fold {f['fold']}": row(f["val"], f.get("best_step", np.nan)) for f in summary["folds"]}
    rows["OOF"] = row(summary["oof"])
    return pd.DataFrame.from_dict(rows, orient="index")


def _group_rows(labels: np.ndarray, probs: np.ndarray, group: str) -> tuple[np.ndarray, np.ndarray]:
    """The labelled rows of one condition group: (y int [M], p float [M, 3])."""
    idx = labels_lib.group_target_indices(group)
    y = np.asarray(labels)[:, idx].reshape(-1)
    p = np.asarray(probs)[:, idx].reshape(-1, labels_lib.NUM_SEVERITIES)
    keep = y != labels_lib.MISSING
    return y[keep], p[keep]


def calibration_bins(labels: np.ndarray, probs: np.ndarray, group: str, num_bins: int = 10) -> dict[str, np.ndarray]:
    """Reliability diagram data of one condition group, one-vs-rest per severity class.

    For class k, every labelled row of the group is put in one of `num_bins` equal-width bins of its predicted
    p_k (bin b = [b/B, (b+1)/B), the last bin closed); per bin: the mean predicted p_k, the observed frequency
    of y == k, and the row count. A calibrated model lies on the diagonal.

    Returns {'edges' [B+1], 'mean_pred' [3, B], 'observed' [3, B], 'count' int [3, B]}; mean_pred and
    observed are NaN in an empty bin.
    """
    y, p = _group_rows(labels, probs, group)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    mean_pred = np.full((labels_lib.NUM_SEVERITIES, num_bins), np.nan)
    observed = np.full((labels_lib.NUM_SEVERITIES, num_bins), np.nan)
    count = np.zeros((labels_lib.NUM_SEVERITIES, num_bins), dtype=np.int64)
    for k in range(labels_lib.NUM_SEVERITIES):
        bins = np.clip(np.floor(p[:, k] * num_bins).astype(np.int64), 0, num_bins - 1)
        count[k] = np.bincount(bins, minlength=num_bins)
        filled = count[k] > 0
        mean_pred[k, filled] = (np.bincount(bins, weights=p[:, k], minlength=num_bins)[filled] / count[k, filled])
        observed[k, filled] = (np.bincount(bins, weights=(y == k).astype(float), minlength=num_bins)[filled]
                               / count[k, filled])
    return {"edges": edges, "mean_pred": mean_pred, "observed": observed, "count": count}


def calibration_error(bins: dict[str, np.ndarray]) -> np.ndarray:
    """Expected calibration error per severity class, float [3]: the count-weighted mean of
    |mean predicted - observed| over the bins of a `calibration_bins` result (0 = perfectly calibrated)."""
    gap = np.nan_to_num(np.abs(bins["mean_pred"] - bins["observed"]))
    totals = np.maximum(bins["count"].sum(axis=1), 1)
    return (gap * bins["count"]).sum(axis=1) / totals


def confusion_matrix(labels: np.ndarray, probs: np.ndarray, group: str) -> np.ndarray:
    """int [3, 3] counts over a condition group's labelled rows: [true class, argmax predicted class]."""
    y, p = _group_rows(labels, probs, group)
    matrix = np.zeros((labels_lib.NUM_SEVERITIES, labels_lib.NUM_SEVERITIES), dtype=np.int64)
    np.add.at(matrix, (y, p.argmax(axis=-1)), 1)
    return matrix


def row_normalise(matrix: np.ndarray) -> np.ndarray:
    """Each row of a confusion matrix divided by its total (per-true-class recall on the diagonal); NaN rows
    for a class with no row."""
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, matrix / np.maximum(totals, 1), np.nan)


def worst_studies(study_ids: np.ndarray, labels: np.ndarray, probs: np.ndarray, folds: np.ndarray | None = None,
                  top: int = 10, num_targets: int = 3) -> pd.DataFrame:
    """The `top` studies with the highest `metrics.per_study_loss`, worst first (ties: lower study_id).

    Returns a DataFrame with columns study_id, fold (if given), loss, labelled (number of labelled targets)
    and worst_targets: the study's `num_targets` labelled targets with the highest weighted row loss, as
    'name: True class (p=0.03)' strings joined by '; '. Studies without labels are left out.
    """
    study_ids, labels, probs = np.asarray(study_ids), np.asarray(labels), np.asarray(probs, dtype=np.float64)
    loss = metrics.per_study_loss(labels, probs)
    ranked = [i for i in np.lexsort((study_ids, -np.nan_to_num(loss, nan=-np.inf))) if np.isfinite(loss[i])][:top]
    rows = []
    for i in ranked:
        labelled = np.flatnonzero(labels[i] != labels_lib.MISSING)
        y = labels[i, labelled]
        p_true = probs[i, labelled, y]
        weighted = labels_lib.SEVERITY_WEIGHTS[y] * -np.log(np.clip(p_true, 1e-15, 1.0))
        order = labelled[np.argsort(-weighted, kind="stable")][:num_targets]
        worst = "; ".join(f"{short_name(t)}: {labels_lib.SEVERITY_NAMES[labels[i, t]]} "
                          f"(p={probs[i, t, labels[i, t]]:.2f})" for t in order)
        row = {"study_id": int(study_ids[i])}
        if folds is not None:
            row["fold"] = int(folds[i])
        row.update({"loss": float(loss[i]), "labelled": int(len(labelled)), "worst_targets": worst})
        rows.append(row)
    columns = ["study_id", *(["fold"] if folds is not None else []), "loss", "labelled", "worst_targets"]
    return pd.DataFrame(rows, columns=columns)
