"""The jit-compiled train and eval steps, data-parallel over a mesh.

Both steps are plain `jax.jit` functions of (state pytree, batch): the batch arrives sharded along `data`,
the state replicated, and XLA inserts the gradient all-reduce (and global BatchNorm statistics). The train
step donates the old state, so a step needs no second copy of parameters and optimizer moments.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train.loss import LOSSES, cross_entropy_loss, localisation_loss, metric_loss
from lumbar_jax.train.state import TrainStatics, eval_model_state, merge_model

LossFn = Callable[[nnx.Module, dict], tuple[jax.Array, dict]]  # model, batch -> (loss, logged parts)


def learning_rate_schedule(lr: float, steps: int, warmup_steps: int) -> optax.Schedule:
    """Update index -> learning rate: linear warmup from 0 to `lr`, then cosine decay to 0 at `steps`."""
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup_steps, 1), max(steps, warmup_steps + 1))


def make_optimizer(lr: float, steps: int, warmup_steps: int, weight_decay: float, grad_clip: float
                   ) -> optax.GradientTransformation:
    """AdamW on `learning_rate_schedule`, after global-norm gradient clipping."""
    schedule = learning_rate_schedule(lr, steps, warmup_steps)
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(schedule, weight_decay=weight_decay))


def _logits_and_localisation(model, batch: dict, coord_sigma: float):
    """Target-query model on a batch -> (logits, train.loss.localisation_loss of its query attention)."""
    logits, attention = model.with_query_attention(batch["volumes"], batch["present"])
    return logits, localisation_loss(attention, batch, model.head.key_layout(), model.head.volume_shape, coord_sigma)


def study_loss(loss: str = "metric", coord_loss_weight: float = 0.0, coord_sigma: float = 0.08,
               label_smoothing: float = 0.0) -> LossFn:
    """The loss of a study model (volumes [B, 3, D, H, W] -> logits [B, 25, 3]): model, batch -> (loss, parts).

    The metric loss (`loss='metric'`) or plain unweighted cross-entropy (`loss='cross_entropy'`, the earlier
    systems' objective; the metric loss and its components are then logged, not trained on), plus
    `coord_loss_weight` x the localisation loss of the target queries (needs the 'target_query' head and
    `coords` / `coords_series` in the batch) when the weight is > 0. `label_smoothing`: the metric loss's.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} is not one of {LOSSES}")

    def loss_fn(model, batch: dict):
        if loss == "cross_entropy":
            logits = model(batch["volumes"], batch["present"])
            ce, parts = cross_entropy_loss(logits, batch["labels"])
            metric, metric_parts = jax.lax.stop_gradient(metric_loss(logits, batch["labels"]))
            return ce, {**parts, **metric_parts, "metric_loss": metric}
        if coord_loss_weight <= 0:
            return metric_loss(model(batch["volumes"], batch["present"]), batch["labels"],
                               label_smoothing=label_smoothing)
        logits, (coord_loss, coord_parts) = _logits_and_localisation(model, batch, coord_sigma)
        metric, parts = metric_loss(logits, batch["labels"], label_smoothing=label_smoothing)
        coord_parts.pop("annotated")
        return metric + coord_loss_weight * coord_loss, {**parts, "metric_loss": metric, **coord_parts}

    return loss_fn


def make_train_step(statics: TrainStatics, mesh: Mesh, seed: int, ema_decay: float, loss_fn: LossFn | None = None):
    """state, batch, step -> (state, metrics). Dropout keys are fold_in(seed, step): resume-exact. The seed's
    key is an argument of the compiled step, not a constant in it, so steps differing only in seed (the folds)
    compile to one program (train/xla_cache.py).

    `loss_fn(model, batch) -> (scalar loss, dict of logged parts)` is what the step minimises: by default
    `study_loss()` (the metric loss of a study model); the two-stage pipeline passes its localiser and crop
    classifier losses.
    """
    loss_fn = loss_fn or study_loss()
    base_key = jax.random.key(seed)
    replicated = mesh_lib.replicated(mesh)

    def train_step(state: dict, batch: dict, step: jax.Array, rng_state, base_key: jax.Array):
        model = merge_model(statics, rng_state, state["model"], train=True)
        nnx.reseed(model, dropout=jax.random.fold_in(base_key, step))
        optimizer = nnx.merge(statics.opt_def, state["opt"])
        (value, parts), grads = nnx.value_and_grad(lambda m: loss_fn(m, batch), has_aux=True)(model)
        optimizer.update(model, grads)
        new_model = nnx.state(model, nnx.Not(nnx.RngState))
        ema = state["ema"]
        if ema is not None:
            params = nnx.state(model, nnx.Param)
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads), **parts}
        return {"model": new_model, "opt": nnx.state(optimizer), "ema": ema}, metrics

    jitted = jax.jit(train_step, donate_argnums=0, out_shardings=(replicated, replicated))
    return lambda state, batch, step: jitted(state, batch, step, statics.rng_state, base_key)


def make_eval_step(statics: TrainStatics, mesh: Mesh, coord_sigma: float | None = None):
    """state, batch -> {"probs": float32 [B, 25, 3] (sharded like the batch)} of a study model; with
    `coord_sigma` (target-query models) from the same forward pass also "peak_distance_sum", the summed voxel
    distance between each annotated target's attention peak and its annotated point, and "annotated", their
    number (global sums)."""
    if coord_sigma is None:
        return make_apply_step(statics, mesh, lambda model, batch: {
            "probs": jax.nn.softmax(model(batch["volumes"], batch["present"]).astype(jnp.float32), axis=-1)})

    def outputs(model, batch: dict) -> dict:
        logits, (_, parts) = _logits_and_localisation(model, batch, coord_sigma)
        return {"probs": jax.nn.softmax(logits.astype(jnp.float32), axis=-1),
                "peak_distance_sum": parts["peak_distance"] * parts["annotated"], "annotated": parts["annotated"]}

    return make_apply_step(statics, mesh, outputs, summed=("peak_distance_sum", "annotated"))


def make_apply_step(statics: TrainStatics, mesh: Mesh, outputs: Callable[[nnx.Module, dict], dict],
                    summed: tuple[str, ...] = ()):
    """state, batch -> `outputs(model in eval mode, batch)`: a dict of per-example arrays [B, ...], sharded like
    the batch, except the keys in `summed` (global scalars, replicated). The evaluation step of every model."""

    def apply_step(state: dict, batch: dict, rng_state):
        out = outputs(merge_model(statics, rng_state, eval_model_state(state), train=False), batch)
        return {k: v for k, v in out.items() if k not in summed}, {k: out[k] for k in summed}

    jitted = jax.jit(apply_step, out_shardings=(mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)))

    def step(state: dict, batch: dict) -> dict:
        per_example, sums = jitted(state, batch, statics.rng_state)
        return {**per_example, **sums}

    return step
