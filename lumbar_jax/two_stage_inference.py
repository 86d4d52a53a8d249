"""The two models per fold of a two-stage run, restored for prediction and checkpoint evaluation.

A two-stage run (`config.pipeline == 'two_stage'`, train/two_stage.py) keeps in every fold k:

    fold_k/localiser/checkpoints/best   stage 1, the localiser: r64 volumes -> the 25 target points
    fold_k/checkpoints/{best,latest}    stage 2, the crop classifier: crops at those points -> probabilities

`TwoStageRestorer` builds both models and compiles their eval steps once, shared by every fold (as
`inference.RunRestorer` does for one-stage runs); `restore(k)` gives fold k's pair. A fold predicts studies
as training's held-out evaluation does: its localiser locates the 25 points (flip TTA, as in training), the
native series are cut there (`data.crop_pipeline.eval_batches`), and its classifier reads the crops. The
ensemble of folds averages the probabilities, each fold cropping at its own localiser's points.

Records must be `*_native` records (docs/conventions.md section 4): a split of a `*_native` dataset, or a
study read from DICOM with `study.study_example(..., native_max_size=NATIVE_MAX_SIZE[config.data.config])`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from lumbar_jax import inference, localisation, metrics, rundir
from lumbar_jax import labels as L
from lumbar_jax.data import crop_pipeline, pipeline
from lumbar_jax.dataset_configs import NATIVE_AFFINE, NATIVE_VOLUMES
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train import two_stage
from lumbar_jax.train.folds import Fold


@dataclasses.dataclass(frozen=True)
class TwoStageFoldModel:
    """One fold's restored localiser (its best checkpoint, the one whose points training cropped at) and crop
    classifier (the requested checkpoint)."""

    fold: int
    localiser_step: int
    localiser_state: dict
    step: int  # training step of the classifier's checkpoint
    state: dict


class TwoStageRestorer:
    """Restores the folds of one two-stage run onto `mesh`; both eval steps are compiled once for all folds."""

    def __init__(self, workdir: str, mesh: Mesh):
        self.workdir, self.mesh = workdir, mesh
        self.config = inference.load_run_config(workdir)
        if self.config.pipeline != "two_stage":
            raise ValueError(f"{workdir} is a one-stage run (pipeline {self.config.pipeline!r}): restore it with "
                             "inference.RunRestorer")
        cr = self.config.crops
        self.crop_args = dict(slices=cr.slices, size_mm=cr.size_mm, pixels=cr.pixels)
        self.batch_size = inference.eval_batch_size(self.config, mesh)
        localiser_statics, self.localiser_template = two_stage.localiser_state(self.config, mesh)
        classifier_statics, self.classifier_template = two_stage.classifier_state(self.config, mesh)
        self.localiser_step = two_stage.localiser_eval_step(localiser_statics, mesh)
        self.classifier_step = two_stage.classifier_eval_step(classifier_statics, mesh)

    def restore(self, fold: int, checkpoint: str | int = "best") -> TwoStageFoldModel:
        """Fold `fold`'s best localiser and its classifier at `checkpoint` ('best', 'latest' or a step)."""
        what = f"fold {fold} of {self.workdir}"
        localiser_dir = os.path.join(rundir.localiser_dir(self.workdir, fold), rundir.CHECKPOINTS_DIR)
        localiser_state, localiser_step = inference.restore_checkpoint(
            localiser_dir, self.localiser_template, "best", f"the localiser of {what}")
        state, step = inference.restore_checkpoint(rundir.checkpoints_dir(self.workdir, fold),
                                                   self.classifier_template, checkpoint, what)
        return TwoStageFoldModel(fold, localiser_step, localiser_state, step, state)

    def localise(self, model: TwoStageFoldModel, records: Sequence[dict], indices: np.ndarray,
                 study_ids: np.ndarray) -> np.ndarray:
        """Normalised points float32 [len(indices), 25, 3] of `records[indices]` by the fold's localiser (flip
        TTA); `study_ids` int [len(records)], distinct."""
        batches = pipeline.eval_batches(records, indices, batch_size=mesh_lib.process_batch_size(self.batch_size),
                                        shard_index=jax.process_index(), shard_count=jax.process_count())
        out, _ = inference.gather_outputs(self.localiser_step, model.localiser_state, batches, self.mesh,
                                          ("volumes", "present"), study_ids[indices])
        return out["points"]

    def classify(self, model: TwoStageFoldModel, records: Sequence[dict], indices: np.ndarray,
                 study_ids: np.ndarray, points: np.ndarray | None) -> np.ndarray:
        """Probabilities float32 [len(indices), 25, 3] of the fold's classifier on crops of `records[indices]`
        at `points` [len(indices), 25, 3] (normalised), or at the annotated points when `points` is None."""
        per_record = None
        if points is not None:
            per_record = np.full((len(records), L.NUM_TARGETS, 3), np.nan)
            per_record[indices] = points
        batches = crop_pipeline.eval_batches(
            records, indices, batch_size=mesh_lib.process_batch_size(self.batch_size), points=per_record,
            shard_index=jax.process_index(), shard_count=jax.process_count(), **self.crop_args)
        out, _ = inference.gather_outputs(self.classifier_step, model.state, batches, self.mesh,
                                          ("crops", "crop_present"), study_ids[indices])
        return out["probs"]

    def ensemble_predict(self, models: Sequence[TwoStageFoldModel], records: Sequence[dict]
                         ) -> tuple[np.ndarray, np.ndarray]:
        """(mean over `models` of their probabilities float [N, 25, 3], each fold's points float [F, N, 25, 3])
        for every record (`*_native`, in memory), in order; each fold crops at its own localiser's points."""
        missing = [k for k in (*NATIVE_VOLUMES, NATIVE_AFFINE) if records and k not in records[0]]
        if missing:
            raise ValueError(f"a two-stage run crops the native series, but the records lack {missing}: read "
                             f"them as {self.config.data.config} records (study.study_example(..., "
                             "native_max_size=NATIVE_MAX_SIZE[config])")
        indices, study_ids = np.arange(len(records)), np.array([int(r["study_id"]) for r in records])
        probs, points = [], []
        for model in models:
            points.append(self.localise(model, records, indices, study_ids))
            probs.append(self.classify(model, records, indices, study_ids, points[-1]))
        return np.mean(probs, axis=0), np.stack(points)

    def evaluate_fold(self, model: TwoStageFoldModel, fold: Fold) -> dict:
        """Fold k's held-out studies through fold k's localiser and classifier, as training scored them:
        {'probs' [len(val_idx), 25, 3], 'val' (metrics.evaluate_predictions against the fold's training
        prior), 'points' [len(val_idx), 25, 3], 'geometry' (their train.two_stage.StudyGeometry), 'localiser'
        (the points' localisation report in mm, as result.json's), 'saved_points_max_diff' (largest |point -
        the fold's localiser_predictions.npz point|, or None without that file)}. Crops are at the annotated
        points when the run's `crops.points` says so."""
        points = self.localise(model, fold.source, fold.val_idx, fold.study_ids)
        annotated = self.config.crops.points == "annotated"
        probs = self.classify(model, fold.source, fold.val_idx, fold.study_ids, None if annotated else points)
        held_out = two_stage.read_geometry([fold.source[int(i)] for i in fold.val_idx])
        return {"probs": probs, "val": metrics.evaluate_predictions(fold.val_labels, probs, fold.train_labels),
                "points": points, "geometry": held_out, "localiser": held_out.report(points),
                "saved_points_max_diff": self._saved_points_diff(fold, points)}

    def _saved_points_diff(self, fold: Fold, points: np.ndarray) -> float | None:
        path = rundir.localiser_predictions_path(self.workdir, fold.index)
        if not os.path.exists(path):
            return None
        saved = rundir.read_localiser_predictions(path)
        row = {int(s): r for r, s in enumerate(saved["study_id"])}
        rows = [row[int(s)] for s in fold.study_ids[fold.val_idx]]
        return float(np.max(np.abs(saved["points"][rows] - points)))


def pooled_localiser_report(fold_results: Sequence[dict]) -> dict:
    """The localisation report of every fold's held-out points together (each by its own fold's localiser),
    from `evaluate_fold` results: what cv_summary.json keeps as 'localiser'."""
    geometry = two_stage.StudyGeometry(*(np.concatenate([getattr(r["geometry"], f.name) for r in fold_results])
                                         for f in dataclasses.fields(two_stage.StudyGeometry)))
    return geometry.report(np.concatenate([r["points"] for r in fold_results]))


def point_report(record: dict, fold_points: np.ndarray) -> dict[str, dict]:
    """Where the localisers put each target of one `*_native` record, for the study report: {target: {'series',
    'series_present', 'point' (normalised (depth, row, col) on that series, mean over the folds), 'patient_mm'
    ((x, y, z) LPS of that mean, by the series' native_affine), 'fold_spread_mm' (largest distance of a fold's
    point from it)}}; point and mm are None where the series is absent. fold_points float [F, 25, 3]."""
    fold_points = np.asarray(fold_points, np.float64)
    mean = fold_points.mean(axis=0)
    every = np.concatenate([mean[None], fold_points])  # [1 + F, 25, 3]
    affine = np.broadcast_to(np.asarray(record[NATIVE_AFFINE], np.float64), (len(every), len(L.SERIES_TYPES), 4, 4))
    shapes = np.broadcast_to(np.array([np.shape(record[name]) for name in NATIVE_VOLUMES]),
                             (len(every), len(L.SERIES_TYPES), 3))
    mm = localisation.to_space(every, affine, shapes)  # [1 + F, 25, 3]
    spread = np.linalg.norm(mm[1:] - mm[:1], axis=-1).max(axis=0)  # [25]
    present = np.asarray(record["present"], bool)
    out = {}
    for t, target in enumerate(L.TARGETS):
        series = int(localisation.TARGET_SERIES[t])
        on = bool(present[series])
        out[target] = {"series": L.SERIES_TYPES[series], "series_present": on,
                       "point": [round(float(v), 4) for v in mean[t]] if on else None,
                       "patient_mm": [round(float(v), 2) for v in mm[0, t]] if on else None,
                       "fold_spread_mm": round(float(spread[t]), 2) if on else None}
    return out
