"""Train one fold: steps, periodic held-out evaluation, checkpoints, logging, resume.

Reads top-down like big_vision's train.py: setup, restore-or-init, the loop, the end. Everything a fold
writes lives in `workdir/fold_{k}/` (conventions section 5); a fold whose `result.json` exists is finished
and is not trained again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import jax
import numpy as np
from jax.experimental import multihost_utils
import tqdm
from flax import nnx

from lumbar_jax import labels as L
from lumbar_jax import metrics
from lumbar_jax.data import pipeline
from lumbar_jax.models import registry
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train import step as step_lib
from lumbar_jax.train.logging import MetricLogger
from lumbar_jax.train.state import CheckpointStore, create_train_state

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the message names the fold, the step and the last good checkpoint."""


def fold_dir(workdir: str, fold: int) -> str:
    return os.path.join(workdir, f"fold_{fold}")


def read_fold_result(workdir: str, fold: int) -> dict | None:
    path = os.path.join(fold_dir(workdir, fold), "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def build_state(config, mesh, train_labels: np.ndarray | None = None, load_pretrained: bool = False):
    """A freshly initialised model + optimizer for this config, replicated over the mesh.

    With `train_labels` (int [M, 25]) the logit bias starts at the log class prior of those labels, so the
    first steps learn from the images instead of spending themselves on moving a bias (Adam moves each
    parameter by about the learning rate per step: a bias of log(0.05) would take thousands).
    """
    model = registry.create_model(config.model, nnx.Rngs(params=config.seed, dropout=config.seed + 1),
                                  load_pretrained=load_pretrained)  # model.pretrained_* (fresh start only)
    if train_labels is not None:
        model.head.set_output_bias(np.log(metrics.class_prior_baseline(train_labels, 1)[0]))
    tx = step_lib.make_optimizer(config.train.lr, config.train.steps, config.train.warmup_steps,
                                 config.train.weight_decay, config.train.grad_clip)
    statics, state = create_train_state(model, tx, use_ema=config.train.ema_decay > 0)
    return statics, jax.device_put(state, mesh_lib.replicated(mesh))


def predict(eval_step, state, source, indices, batch_size: int, mesh, study_ids: np.ndarray
            ) -> tuple[np.ndarray, float | None]:
    """(probabilities float [len(indices), 25, 3] for the records at `indices`, in that order; the mean voxel
    distance between attention peak and annotated point when `eval_step` reports it, else None).

    Each process feeds its shard of every global batch; predictions and study ids are gathered from all
    processes and put back in `indices` order by study id (`study_ids[indices]`), padding dropped.
    """
    gathered_probs, gathered_ids = [], []
    distance_sum, annotated = 0.0, None  # None: the eval step reports no attention peaks
    for batch in pipeline.eval_batches(source, indices, batch_size=mesh_lib.process_batch_size(batch_size),
                                       shard_index=jax.process_index(), shard_count=jax.process_count()):
        out = eval_step(state, mesh_lib.shard_batch(_model_inputs(batch), mesh))
        gathered_probs.append(np.asarray(multihost_utils.process_allgather(out["probs"], tiled=True)))
        # int64 study ids travel as int32 pairs: with x64 off, JAX would truncate ids >= 2**31 (Kaggle's go to 4e9)
        ids32 = np.ascontiguousarray(batch["study_id"], dtype=np.int64).view(np.int32).reshape(-1, 2)
        gathered_ids.append(np.ascontiguousarray(
            multihost_utils.process_allgather(ids32, tiled=True), dtype=np.int32).view(np.int64).reshape(-1))
        if "annotated" in out:
            distance_sum += float(out["peak_distance_sum"])
            annotated = (annotated or 0) + int(out["annotated"])
    probs, ids = np.concatenate(gathered_probs), np.concatenate(gathered_ids)
    row_of_study = {int(s): r for r, s in enumerate(ids) if s >= 0}
    peak_distance = None if annotated is None else distance_sum / max(annotated, 1)
    return probs[[row_of_study[int(s)] for s in study_ids[indices]]], peak_distance


def _model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("volumes", "present", "labels", "coords", "coords_series")}


def train_fold(config, workdir: str, fold: int, source, train_idx: np.ndarray, val_idx: np.ndarray,
               all_labels: np.ndarray, study_ids: np.ndarray, mesh) -> dict:
    """Train fold `fold` (resuming if it was interrupted) and return its result (also in result.json).

    Args:
      source: random-access record source (tfds.data_source split).
      train_idx / val_idx: record indices of the fold's training and held-out studies.
      all_labels: int [N, 25] labels of every record (for the class-prior baseline of the training part).
      study_ids: int [N] study id of every record.
    Returns:
      {'fold', 'best_step', 'val': evaluate_predictions of the best checkpoint, 'val_indices', 'val_probs'}.
    """
    # ---------------------------------------------------------------- setup
    tc = config.train
    directory = fold_dir(workdir, fold)
    writer = MetricLogger(directory, enabled=jax.process_index() == 0)
    store = CheckpointStore(os.path.join(directory, "checkpoints"))
    statics, state = build_state(config, mesh, all_labels[train_idx], load_pretrained=store.latest_step() is None)
    train_step = step_lib.make_train_step(statics, mesh, config.seed + 1000 * fold, tc.ema_decay,
                                          tc.coord_loss_weight, tc.coord_sigma, tc.get("loss", "metric"))
    eval_step = step_lib.make_eval_step(statics, mesh,
                                        tc.coord_sigma if registry.uses_query_attention(config.model) else None)
    val_labels, train_labels = all_labels[val_idx], all_labels[train_idx]

    # ---------------------------------------------------------------- restore or start
    start, best = 0, {"score": math.inf, "step": -1}
    if store.latest_step() is not None:
        state, meta = store.restore_latest(state)
        start, best = int(meta["step"]), meta["best"]
        log.info("fold %d: resuming at step %d (best so far %.4f at step %d)", fold, start, best["score"],
                 best["step"])
    batches = pipeline.train_dataset(
        source, train_idx, batch_size=mesh_lib.process_batch_size(tc.batch_size), seed=config.seed + fold,
        augment_config=config.augment, start_step=start, worker_count=config.data.worker_count,
        shard_index=jax.process_index(), shard_count=jax.process_count())

    def evaluate_state(state) -> tuple[np.ndarray, dict]:
        """Held-out probabilities and their report (+ the attention peak distance of target-query models)."""
        probs, peak_distance = predict(eval_step, state, source, val_idx, tc.eval_batch_size, mesh, study_ids)
        result = metrics.evaluate_predictions(val_labels, probs, train_labels)
        if peak_distance is not None:
            result["peak_distance"] = peak_distance
        return probs, result

    def evaluate(step: int) -> float:
        _, result = evaluate_state(state)
        writer.write(step, {f"val/{k}": v for k, v in result.items() if not isinstance(v, dict)}
                     | {f"val/baseline_{k}": v for k, v in result["baseline"].items()}
                     | {"val/weighted_prior_score": result["weighted_prior"]["score"]})
        if result["score"] < best["score"]:
            best.update(score=result["score"], step=step)
            store.save_best(step, state, {"step": step, "best": best}, result["score"])
        return result["score"]

    # ---------------------------------------------------------------- the loop
    bar = tqdm.tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc=f"fold {fold}", unit="step",
                    disable=jax.process_index() != 0, dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in bar:
        batch = mesh_lib.shard_batch(_model_inputs(next(batches)), mesh)
        state, step_metrics = train_step(state, batch, step)
        step_metrics = jax.device_get(step_metrics)
        if not np.isfinite(step_metrics["loss"]):
            raise NonFiniteLossError(
                f"fold {fold}: non-finite loss {step_metrics['loss']} at step {step + 1}; the last good "
                f"checkpoint (step {store.latest_step()}) is intact under {directory}/checkpoints/latest")
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            rate = (done - start) * tc.batch_size / (time.perf_counter() - t0)
            writer.write(done, {f"train/{k}": float(v) for k, v in step_metrics.items()}
                         | {"train/volumes_per_s": rate})
            bar.set_postfix(loss=f"{float(step_metrics['loss']):.3f}", vol_s=f"{rate:.1f}")
        if done % tc.eval_every == 0 or done == tc.steps:
            bar.set_postfix(val=f"{evaluate(done):.4f}")
        if done % tc.checkpoint_every == 0 or done == tc.steps:
            store.save_latest(done, state, {"step": done, "best": best})
    bar.close()

    # ---------------------------------------------------------------- the end: best checkpoint's predictions
    state, _ = store.restore_best(state)
    probs, val_result = evaluate_state(state)
    result = {
        "fold": fold,
        "best_step": best["step"],
        "val": val_result,
        "val_indices": [int(i) for i in val_idx],
        "val_probs": probs.tolist(),
    }
    store.close()
    if jax.process_index() == 0:  # written whole, then renamed: a reader never sees half a result.json
        path = os.path.join(directory, "result.json")
        with open(path + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(path + ".tmp", path)
    if jax.process_count() > 1:  # no process goes on (and reads result.json) before process 0 wrote it
        multihost_utils.sync_global_devices(f"lumbar_jax fold {fold} result.json written")
    writer.close()
    return result
