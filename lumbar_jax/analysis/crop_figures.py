"""What the crop classifier of a two-stage run read in its worst-predicted held-out studies.

For each of the N held-out studies with the highest per-study loss (`oof.worst_studies`), one figure of 5 x 5
panels (levels x conditions): per target, the middle slice of the crop that its fold's classifier read,
cut as the held-out evaluation cut it (data.crops.study_crops: at the fold's localiser's point from
`fold_k/localiser_predictions.npz`, or at the annotated point for a run with `crops.points='annotated'`),
with the localiser's point (cyan +) and the annotated point (green o) marked. Left targets' crops are
mirrored as the classifier reads them (sagittal: slice order reversed; axial: columns flipped), and so are
the marks; their titles say "mirrored", and the figure's heading says what that means. The words at each
panel's edges say where the anatomy is (superior / inferior, anterior / posterior, the patient's right /
left: `montage.orientation_labels`, swapped where a mirrored crop's columns are). No model is restored: the
points are the ones training saved, the probabilities the run's out-of-fold ones.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from lumbar_jax import inference, localiser_metrics, rundir
from lumbar_jax import labels as labels_lib
from lumbar_jax.analysis import montage, oof, plots
from lumbar_jax.analysis.attention import probability_text
from lumbar_jax.data import crops as crops_lib
from lumbar_jax.data import study
from lumbar_jax.data.dicom_geometry import RIGHT_TO_LEFT_AXIS
from lumbar_jax.dataset_configs import NATIVE_AFFINE, NATIVE_VOLUMES
from lumbar_jax.labels import TARGET_SERIES

log = logging.getLogger(__name__)

CROPS_INTRO = (
    "What the crop classifier read in the held-out studies it predicted worst (highest per-study loss out of "
    "fold). Each panel is the middle slice of one target's crop, cut from the native series as the held-out "
    "evaluation cut it (left targets mirrored into right-side crops, as the classifier reads them). Cyan +: the "
    "point of the study's fold's localiser (a localiser that never trained on the study); green o: the annotated "
    "point (thin and faint when it lies on another slice than the one drawn, the slice difference in the "
    "title). Titles: the series (\"mirrored\" for a left target's crop: axial crops with the patient's left "
    "on the image left, sagittal crops with their slice order reversed), the localiser's error in mm, the "
    "predicted probabilities Normal/Mild, Moderate, Severe and the true grade. The words at each panel's edges "
    "say where the anatomy is (sup / inf, ant / post, pat. R / pat. L).")


def centre_slice(target: int, slices: int) -> int:
    """Index in target's crop [K, P, P] of the slice through the crop's centre point, after mirroring (a left
    sagittal crop has its slice order reversed)."""
    mirrored = labels_lib.TARGET_SIDE[target] == 1 and RIGHT_TO_LEFT_AXIS[TARGET_SERIES[target]] == 0
    return slices - 1 - slices // 2 if mirrored else slices // 2


def mark_in_crop(record: dict, target: int, centre: np.ndarray, point: np.ndarray, *, size_mm: float,
                 pixels: int) -> tuple[float, float, int]:
    """Where normalised `point` [3] falls in target's crop centred at normalised `centre` [3], as drawn (after
    mirroring): (row, col) in pixels of the crop's slices, and how many native slices it lies off the centre
    slice. Pixel j's centre is (j - (P - 1) / 2) * size_mm / P mm from the crop centre (data.crops.cut_crops)."""
    series = int(TARGET_SERIES[target])
    depth, height, width = np.shape(record[NATIVE_VOLUMES[series]])
    row_mm, col_mm = crops_lib.in_plane_spacing(np.asarray(record[NATIVE_AFFINE])[series])
    per_mm = pixels / size_mm
    row = (pixels - 1) / 2 + (point[1] - centre[1]) * (height - 1) * row_mm * per_mm
    col = (pixels - 1) / 2 + (point[2] - centre[2]) * (width - 1) * col_mm * per_mm
    if labels_lib.TARGET_SIDE[target] == 1 and RIGHT_TO_LEFT_AXIS[series] == 2:
        col = pixels - 1 - col
    slice_offset = int(np.rint(point[0] * (depth - 1)) - np.rint(centre[0] * (depth - 1)))
    return float(row), float(col), slice_offset


def localiser_errors(record: dict, points: np.ndarray) -> np.ndarray:
    """float [25]: mm between the localiser's `points` [25, 3] and the annotated points, NaN where a target
    has no annotated point on its own series (present, with geometry)."""
    affine = np.asarray(record[NATIVE_AFFINE], np.float64)[None]
    shapes = np.array([[np.shape(record[name]) for name in NATIVE_VOLUMES]])
    scored = localiser_metrics.scored_points(np.asarray(record["coords_series"])[None], affine)[0]
    predicted = localiser_metrics.to_space(np.asarray(points)[None], affine, shapes)[0]
    annotated = localiser_metrics.to_space(np.asarray(record["coords"])[None], affine, shapes)[0]
    return np.where(scored, np.linalg.norm(predicted - annotated, axis=-1), np.nan)


@dataclasses.dataclass(frozen=True)
class StudyCrops:
    """One held-out study as its fold's classifier read it: what a crop figure shows."""

    record: dict  # the study's `*_native` record
    crops: np.ndarray  # uint8 [25, K, P, P] as cut (left targets mirrored)
    present: np.ndarray  # bool [25] crop_present
    read_at: np.ndarray  # float [25, 3] normalised points the crops were cut at
    predicted: np.ndarray  # float [25, 3] the fold's localiser's points
    probs: np.ndarray  # float [25, 3] the out-of-fold probabilities
    size_mm: float  # crop side in mm


def _panel(ax, study_crops: StudyCrops, target: int, error_mm: float) -> None:
    """One target's panel: its crop's middle slice with the localiser's and the annotated point marked."""
    record, crops, probs = study_crops.record, study_crops.crops, study_crops.probs
    read_at, predicted = study_crops.read_at[target], study_crops.predicted[target]
    series = int(TARGET_SERIES[target])
    slices, pixels = crops.shape[1], crops.shape[-1]
    mirrored = bool(labels_lib.TARGET_SIDE[target] == 1)
    name = labels_lib.SERIES_TYPES[series] + (" mirrored" if mirrored else "")
    ax.set_xticks([])
    ax.set_yticks([])
    label = int(record["labels"][target])
    truth = labels_lib.SEVERITY_NAMES[label] if label >= 0 else "no label"
    if not study_crops.present[target]:
        ax.set_facecolor("0.85")
        ax.set_title(f"{labels_lib.SERIES_TYPES[series]} absent\ntrue {truth}", fontsize=8)
        return
    ax.imshow(crops[target, centre_slice(target, slices)], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    montage.orientation_labels(ax, study.PLANE_OF_SERIES[labels_lib.SERIES_TYPES[series]], mirrored=mirrored)
    marks = dict(size_mm=study_crops.size_mm, pixels=pixels)
    row, col, _ = mark_in_crop(record, target, read_at, predicted, **marks)
    ax.plot(col, row, "+", color="cyan", ms=10, mew=1.8)
    where = "no point"
    if np.isfinite(error_mm):
        row, col, off = mark_in_crop(record, target, read_at, np.asarray(record["coords"][target]), **marks)
        faint = off != 0
        ax.plot(col, row, "o", mfc="none", mec="lime", ms=8, mew=0.7 if faint else 1.4, alpha=0.6 if faint else 1.0)
        where = f"err {error_mm:.1f} mm" + (f", {abs(off)} sl off" if off else "")
    ax.set_xlim(-0.5, pixels - 0.5)
    ax.set_ylim(pixels - 0.5, -0.5)
    ax.set_title(f"{name}, {where}\n{probability_text(probs[target])}\ntrue {truth}",
                 fontsize=8, linespacing=1.25)


def plot_study_crops(study_crops: StudyCrops, path: str, title: str) -> str:
    """A 5 x 5 grid (levels x conditions) of one study's crops, cut at `read_at`, with the localiser's
    `predicted` and the annotated points marked."""
    record, predicted = study_crops.record, study_crops.predicted
    errors = localiser_errors(record, predicted)
    # Square panels, room above each for its three-line title, a header for the suptitle and the condition names.
    fig, axes, _, height = plots.target_grid(2.2, gaps=(0.35, 0.75), margins=(0.6, 0.15, 1.8, 0.15), label_size=10,
                                             label_offset=0.62)
    for t in range(labels_lib.NUM_TARGETS):
        _panel(axes[labels_lib.TARGET_LEVEL[t], labels_lib.TARGET_CONDITION[t]], study_crops, t, errors[t])
    fig.suptitle(title + "\ncyan +: localiser's point;  green o: annotated point (thin: on another slice)\n"
                 "left targets' crops are mirrored into right-side ones, as the classifier reads them (axial: "
                 "columns flipped; sagittal: slice order reversed); the words at each panel's edges say which way "
                 "is which", fontsize=11, y=1 - 0.1 / height, va="top")
    return plots.save_figure(fig, path)


def crop_sections(workdir: str, kaggle_dir: str, out_dir: str, out_of_fold: tuple, num_studies: int
                  ) -> list[tuple[str, str, str]]:
    """(title, PNG path, caption) of the crops of the `num_studies` worst-predicted held-out studies of a
    run whose pipeline localises; [] for any other. `out_of_fold`: the run's (study_ids [N], labels [N, 25],
    probs [N, 25, 3], folds [N]), as `oof.read_oof` with the labels aligned. Studies are read from
    `kaggle_dir` (train split) with their native series."""
    config, pipeline = inference.load_run(workdir)
    if not pipeline.localises:
        return []
    study_ids, labels, probs, folds = out_of_fold
    worst = oof.worst_studies(study_ids, labels, probs, folds, top=num_studies)
    entries = {e.study_id: e for e in study.list_studies(kaggle_dir, "train")}
    crop, annotated = crops_lib.CropSpec.from_config(config.crops), config.crops.points == "annotated"
    sections = []
    for row in worst.itertuples():
        record = study.study_example(entries[row.study_id], tuple(config.model.volume_shape),
                                     native_max_size=pipeline.native_max_size(config))
        predicted = _held_out_points(workdir, row.fold, row.study_id)
        read_at = crops_lib.training_points(record) if annotated else predicted
        crops, present = crops_lib.study_crops(record, read_at, crop)
        study_probs = probs[int(np.flatnonzero(study_ids == row.study_id)[0])]
        png = plot_study_crops(StudyCrops(record, crops, present, read_at, predicted, study_probs, crop.size_mm),
                               os.path.join(out_dir, f"crops_{row.study_id}.png"),
                               f"study {row.study_id}, held out in fold {row.fold} (per-study loss {row.loss:.3f})")
        errors = localiser_errors(record, predicted)
        scored = errors[np.isfinite(errors)]
        where = ("at the annotated points (crops.points='annotated'), the localiser's points marked"
                 if annotated else "at its fold's localiser's points")
        caption = (f"Study {row.study_id} (fold {row.fold}, per-study loss {row.loss:.3f}; worst targets: "
                   f"{row.worst_targets}). Crops of {crop.slices} slices x {crop.size_mm:g} mm sampled to "
                   f"{crop.pixels} px, cut {where}. Localiser error over its {scored.size} annotated targets: "
                   + (f"median {np.median(scored):.1f} mm, max {np.max(scored):.1f} mm." if scored.size
                      else "none annotated."))
        sections.append((f"Study {row.study_id}", png, caption))
    return sections


def _held_out_points(workdir: str, fold: int, study_id: int) -> np.ndarray:
    """float [25, 3]: fold `fold`'s localiser's points for `study_id`, which that fold held out."""
    path = rundir.localiser_predictions_path(workdir, fold)
    saved = rundir.read_localiser_predictions(path)
    rows = np.flatnonzero(saved["study_id"] == study_id)
    if len(rows) != 1 or not saved["held_out"][rows[0]]:
        raise ValueError(f"{path}: study {study_id} is not one of the studies fold {fold} held out")
    return saved["points"][rows[0]].astype(np.float64)
