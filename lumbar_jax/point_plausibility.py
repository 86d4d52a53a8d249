"""Whether one study's localised points can be right: the rule the study report warns by (numpy).

A localiser can fail on a study without any score showing it: it has no annotation to be compared with. Its
25 points can still be checked against what every lumbar spine shares (docs/conventions.md section 7). For
each fold's points, on every target whose series is present, a point is implausible when

- it lies outside its series' volume: a normalised coordinate below 0 or above 1 (docs/conventions.md
  section 3: 0 and 1 are the centres of the first and last voxel);
- its level is not below the level above it: per condition, the patient z (LPS, + = head; the series'
  `native_affine`) must fall from L1/L2 to L5/S1, each level strictly lower than the one before;
- it is closer than `MIN_ADJACENT_LEVEL_MM` to the point of the adjacent level of the same condition.

`implausible_points` says, per kind, how many cases and a few examples, as lines for the study report.
"""

from __future__ import annotations

import numpy as np

from lumbar_jax import labels
from lumbar_jax.localiser_metrics import to_space

# Adjacent disc levels are 30-45 mm apart in adult lumbar spines and ~12.5 mm (at least 10.6) in the synthetic
# set's (data/synthetic/phantom.py); points of two levels closer than this have found one disc, not two.
MIN_ADJACENT_LEVEL_MM = 5.0
_EXAMPLES = 3  # examples named per kind of implausibility


def _pair_name(condition: int, level: int) -> str:
    """'spinal canal stenosis L1/L2-L2/L3': the adjacent levels `level` and `level + 1` of `condition`."""
    return (f"{labels.CONDITIONS[condition].replace('_', ' ')} {labels.LEVEL_CSV_NAMES[level]}-"
            f"{labels.LEVEL_CSV_NAMES[level + 1]}")


def _line(what: str, cases: list[str], total: int, unit: str) -> str:
    """'what in n of total units (e.g. a; b; c)'."""
    return f"{what} in {len(cases)} of {total} {unit} (e.g. {'; '.join(cases[:_EXAMPLES])})"


def implausible_points(fold_points: np.ndarray, native_affine: np.ndarray, native_shapes: np.ndarray,
                       present: np.ndarray) -> list[str]:
    """One line per kind of implausibility (module docstring) found in any fold's points; [] when none.

    fold_points float [F, 25, 3]: each fold's normalised (depth, row, col) points on each target's series
    (labels.TARGET_SERIES); native_affine float [3, 4, 4] native voxel index -> patient mm per series;
    native_shapes int [3, 3] native [Dn, Hn, Wn] per series; present bool [3] which series exist (targets on
    an absent series are not checked)."""
    fold_points = np.asarray(fold_points, np.float64)
    folds = len(fold_points)
    affine = np.broadcast_to(np.asarray(native_affine, np.float64), (folds, len(labels.SERIES_TYPES), 4, 4))
    shapes = np.broadcast_to(np.asarray(native_shapes), (folds, len(labels.SERIES_TYPES), 3))
    mm = to_space(fold_points, affine, shapes).reshape(folds, labels.NUM_CONDITIONS, labels.NUM_LEVELS, 3)
    checked = np.asarray(present, bool)[labels.TARGET_SERIES]  # [25]

    outside, total_points = [], 0
    for f in range(folds):
        for t in np.flatnonzero(checked):
            total_points += 1
            point = fold_points[f, t]
            if np.any((point < 0) | (point > 1)):
                outside.append(f"{labels.TARGETS[t]} at ({', '.join(f'{float(v):.2f}' for v in point)}), fold {f}")

    unordered, close, total_pairs = [], [], 0
    for f in range(folds):
        for c in range(labels.NUM_CONDITIONS):
            if not checked.reshape(labels.NUM_CONDITIONS, labels.NUM_LEVELS)[c].all():
                continue
            for level in range(labels.NUM_LEVELS - 1):
                total_pairs += 1
                upper, lower = mm[f, c, level], mm[f, c, level + 1]
                drop = float(upper[2] - lower[2])  # mm the lower level lies below the upper one (patient z)
                if drop <= 0:
                    unordered.append(f"{labels.CONDITIONS[c].replace('_', ' ')} {labels.LEVEL_CSV_NAMES[level + 1]} "
                                     f"{-drop:.1f} mm above {labels.LEVEL_CSV_NAMES[level]}, fold {f}")
                distance = float(np.linalg.norm(upper - lower))
                if distance < MIN_ADJACENT_LEVEL_MM:
                    close.append(f"{_pair_name(c, level)} {distance:.1f} mm apart, fold {f}")

    lines = []
    if unordered:
        lines.append(_line("levels out of superior-to-inferior order", unordered, total_pairs, "adjacent level pairs"))
    if close:
        lines.append(_line(f"adjacent levels closer than {MIN_ADJACENT_LEVEL_MM:g} mm", close, total_pairs,
                           "adjacent level pairs"))
    if outside:
        lines.append(_line("points outside their series' volume", outside, total_points, "points"))
    return lines
