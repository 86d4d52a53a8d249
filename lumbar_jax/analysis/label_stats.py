"""Label statistics of train.csv: class counts per target and rank correlations between targets.

Pure numpy / pandas / scipy, no plotting: the numbers the report prints and the plots draw. Arrays are in
`labels.TARGETS` order (docs/conventions.md section 1): `labels` int [N, 25], severity codes 0/1/2 (ordinal:
Normal/Mild < Moderate < Severe), -1 missing.

Why the correlation is done by hand: missing labels must be excluded PAIRWISE (each pair of targets uses the
studies labelled on both), not by dropping every study with any missing label (which throws away a study for
all 300 pairs because of one empty cell), and never by treating -1 as a severity below Normal/Mild.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from lumbar_jax import labels as labels_lib
from lumbar_jax.data import study

# Short display names per condition: the side prefix comes from labels.TARGET_SIDE.
_CONDITION_SHORT = ("spinal", "foraminal", "foraminal", "subarticular", "subarticular")
_SIDE_PREFIX = ("", "L ", "R ")


def short_name(target: int) -> str:
    """A short display name of a target index, e.g. 'L4/L5 spinal', 'L L4/L5 foraminal', 'R L5/S1 subarticular'."""
    condition = labels_lib.TARGET_CONDITION[target]
    level = labels_lib.LEVEL_CSV_NAMES[labels_lib.TARGET_LEVEL[target]]
    return f"{_SIDE_PREFIX[labels_lib.TARGET_SIDE[target]]}{level} {_CONDITION_SHORT[condition]}"


def read_label_matrix(kaggle_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """train.csv of a Kaggle folder -> (study_ids int [N] sorted, labels int [N, 25]).

    Goes through `data.study.read_labels` (the builder's reader): a missing train.csv is a FileNotFoundError
    naming it.
    """
    table = study.read_labels(kaggle_dir)
    study_ids = np.array(sorted(table), dtype=np.int64)
    codes = np.stack([table[s] for s in study_ids]) if len(study_ids) else np.zeros((0, labels_lib.NUM_TARGETS), int)
    return study_ids, codes.astype(np.int64)


def label_distribution(labels: np.ndarray) -> pd.DataFrame:
    """Class and missing counts per target.

    Args:
      labels: int [N, 25].
    Returns:
      DataFrame with 25 rows (index = target names, TARGETS order) and columns condition, level,
      normal_mild, moderate, severe, missing (counts), labelled (= N - missing).
    """
    labels = np.asarray(labels)
    table = pd.DataFrame(
        {
            "condition": [labels_lib.CONDITIONS[labels_lib.TARGET_CONDITION[t]] for t in range(labels_lib.NUM_TARGETS)],
            "level": [labels_lib.LEVEL_CSV_NAMES[labels_lib.TARGET_LEVEL[t]] for t in range(labels_lib.NUM_TARGETS)],
            **{name: (labels == k).sum(axis=0) for k, name in enumerate(labels_lib.SEVERITY_COLUMNS)},
            "missing": (labels == labels_lib.MISSING).sum(axis=0),
        },
        index=pd.Index(labels_lib.TARGETS, name="target"),
    )
    table["labelled"] = len(labels) - table["missing"]
    return table


def missing_summary(labels: np.ndarray) -> dict[str, int]:
    """How incomplete train.csv is: {'studies', 'studies_with_missing', 'studies_all_missing',
    'missing_cells', 'cells'} for labels int [N, 25]."""
    missing = np.asarray(labels) == labels_lib.MISSING
    return {
        "studies": int(missing.shape[0]),
        "studies_with_missing": int(missing.any(axis=1).sum()),
        "studies_all_missing": int(missing.all(axis=1).sum()),
        "missing_cells": int(missing.sum()),
        "cells": int(missing.size),
    }


def _spearman_pair(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho of two complete code vectors: Pearson correlation of their average ranks; NaN when
    either is constant (rho undefined) or fewer than 2 values."""
    if len(x) < 2:
        return float("nan")
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def pairwise_spearman(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman rank correlation between every pair of targets, missing labels excluded pairwise.

    Args:
      labels: int [N, T] ordinal codes 0/1/2, -1 missing (T = 25 for train.csv; any T works).
    Returns:
      (rho float [T, T], n int [T, T]): rho[i, j] over the n[i, j] studies labelled on both i and j; NaN
      where it is undefined (a target constant over those studies, or n < 2). The diagonal is 1 where the
      target varies.
    """
    labels = np.asarray(labels)
    num = labels.shape[1]
    labelled = labels != labels_lib.MISSING
    counts = (labelled[:, :, None] & labelled[:, None, :]).sum(axis=0)
    rho = np.full((num, num), np.nan)
    for i in range(num):
        for j in range(i, num):
            both = labelled[:, i] & labelled[:, j]
            rho[i, j] = rho[j, i] = _spearman_pair(labels[both, i], labels[both, j])
    return rho, counts.astype(np.int64)


def left_right_table(labels: np.ndarray, group: str) -> pd.DataFrame:
    """Do left and right of a bilateral condition group correlate? One row per level.

    Args:
      labels: int [N, 25].
      group: 'foraminal' or 'subarticular' (a CONDITION_GROUPS entry with a left and a right condition).
    Returns:
      DataFrame indexed by level ('L1/L2'...), columns rho (Spearman, pairwise exclusion), n (studies
      labelled on both sides), p_value (two-sided, scipy's test of rho = 0; NaN where rho is undefined).
    """
    left, right = labels_lib.CONDITION_GROUPS[group]
    labels = np.asarray(labels)
    rows = []
    for level in range(labels_lib.NUM_LEVELS):
        i, j = labels_lib.target_index(left, level), labels_lib.target_index(right, level)
        both = (labels[:, i] != labels_lib.MISSING) & (labels[:, j] != labels_lib.MISSING)
        rho = _spearman_pair(labels[both, i], labels[both, j])
        p_value = float("nan")
        if np.isfinite(rho):
            p_value = float(stats.spearmanr(labels[both, i], labels[both, j]).pvalue)
        rows.append({"level": labels_lib.LEVEL_CSV_NAMES[level], "rho": rho, "n": int(both.sum()), "p_value": p_value})
    return pd.DataFrame(rows).set_index("level")


def describe_strength(rho: float) -> str:
    """A word for |rho| (conventional cut-offs 0.1 / 0.3 / 0.5), with its sign; 'undefined' for NaN."""
    if not np.isfinite(rho):
        return "undefined"
    size = abs(rho)
    word = "negligible" if size < 0.1 else "weak" if size < 0.3 else "moderate" if size < 0.5 else "strong"
    return word if word == "negligible" else f"{word} {'positive' if rho > 0 else 'negative'}"
