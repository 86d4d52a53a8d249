"""The jit-compiled train and eval steps, data-parallel over a mesh.

Both steps are plain `jax.jit` functions of (state pytree, batch): the batch arrives sharded along `data`,
the state replicated, and XLA inserts the gradient all-reduce (and global BatchNorm statistics). The train
step donates the old state, so a step needs no second copy of parameters and optimizer moments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train.loss import LOSSES, cross_entropy_loss, localisation_loss, metric_loss
from lumbar_jax.train.state import TrainStatics, eval_model_state, merge_model


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
    key_series, key_centres = model.head.key_layout()
    return logits, localisation_loss(attention, batch["coords"], batch["coords_series"], batch["present"],
                                     key_series, key_centres, model.head.volume_shape, coord_sigma)


def make_train_step(statics: TrainStatics, mesh: Mesh, seed: int, ema_decay: float,
                    coord_loss_weight: float = 0.0, coord_sigma: float = 0.08, loss: str = "metric"):
    """state, batch, step -> (state, metrics). Dropout keys are fold_in(seed, step): resume-exact.

    The loss is the metric loss (`loss='metric'`) or plain unweighted cross-entropy (`loss='cross_entropy'`,
    the earlier systems' objective; the metric loss and its components are then logged, not trained on),
    plus `coord_loss_weight` x the localisation loss of the target queries (needs the 'target_query' head
    and `coords` / `coords_series` in the batch) when the weight is > 0.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss {loss!r} is not one of {LOSSES}")
    base_key = jax.random.key(seed)
    replicated = mesh_lib.replicated(mesh)

    def train_step(state: dict, batch: dict, step: jax.Array, rng_state):
        model = merge_model(statics, rng_state, state["model"], train=True)
        nnx.reseed(model, dropout=jax.random.fold_in(base_key, step))
        optimizer = nnx.merge(statics.opt_def, state["opt"])

        def loss_fn(model):
            if loss == "cross_entropy":
                logits = model(batch["volumes"], batch["present"])
                ce, parts = cross_entropy_loss(logits, batch["labels"])
                metric, metric_parts = jax.lax.stop_gradient(metric_loss(logits, batch["labels"]))
                return ce, {**parts, **metric_parts, "metric_loss": metric}
            if coord_loss_weight <= 0:
                return metric_loss(model(batch["volumes"], batch["present"]), batch["labels"])
            logits, (coord_loss, coord_parts) = _logits_and_localisation(model, batch, coord_sigma)
            metric, parts = metric_loss(logits, batch["labels"])
            coord_parts.pop("annotated")
            return metric + coord_loss_weight * coord_loss, {**parts, "metric_loss": metric, **coord_parts}

        (value, parts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        new_model = nnx.state(model, nnx.Not(nnx.RngState))
        ema = state["ema"]
        if ema is not None:
            params = nnx.state(model, nnx.Param)
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
        metrics = {"loss": value, "grad_norm": optax.tree.norm(grads), **parts}
        return {"model": new_model, "opt": nnx.state(optimizer), "ema": ema}, metrics

    jitted = jax.jit(train_step, donate_argnums=0, out_shardings=(replicated, replicated))
    return lambda state, batch, step: jitted(state, batch, step, statics.rng_state)


def make_eval_step(statics: TrainStatics, mesh: Mesh, coord_sigma: float | None = None):
    """state, batch -> {"probs": float32 [B, 25, 3] (sharded like the batch)}; with `coord_sigma` (target-query
    models) from the same forward pass also "peak_distance_sum", the summed voxel distance between each
    annotated target's attention peak and its annotated point, and "annotated", their number (global sums)."""

    def eval_step(state: dict, batch: dict, rng_state):
        model = merge_model(statics, rng_state, eval_model_state(state), train=False)
        if coord_sigma is None:
            logits = model(batch["volumes"], batch["present"])
            return {"probs": jax.nn.softmax(logits.astype(jnp.float32), axis=-1)}
        logits, (_, parts) = _logits_and_localisation(model, batch, coord_sigma)
        return {"probs": jax.nn.softmax(logits.astype(jnp.float32), axis=-1),
                "peak_distance_sum": parts["peak_distance"] * parts["annotated"], "annotated": parts["annotated"]}

    shardings = {"probs": mesh_lib.batch_sharding(mesh)}
    if coord_sigma is not None:
        shardings |= {"peak_distance_sum": mesh_lib.replicated(mesh), "annotated": mesh_lib.replicated(mesh)}
    jitted = jax.jit(eval_step, out_shardings=shardings)
    return lambda state, batch: jitted(state, batch, statics.rng_state)
