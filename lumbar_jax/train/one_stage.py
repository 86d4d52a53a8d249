"""The one-stage pipeline in one fold: the study model reads the three whole volumes and predicts the 25
targets (models/fused.py, `registry.create_model`). One `loop.Stage`, scored on the fold's held-out studies by
`folds.evaluate_fold`; everything it writes lives in `workdir/fold_{k}/` (docs/conventions.md section 5).
"""

from __future__ import annotations

import os

from lumbar_jax import rundir
from lumbar_jax.data import pipeline
from lumbar_jax.models import registry
from lumbar_jax.train import loop, noisy_labels, seeds
from lumbar_jax.train import step as step_lib
from lumbar_jax.train.eval_loop import model_inputs
from lumbar_jax.train.folds import Fold, evaluate_fold
from lumbar_jax.train.init import study_model_state
from lumbar_jax.train.state import CheckpointStore


def train_fold(config, workdir: str, fold: Fold, mesh) -> dict:
    """Train the one-stage study model of `fold` (resuming if it was interrupted) and return its result (also
    in result.json): {'fold', 'best_step', 'val': `folds.evaluate_fold` report of the best checkpoint,
    'val_indices', 'val_probs'}."""
    tc = config.train
    directory = rundir.fold_dir(workdir, fold.index)
    resuming = CheckpointStore.has_checkpoint(os.path.join(directory, rundir.CHECKPOINTS_DIR))
    statics, state = study_model_state(config, mesh, fold.train_labels, load_pretrained=not resuming)
    train_step = step_lib.make_train_step(statics, mesh, seeds.dropout_seed(config.seed, fold.index), tc.ema_decay,
                                          step_lib.study_loss(tc.loss, tc.coord_loss_weight, tc.coord_sigma,
                                                              tc.label_smoothing))
    eval_step = study_eval_step(config, statics, mesh, with_attention_peaks=True)
    stage = loop.Stage(
        name=f"fold {fold.index}", directory=directory, statics=statics, state=state,
        train_step=train_step, eval_step=eval_step,
        batches=lambda start: map(model_inputs, _train_batches(config, fold, start)),
        evaluate=lambda state: evaluate_fold(eval_step, state, fold, tc.eval_batch_size, mesh),
        scalars=loop.val_scalars, train=tc)
    _, best_step, probs, val = loop.run_stage(stage, mesh)
    result = {"fold": fold.index, "best_step": best_step, "val": val,
              "val_indices": [int(i) for i in fold.val_idx], "val_probs": probs.tolist()}
    loop.write_result(workdir, fold.index, result)
    return result


def study_eval_step(config, statics, mesh, with_attention_peaks: bool):
    """The study model's eval step (`step.make_eval_step`); with `with_attention_peaks`, a target-query model's
    step also reports the attention-peak distance to the annotated points."""
    peaks = with_attention_peaks and registry.uses_query_attention(config.model)
    return step_lib.make_eval_step(statics, mesh, config.train.coord_sigma if peaks else None)


def _train_batches(config, fold: Fold, start: int):
    """This process's shard of the fold's training batches from step `start` on (the same as an uninterrupted
    run would have drawn there)."""
    stream = loop.train_stream(config, fold.index, config.train.batch_size)
    batches = pipeline.train_batches(noisy_labels.training_records(config, fold), fold.train_idx, stream,
                                     config.augment)
    return pipeline.iterate(batches[start:], pipeline.Reading(config.data.worker_count))
