"""The two-stage pipeline in one fold: the localiser (stage 1), then the crop classifier (stage 2).

Stage 1 trains models/localiser.py on the fold's training studies (their annotated points on the r64
volumes), keeps the checkpoint with the lowest held-out median error, and predicts the 25 points of every
record of the split: `fold_k/localiser_predictions.npz` (docs/conventions.md section 5). The fold's held-out
studies are thereby located by a localiser that never trained on them. Its held-out errors, measured in the
native series (slices and mm), set the training jitter of stage 2.

Stage 2 trains models/crop_classifier.py on crops of the native series (data/crop_pipeline.py): at the
annotated points moved by that jitter (targets without one: at the localiser's point), and scores the
held-out studies on crops at the localiser's points (`crops.points='predicted'`) or, for the ablation that
measures what the localiser costs, at the annotated ones. Both stages resume from their latest checkpoints;
a finished stage 1 (its predictions file exists) is not trained again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import jax
import numpy as np

from lumbar_jax import localiser_metrics, metrics, rundir
from lumbar_jax import labels
from lumbar_jax.data import crop_pipeline, pipeline
from lumbar_jax.data.crops import CropSpec
from lumbar_jax.train import loop, noisy_labels, seeds
from lumbar_jax.train import step as step_lib
from lumbar_jax.train.folds import Fold
from lumbar_jax.train.init import classifier_state, localiser_state
from lumbar_jax.train.state import CheckpointStore
from lumbar_jax.train.two_stage_models import (CROP_INPUTS, LOCALISER_INPUTS, Classify, Localise,
                                               classifier_eval_step, classifier_loss, localiser_eval_step,
                                               localiser_loss_fn)

log = logging.getLogger(__name__)


def train_fold(config, workdir: str, fold: Fold, mesh) -> dict:
    """Train both stages of `fold` (resuming where it stopped) and return the fold's result, as the one-stage
    `loop.train_fold` does, with the localiser's held-out figures under 'localiser' (also in result.json)."""
    geometry = localiser_metrics.read_geometry(fold.source)
    points, report = localise(config, workdir, fold, mesh, geometry)
    jitter = config.crops.jitter_scale * geometry.rows(fold.val_idx).placement_error(points[fold.val_idx])
    log.info("fold %d localiser (held out): median %.2f mm, p90 %.2f mm, level accuracy %.3f", fold.index,
             report["median_mm"], report["p90_mm"], report["level_accuracy"])
    _, best_step, probs, val = loop.run_stage(_classifier_stage(config, workdir, fold, mesh, points, jitter), mesh)
    result = {"fold": fold.index, "best_step": best_step, "val": val, "localiser": report,
              "val_indices": [int(i) for i in fold.val_idx], "val_probs": probs.tolist()}
    loop.write_result(workdir, fold.index, result)
    return result


# ------------------------------------------------------------------------------------------------ stage 1


def localise(config, workdir: str, fold: Fold, mesh, geometry: localiser_metrics.SplitGeometry
             ) -> tuple[np.ndarray, dict]:
    """(points float32 [N, 25, 3] of every record by fold k's localiser, its held-out report). Trains the
    localiser unless its predictions are already saved."""
    path = rundir.localiser_predictions_path(workdir, fold.index)
    if os.path.exists(path):
        saved = rundir.read_localiser_predictions(path)
        log.info("fold %d: localiser already trained, its predictions read from %s", fold.index, path)
        return saved["points"], geometry.rows(fold.val_idx).report(saved["points"][fold.val_idx])
    stage, predict_all = _localiser_stage(config, workdir, fold, mesh, geometry)
    state, _, _, _ = loop.run_stage(stage, mesh)
    points = predict_all(state)
    if jax.process_index() == 0:
        held_out = np.zeros(len(points), bool)
        held_out[fold.val_idx] = True
        rundir.write_localiser_predictions(path, fold.study_ids, points, held_out)
    return points, geometry.rows(fold.val_idx).report(points[fold.val_idx])


def _localiser_stage(config, workdir: str, fold: Fold, mesh, geometry: localiser_metrics.SplitGeometry):
    """(loop.Stage of the localiser, state -> points [N, 25, 3] of every record)."""
    lc, tc = config.localiser, config.train
    volume_shape = tuple(config.model.volume_shape)
    statics, state = localiser_state(config, mesh)

    train_step = step_lib.make_train_step(statics, mesh, seeds.dropout_seed(config.seed, fold.index), 0.0,
                                          localiser_loss_fn(volume_shape))
    eval_step = localiser_eval_step(statics, mesh)
    localise_points = Localise(eval_step, tc.eval_batch_size, mesh)

    def predict(state, indices: np.ndarray) -> np.ndarray:
        return localise_points(state, fold.source, indices, fold.study_ids)

    def evaluate(state) -> tuple[np.ndarray, dict]:
        """Held-out points and their errors in the native series, in mm (as the summary reports them): the
        score is the median error, so the progress bar's `val` and the best checkpoint are in mm too."""
        points = predict(state, fold.val_idx)
        report = geometry.rows(fold.val_idx).report(points)
        figures = {"score": report["median_mm"], "p90_mm": report["p90_mm"],
                   "level_accuracy": report["level_accuracy"]}
        return points, {k: (math.inf if v is None and k == "score" else v) for k, v in figures.items()}

    def batches(start: int):
        stream = loop.train_stream(config, fold.index, lc.batch_size)
        batches = pipeline.train_batches(fold.source, fold.train_idx, stream, config.augment)
        return map(lambda b: {k: b[k] for k in LOCALISER_INPUTS},
                   pipeline.iterate(batches[start:], pipeline.Reading(config.data.worker_count)))

    schedule = dict(steps=lc.steps, lr=lc.lr, warmup_steps=lc.warmup_steps, batch_size=lc.batch_size,
                    log_every=tc.log_every, eval_every=lc.eval_every, checkpoint_every=tc.checkpoint_every)
    stage = loop.Stage(
        name=f"fold {fold.index} localiser", directory=rundir.localiser_dir(workdir, fold.index), statics=statics,
        state=state, train_step=train_step, eval_step=eval_step, batches=batches, evaluate=evaluate,
        scalars=lambda r: {f"val/{'median_mm' if k == 'score' else k}": v for k, v in r.items()
                           if v is not None},
        train=_Schedule(**schedule), score_unit=" mm")
    return stage, lambda state: predict(state, np.arange(len(fold.study_ids)))


# ------------------------------------------------------------------------------------------------ stage 2


def _classifier_stage(config, workdir: str, fold: Fold, mesh, points: np.ndarray, jitter: np.ndarray
                      ) -> loop.Stage:
    """The loop.Stage of the crop classifier: `points` [N, 25, 3] the localiser's for every record, `jitter`
    [3 groups, 3] the training placement noise (std in slices, mm, mm)."""
    tc, crop = config.train, CropSpec.from_config(config.crops)
    directory = rundir.fold_dir(workdir, fold.index)
    resuming = CheckpointStore.has_checkpoint(os.path.join(directory, rundir.CHECKPOINTS_DIR))
    statics, state = classifier_state(config, mesh, fold.train_labels, load_pretrained=not resuming)
    train_step = step_lib.make_train_step(statics, mesh, seeds.dropout_seed(config.seed, fold.index),
                                          tc.ema_decay, classifier_loss(tc.label_smoothing))
    eval_step = classifier_eval_step(statics, mesh)
    classify = Classify(eval_step, crop, tc.eval_batch_size, mesh, config.crops.tta_shift_mm)
    held_out_points = points[fold.val_idx] if config.crops.points == "predicted" else None

    def evaluate(state) -> tuple[np.ndarray, dict]:
        probs = classify(state, fold.source, fold.val_idx, fold.study_ids, held_out_points)
        return probs, metrics.evaluate_predictions(fold.val_labels, probs, fold.train_labels)

    def batches(start: int):
        stream = loop.train_stream(config, fold.index, tc.batch_size)
        records = noisy_labels.training_records(config, fold)
        batches = crop_pipeline.train_batches(records, fold.train_idx, stream, crop,
                                              augment=crop_pipeline.CropAugment.from_config(config.augment, jitter),
                                              fallback_points=points)
        return map(lambda b: {k: b[k] for k in CROP_INPUTS},
                   pipeline.iterate(batches[start:], pipeline.Reading(config.data.worker_count)))

    return loop.Stage(name=f"fold {fold.index}", directory=directory, statics=statics, state=state,
                      train_step=train_step, eval_step=eval_step, batches=batches, evaluate=evaluate,
                      scalars=loop.val_scalars, train=tc)


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """The fields of `config.train` that `loop.run_stage` reads, for the localiser's own schedule."""

    steps: int
    lr: float
    warmup_steps: int
    batch_size: int
    log_every: int
    eval_every: int
    checkpoint_every: int


def oof_localiser_report(workdir: str, split) -> dict:
    """The localiser's figures over every fold's held-out studies together (each located by the localiser
    of its own fold), from the folds' `localiser_predictions.npz`: what cv_summary.json keeps as 'localiser'."""
    geometry = localiser_metrics.read_geometry(split.source)
    points = np.full((len(split.study_ids), labels.NUM_TARGETS, 3), np.nan)
    for k in range(int(split.folds.max()) + 1):
        saved = rundir.read_localiser_predictions(rundir.localiser_predictions_path(workdir, k))
        points[saved["held_out"]] = saved["points"][saved["held_out"]]
    scored = np.flatnonzero(split.folds >= 0)
    return geometry.rows(scored).report(points[scored])
