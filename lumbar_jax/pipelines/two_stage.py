"""The two-stage pipeline: per fold a localiser finds the 25 target points on the r64 volumes, and a crop
classifier reads crops of the native series there.

Training is train/two_stage.py. A trained run keeps in every fold k:

    fold_k/localiser/checkpoints/best   stage 1, the localiser: r64 volumes -> the 25 target points
    fold_k/checkpoints/{best,latest}    stage 2, the crop classifier: crops at those points -> probabilities
    fold_k/localiser_predictions.npz    fold k's localiser's points for every study of the split

`TwoStageRestorer` builds both models and compiles their eval steps once, shared by every fold; `restore(k)`
gives fold k's pair. A fold predicts studies as training's held-out evaluation does, through the same
`Localise` and `Classify` (train/two_stage_models.py): its localiser locates the 25 points (flip TTA), the
native series are cut there, and its classifier reads the crops. The ensemble of folds averages the
probabilities, each fold cropping at its own localiser's points.

Records must be `*_native` records (docs/conventions.md section 4): a split of a `*_native` dataset, or a
study read from DICOM with `study.study_example(..., native_max_size=NATIVE_MAX_SIZE[config.data.config])`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np
from jax.sharding import Mesh

from lumbar_jax import inference, localiser_metrics, metrics, rundir
from lumbar_jax import labels
from lumbar_jax.data.crops import CropSpec
from lumbar_jax.dataset_configs import NATIVE_AFFINE, NATIVE_MAX_SIZE, NATIVE_VOLUMES
from lumbar_jax.pipelines.base import Pipeline, Restorer
from lumbar_jax.train import two_stage
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train.init import classifier_state, localiser_state
from lumbar_jax.train.two_stage_models import Classify, Localise, classifier_eval_step, localiser_eval_step


@dataclasses.dataclass(frozen=True)
class TwoStageFoldModel:
    """One fold's restored localiser (its best checkpoint, the one whose points training cropped at) and crop
    classifier (the requested checkpoint)."""

    fold: int
    localiser_step: int
    localiser_state: dict
    step: int  # training step of the classifier's checkpoint
    state: dict


class TwoStageRestorer(Restorer):
    """Restores the folds of one two-stage run onto `mesh`; both eval steps are compiled once for all folds."""

    def __init__(self, workdir: str, config, mesh: Mesh):
        self.workdir, self.config, self.mesh = workdir, config, mesh
        batch_size = inference.eval_batch_size(config, mesh)
        localiser_statics, self.localiser_template = localiser_state(config, mesh)
        classifier_statics, self.classifier_template = classifier_state(config, mesh)
        self.localise = Localise(localiser_eval_step(localiser_statics, mesh), batch_size, mesh)
        self.classify = Classify(classifier_eval_step(classifier_statics, mesh), CropSpec.from_config(config.crops),
                                 batch_size, mesh, config.crops.tta_shift_mm)

    def restore(self, fold: int, checkpoint: str | int = "best", workdir: str | None = None) -> TwoStageFoldModel:
        """Fold `fold`'s best localiser and its classifier at `checkpoint` ('best', 'latest' or a step), of the
        run in `workdir` (default: this restorer's)."""
        (localiser_dir, localiser_which, localiser_what), (classifier_dir, which, what) = PIPELINE.checkpoints(
            workdir or self.workdir, fold, checkpoint)
        localiser, localiser_step = inference.restore_checkpoint(localiser_dir, self.localiser_template,
                                                                 localiser_which, localiser_what)
        classifier, step = inference.restore_checkpoint(classifier_dir, self.classifier_template, which, what)
        return TwoStageFoldModel(fold, localiser_step, localiser, step, classifier)

    def predict(self, models: Sequence[TwoStageFoldModel], records: Sequence[dict], tta: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
        """(mean over `models` of their probabilities float [N, 25, 3], each fold's points float [F, N, 25, 3])
        for every record (`*_native`, in memory), in order; each fold crops at its own localiser's points."""
        if tta:
            raise ValueError(f"flip TTA: {PIPELINE.tta_refusal(self.workdir, self.config)}")
        missing = [k for k in (*NATIVE_VOLUMES, NATIVE_AFFINE) if records and k not in records[0]]
        if missing:
            raise ValueError(f"a two-stage run crops the native series, but the records lack {missing}: read "
                             f"them as {self.config.data.config} records (study.study_example(..., "
                             "native_max_size=NATIVE_MAX_SIZE[config])")
        indices, study_ids = np.arange(len(records)), np.array([int(r["study_id"]) for r in records])
        probs, points = [], []
        for model in models:
            points.append(self.localise(model.localiser_state, records, indices, study_ids))
            probs.append(self.classify(model.state, records, indices, study_ids, points[-1]))
        return np.mean(probs, axis=0), np.stack(points)

    def evaluate_fold(self, model: TwoStageFoldModel, fold) -> dict:
        """Fold k's held-out studies through fold k's localiser and classifier, as training scored them; besides
        the common keys: 'localiser_step', 'points' [len(val_idx), 25, 3], 'geometry' (their
        localiser_metrics.SplitGeometry), 'localiser' (the points' localisation report in mm, as result.json's),
        'saved_points_max_diff' (largest |point - the fold's localiser_predictions.npz point|, or None without
        that file). Crops are at the annotated points when the run's `crops.points` says so."""
        points = self.localise(model.localiser_state, fold.source, fold.val_idx, fold.study_ids)
        annotated = self.config.crops.points == "annotated"
        probs = self.classify(model.state, fold.source, fold.val_idx, fold.study_ids, None if annotated else points)
        held_out = localiser_metrics.read_geometry([fold.source[int(i)] for i in fold.val_idx])
        return {"fold": fold.index, "best_step": model.step, "val_indices": fold.val_idx, "val_probs": probs,
                "val": metrics.evaluate_predictions(fold.val_labels, probs, fold.train_labels),
                "localiser_step": model.localiser_step, "points": points, "geometry": held_out,
                "localiser": held_out.report(points), "saved_points_max_diff": self._saved_points_diff(fold, points)}

    def describe_fold(self, result: dict) -> str:
        median = result["localiser"]["median_mm"]
        return (f"fold {result['fold']}, step {result['best_step']} (localiser step {result['localiser_step']}): "
                f"score {result['val']['score']:.4f} (baseline {result['val']['baseline']['score']:.4f}), "
                f"localiser median {'n/a' if median is None else f'{median:.2f}'} mm")

    def pooled_figures(self, results: Sequence[dict]) -> dict:
        """{'oof_localiser': the localisation report of every fold's held-out points together, each by its own
        fold's localiser}: what cv_summary.json keeps as 'localiser'."""
        geometry = localiser_metrics.SplitGeometry.concatenate([r["geometry"] for r in results])
        return {"oof_localiser": geometry.report(np.concatenate([r["points"] for r in results]))}

    def provenance(self, models: Sequence[TwoStageFoldModel]) -> dict:
        return {"pipeline": PIPELINE.name, "localiser_steps": [int(m.localiser_step) for m in models],
                "localiser_flip_tta": True}

    def blank_record(self) -> dict:
        record = super().blank_record()
        record.update({name: np.zeros((1, 1, 1), np.uint8) for name in NATIVE_VOLUMES})
        record[NATIVE_AFFINE] = np.zeros((len(labels.SERIES_TYPES), 4, 4), np.float32)
        return record

    def _saved_points_diff(self, fold, points: np.ndarray) -> float | None:
        path = rundir.localiser_predictions_path(self.workdir, fold.index)
        if not os.path.exists(path):
            return None
        saved = rundir.read_localiser_predictions(path)
        row = {int(s): r for r, s in enumerate(saved["study_id"])}
        rows = [row[int(s)] for s in fold.study_ids[fold.val_idx]]
        return float(np.max(np.abs(saved["points"][rows] - points)))


class TwoStagePipeline(Pipeline):
    name = "two_stage"
    localises = True
    fold_files = {
        "fold_{k}/localiser/": "the localiser's checkpoints/ (latest; best = lowest held-out median error), "
                               "metrics.jsonl and tensorboard/",
        "fold_{k}/localiser_predictions.npz": "fold k's localiser's points for every study of the split",
    }

    def check_config(self, config, mesh) -> None:
        mesh_lib.check_batch_size(config.localiser.batch_size, mesh, "localiser.batch_size")

    def checkpoints(self, workdir: str, fold: int, checkpoint: str | int) -> list[tuple[str, str | int, str]]:
        """The fold's localiser's best checkpoint (the one whose points training cropped at), then its crop
        classifier's `checkpoint`."""
        what = f"fold {fold} of {workdir}"
        return [(os.path.join(rundir.localiser_dir(workdir, fold), rundir.CHECKPOINTS_DIR), "best",
                 f"the localiser of {what}"), *super().checkpoints(workdir, fold, checkpoint)]

    def batch_fields(self, config) -> dict[str, int]:
        return {"localiser.batch_size": config.localiser.batch_size, "train.batch_size": config.train.batch_size}

    def train_fold(self, config, workdir: str, fold, mesh) -> dict:
        return two_stage.train_fold(config, workdir, fold, mesh)

    def tta_refusal(self, workdir: str, config) -> str:
        return (f"{workdir} is a two-stage run: its localiser already averages with the flip, and its "
                "classifier reads left crops mirrored into right-side ones")

    def native_max_size(self, config) -> int:
        return NATIVE_MAX_SIZE[config.data.config]

    def summary_figures(self, workdir: str, split) -> dict:
        return {"localiser": two_stage.oof_localiser_report(workdir, split)}

    def restorer(self, workdir: str, config, mesh) -> TwoStageRestorer:
        return TwoStageRestorer(workdir, config, mesh)

    def label(self, stored_config: Mapping) -> str:
        """'two_stage', or 'two_stage (annotated points)' for a run scored on crops at the annotated points."""
        if stored_config.get("crops", {}).get("points") == "annotated":
            return f"{self.name} (annotated points)"
        return self.name


PIPELINE = TwoStagePipeline()
