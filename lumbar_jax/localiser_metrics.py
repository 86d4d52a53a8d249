"""How well the 25 target points are localised: error in patient space, level assignment, slice error (numpy).

Inputs, for N studies: predicted and annotated normalised (depth, row, col) points `[N, 25, 3]`
(docs/conventions.md section 3), `coords_series [N, 25]` (the series each point was annotated on, -1 = none)
and, optionally, per study the native geometry of its three series (the `*_native` records): `native_affine
[N, 3, 4, 4]` taking a native voxel index (depth, row, col, 1) to patient coordinates in mm (all zeros for an
absent series) and `native_shapes [N, 3, 3]` (Dn, Hn, Wn). A normalised point maps to the native index
`coords * (shape - 1)`. Without geometry the errors are in voxels of the fixed-size volume (`volume_shape`).

Scored points: those annotated on their target's own series (labels.CONDITION_SERIES; the localiser predicts
there), on a series with geometry when geometry is given.

`localisation_report` returns, per condition group (labels.CONDITION_GROUPS) and overall:
- `median_mm`, `p90_mm` (`median_vox`, `p90_vox` without geometry): Euclidean error of the points;
- `level_accuracy`: share of points whose prediction is nearer to the annotated point of its own level than
  to the annotated point of every other level of the same condition in the same study (points whose condition
  has no other annotated level are not counted): catches a prediction on the wrong disc even when it is close;
- `slice_exact`, `slice_within_1`: the predicted native slice (depth index, rounded) equals the annotated one,
  or is within one slice; depth is the series' own slice axis (across the sagittal slices, along the axial
  stack); on sagittal series this is what decides left / centre / right;
- `n`: scored points (`level_n`: those counted in level_accuracy).
Empty groups give None. The dict is JSON-able.

`SplitGeometry` holds what scoring needs of a split's records (read once with `read_geometry`); its `report`
is the localisation report in mm, and `placement_error` the localiser's error as stage 2's crop jitter.
`point_report` says where a study's 25 points lie, for the study report of `predict.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from lumbar_jax import labels
from lumbar_jax.data.dicom_geometry import normalized_to_index
from lumbar_jax.dataset_configs import NATIVE_AFFINE, NATIVE_VOLUMES
from lumbar_jax.labels import TARGET_SERIES


def scored_points(coords_series: np.ndarray, native_affine: np.ndarray | None = None) -> np.ndarray:
    """bool `[N, 25]`: points annotated on their target's own series (and, with geometry, on a series that has
    an affine: a zero affine means the series is absent)."""
    scored = np.asarray(coords_series) == TARGET_SERIES
    if native_affine is not None:
        has_geometry = np.any(np.asarray(native_affine) != 0, axis=(-2, -1))  # [N, 3]
        scored &= has_geometry[:, TARGET_SERIES]
    return scored


def to_space(points: np.ndarray, native_affine: np.ndarray | None = None, native_shapes: np.ndarray | None = None,
             volume_shape=(16, 64, 64)) -> np.ndarray:
    """Normalised points `[N, 25, 3]` on each target's series -> `[N, 25, 3]` in patient mm (with geometry:
    affine @ (coords * (shape - 1), 1)) or in voxels of `volume_shape` (coords * (shape - 1))."""
    if native_affine is None:
        return normalized_to_index(points, volume_shape)
    index = normalized_to_index(points, np.asarray(native_shapes, np.float64)[:, TARGET_SERIES])  # [N, 25, 3]
    affine = np.asarray(native_affine, np.float64)[:, TARGET_SERIES]  # [N, 25, 4, 4]
    return np.einsum("ntij,ntj->nti", affine[..., :3, :3], index) + affine[..., :3, 3]


def _native_slices(points: np.ndarray, native_shapes: np.ndarray | None, volume_shape) -> np.ndarray:
    """Depth index `[N, 25]` (float) of normalised points on the native (or fixed-size) volume."""
    shapes = volume_shape if native_shapes is None else np.asarray(native_shapes, np.float64)[:, TARGET_SERIES]
    return normalized_to_index(points, shapes)[..., 0]


def level_correct(pred: np.ndarray, true: np.ndarray, scored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct bool `[N, 25]`, counted bool `[N, 25]`) from points in one space `[N, 25, 3]`: a scored point
    is counted when its condition has another scored level in its study, and correct when its prediction is
    strictly nearer its own annotated point than every other scored level's annotated point."""
    n = pred.shape[0]
    pred_c = pred.reshape(n, labels.NUM_CONDITIONS, labels.NUM_LEVELS, 3)
    true_c = true.reshape(n, labels.NUM_CONDITIONS, labels.NUM_LEVELS, 3)
    scored_c = scored.reshape(n, labels.NUM_CONDITIONS, labels.NUM_LEVELS)
    # distance[n, c, l, m] = |pred of level l - annotated point of level m|
    distance = np.linalg.norm(pred_c[:, :, :, None] - true_c[:, :, None, :], axis=-1)
    own = np.diagonal(distance, axis1=2, axis2=3)  # [N, C, L]
    others = scored_c[:, :, None, :] & ~np.eye(labels.NUM_LEVELS, dtype=bool)  # [N, C, L, M]
    nearest_other = np.where(others, distance, np.inf).min(axis=-1)
    counted = scored_c & others.any(axis=-1)
    correct = counted & (own < nearest_other)
    return correct.reshape(n, -1), counted.reshape(n, -1)


def _summary(error: np.ndarray, correct: np.ndarray, counted: np.ndarray, slice_error: np.ndarray, unit: str
             ) -> dict:
    """The statistics of one set of scored points (1-D arrays over them)."""
    n, level_n = int(error.size), int(counted.sum())
    stat = (lambda f: float(f(error))) if n else (lambda f: None)
    return {
        f"median_{unit}": stat(np.median),
        f"p90_{unit}": stat(lambda e: np.percentile(e, 90)),
        "level_accuracy": float(correct.sum() / level_n) if level_n else None,
        "slice_exact": float(np.mean(slice_error == 0)) if n else None,
        "slice_within_1": float(np.mean(slice_error <= 1)) if n else None,
        "n": n,
        "level_n": level_n,
    }


@dataclasses.dataclass(frozen=True)
class PointErrors:
    """Per point of N studies (`[N, 25]` each): how far the prediction is from the annotated point."""

    error: np.ndarray  # float: Euclidean distance, mm (with geometry) or voxels of the fixed-size volume
    slice_error: np.ndarray  # float: |predicted - annotated| slice index (rounded), on the series' own depth axis
    level_correct: np.ndarray  # bool: nearer its own level's annotated point than any other level's
    level_counted: np.ndarray  # bool: its condition has another scored level in the study (level_correct counts)
    scored: np.ndarray  # bool: annotated on its own series, with geometry (`scored_points`); the rest is meaningless
    unit: str  # "mm" | "vox"


def point_errors(pred: np.ndarray, coords: np.ndarray, coords_series: np.ndarray,
                 native_affine: np.ndarray | None = None, native_shapes: np.ndarray | None = None,
                 volume_shape=(16, 64, 64)) -> PointErrors:
    """The errors of predicted normalised points `pred [N, 25, 3]` against the annotated `coords [N, 25, 3]` /
    `coords_series [N, 25]`; with `native_affine [N, 3, 4, 4]` and `native_shapes [N, 3, 3]` in mm and native
    slices, else in voxels and slices of `volume_shape`."""
    if (native_affine is None) != (native_shapes is None):
        raise ValueError("give both native_affine and native_shapes, or neither")
    scored = scored_points(coords_series, native_affine)
    pred_space = to_space(pred, native_affine, native_shapes, volume_shape)
    true_space = to_space(coords, native_affine, native_shapes, volume_shape)
    correct, counted = level_correct(pred_space, true_space, scored)
    slice_error = np.abs(np.rint(_native_slices(pred, native_shapes, volume_shape))
                         - np.rint(_native_slices(coords, native_shapes, volume_shape)))
    return PointErrors(np.linalg.norm(pred_space - true_space, axis=-1), slice_error, correct, counted, scored,
                       "vox" if native_affine is None else "mm")


def localisation_report(pred: np.ndarray, coords: np.ndarray, coords_series: np.ndarray,
                        native_affine: np.ndarray | None = None, native_shapes: np.ndarray | None = None,
                        volume_shape=(16, 64, 64)) -> dict:
    """Localisation statistics (module docstring) of `point_errors(...)` (same arguments).
    Returns {group: {...}, plus the overall statistics at the top level, "unit": "mm" | "vox"}."""
    e = point_errors(pred, coords, coords_series, native_affine, native_shapes, volume_shape)
    scored = e.scored

    def summary(sel: np.ndarray) -> dict:
        return _summary(e.error[sel], e.level_correct[sel], e.level_counted[sel], e.slice_error[sel], e.unit)

    report: dict = {"unit": e.unit}
    for group in labels.CONDITION_GROUPS:
        targets = np.zeros(labels.NUM_TARGETS, bool)
        targets[labels.group_target_indices(group)] = True
        report[group] = summary(scored & targets)
    report.update(summary(scored))
    return report


@dataclasses.dataclass(frozen=True)
class SplitGeometry:
    """What scoring points needs of every record of a split (or of some of its records), read once: the
    annotated points and the native series' geometry."""

    coords: np.ndarray  # float [N, 25, 3] normalised annotated points, -1 absent
    coords_series: np.ndarray  # int [N, 25] series of each annotated point, -1 absent
    affine: np.ndarray  # float [N, 3, 4, 4] native voxel index -> patient mm per series, zeros when absent
    native_shape: np.ndarray  # int [N, 3, 3] native [Dn, Hn, Wn] per series

    def rows(self, indices: np.ndarray) -> SplitGeometry:
        """The geometry of the records `indices`, in that order."""
        return SplitGeometry(*(getattr(self, f.name)[indices] for f in dataclasses.fields(self)))

    @classmethod
    def concatenate(cls, parts: Sequence[SplitGeometry]) -> SplitGeometry:
        """The records of `parts`, one after the other."""
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)))

    def report(self, points: np.ndarray) -> dict:
        """`localisation_report` of `points` [N, 25, 3] (these studies' predictions), in mm."""
        return localisation_report(points, self.coords, self.coords_series, self.affine, self.native_shape)

    def errors(self, points: np.ndarray) -> PointErrors:
        """`point_errors` of `points` [N, 25, 3] (these studies' predictions), in mm and native slices."""
        return point_errors(points, self.coords, self.coords_series, self.affine, self.native_shape)

    def placement_error(self, points: np.ndarray) -> np.ndarray:
        """float [3 groups, 3]: per condition group (labels.CONDITION_GROUPS order) the root-mean-square error of
        `points` [N, 25, 3] along the native (slices, rows in mm, cols in mm) of each point's series, over the
        scored points (`scored_points`): the crop jitter that reproduces the localiser's error."""
        series = labels.TARGET_SERIES
        shape = self.native_shape[:, series].astype(np.float64)  # [N, 25, 3]
        spacing = np.linalg.norm(self.affine[:, series, :3, :3], axis=-2)  # [N, 25, 3] mm per voxel, by axis
        residual = (points - self.coords) * (shape - 1) * np.concatenate([np.ones_like(spacing[..., :1]),
                                                                          spacing[..., 1:]], axis=-1)
        scored = scored_points(self.coords_series, self.affine)
        error = np.zeros((len(labels.CONDITION_GROUPS), 3))
        for g, group in enumerate(labels.CONDITION_GROUPS):
            sel = scored & np.isin(np.arange(labels.NUM_TARGETS), labels.group_target_indices(group))[None]
            if sel.any():
                error[g] = np.sqrt(np.mean(residual[sel] ** 2, axis=0))
        return error


def read_geometry(source: Sequence[Mapping]) -> SplitGeometry:
    """The SplitGeometry of every record of `source` (`*_native` records), in source order."""
    records = [source[i] for i in range(len(source))]
    return SplitGeometry(
        coords=np.stack([np.asarray(r["coords"], np.float64) for r in records]),
        coords_series=np.stack([np.asarray(r["coords_series"], np.int64) for r in records]),
        affine=np.stack([np.asarray(r[NATIVE_AFFINE], np.float64) for r in records]),
        native_shape=np.array([[np.shape(r[name]) for name in NATIVE_VOLUMES] for r in records]))


def point_report(record: dict, fold_points: np.ndarray) -> dict[str, dict]:
    """Where the localisers put each target of one `*_native` record, for the study report: {target: {'series',
    'series_present', 'point' (normalised (depth, row, col) on that series, mean over the folds), 'patient_mm'
    ((x, y, z) LPS of that mean, by the series' native_affine), 'fold_spread_mm' (largest distance of a fold's
    point from it)}}; point and mm are None where the series is absent. fold_points float [F, 25, 3]."""
    fold_points = np.asarray(fold_points, np.float64)
    mean = fold_points.mean(axis=0)
    every = np.concatenate([mean[None], fold_points])  # [1 + F, 25, 3]
    affine = np.broadcast_to(np.asarray(record[NATIVE_AFFINE], np.float64),
                             (len(every), len(labels.SERIES_TYPES), 4, 4))
    shapes = np.broadcast_to(np.array([np.shape(record[name]) for name in NATIVE_VOLUMES]),
                             (len(every), len(labels.SERIES_TYPES), 3))
    mm = to_space(every, affine, shapes)  # [1 + F, 25, 3]
    spread = np.linalg.norm(mm[1:] - mm[:1], axis=-1).max(axis=0)  # [25]
    present = np.asarray(record["present"], bool)
    out = {}
    for t, target in enumerate(labels.TARGETS):
        series = int(labels.TARGET_SERIES[t])
        on = bool(present[series])
        out[target] = {"series": labels.SERIES_TYPES[series], "series_present": on,
                       "point": [round(float(v), 4) for v in mean[t]] if on else None,
                       "patient_mm": [round(float(v), 2) for v in mm[0, t]] if on else None,
                       "fold_spread_mm": round(float(spread[t]), 2) if on else None}
    return out
