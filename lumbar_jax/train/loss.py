"""The training loss: the competition metric made differentiable and batch-local.

The metric (docs/conventions.md section 2) averages four losses: a 1/2/4-weighted cross-entropy per condition group,
each normalised by that group's summed weights, and a binary any_severe_spinal term. Training on plain
cross-entropy optimises a different objective (the earlier projects learnt the majority class); this loss
is the metric's own formula evaluated on a batch, with missing labels (and padded examples) masked out.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from lumbar_jax import labels as labels_lib
from lumbar_jax.data.dicom_geometry import voxel_extent

_NUM_GROUPS = len(labels_lib.CONDITION_GROUPS)
_SPINAL = labels_lib.group_target_indices("spinal")


def metric_loss(logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None,
                any_severe_weight: float = 1.0, label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Batch estimate of the competition score, differentiable in `logits`.

    With `label_smoothing` = e > 0 each condition row's cross-entropy is taken against (1 - e) x its label plus
    e / 3 on every grade: a row's loss then stops falling once P(label) nears 1 - 2e/3, which bounds how
    confident the model learns to be (a mistake at P(true grade) = 0.001 costs as much as a hundred good rows).
    The any_severe_spinal term is left as the metric defines it.

    Args:
      logits: float [B, 25, 3].
      labels: int [B, 25] severity codes, -1 missing (masked).
      valid: optional bool [B]; False rows (eval padding) are masked entirely.
      any_severe_weight: weight of the any_severe_spinal term (the competition uses 1).
      label_smoothing: e in [0, 1), see above; 0 = the metric's own cross-entropy.
    Returns:
      (scalar loss, dict of the component losses: spinal, foraminal, subarticular, any_severe_spinal).
      A group with no labelled row in the batch contributes 0 and is left out of the mean.
    """
    logits = logits.astype(jnp.float32)
    labelled = labels >= 0
    if valid is not None:
        labelled = labelled & valid[:, None]
    safe = jnp.where(labelled, labels, 0)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]  # [B, 25]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
    weights = jnp.where(labelled, jnp.asarray(labels_lib.SEVERITY_WEIGHTS, jnp.float32)[safe], 0.0)
    group_onehot = jax.nn.one_hot(labels_lib.TARGET_GROUP, _NUM_GROUPS)  # [25, G]
    group_loss_sum = jnp.einsum("bt,tg->g", nll * weights, group_onehot)
    group_weight = jnp.einsum("bt,tg->g", weights, group_onehot)
    group_loss = group_loss_sum / jnp.maximum(group_weight, 1e-9)

    # any_severe_spinal: per study, max severe probability over labelled spinal levels.
    spinal_labelled = labelled[:, _SPINAL]
    severe_log_prob = jnp.where(spinal_labelled, log_probs[:, _SPINAL, 2], -jnp.inf)
    log_p_any = jnp.max(severe_log_prob, axis=1)
    log_p_any = jnp.where(spinal_labelled.any(axis=1), log_p_any, 0.0)
    log_not_any = jnp.log1p(-jnp.minimum(jnp.exp(log_p_any), 1.0 - 1e-7))
    target_any = jnp.any(spinal_labelled & (labels[:, _SPINAL] == 2), axis=1)
    study_weight = jnp.max(weights[:, _SPINAL], axis=1)  # 0 for studies without a labelled spinal row
    any_nll = -jnp.where(target_any, log_p_any, log_not_any)
    any_loss = jnp.sum(any_nll * study_weight) / jnp.maximum(jnp.sum(study_weight), 1e-9)

    components = {name: group_loss[g] for g, name in enumerate(labels_lib.CONDITION_GROUPS)}
    components["any_severe_spinal"] = any_loss
    present = jnp.concatenate([group_weight > 0, jnp.sum(study_weight)[None] > 0]).astype(jnp.float32)
    terms = jnp.concatenate([group_loss, any_loss[None]])
    term_weights = present * jnp.array([1.0] * _NUM_GROUPS + [any_severe_weight])
    loss = jnp.sum(terms * term_weights) / jnp.maximum(jnp.sum(term_weights), 1e-9)
    return loss, components


def localisation_loss(query_attention: jax.Array, batch: Mapping[str, jax.Array], key_layout: tuple, volume_shape,
                      sigma: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Pull each target query's attention toward its annotated point (the coordinate supervision).

    For target t of study b annotated at normalised `coords[b, t]` on series `coords_series[b, t]`, the goal
    distribution over the keys is a Gaussian (std `sigma`, normalised units) around the point over the keys
    of that series and zero elsewhere; the loss is its cross-entropy with the query's attention, averaged over
    the (b, t) that have a coordinate on a present series. Others contribute nothing.

    Args:
      query_attention: float [B, 25, K] attention of each target query over the keys (rows sum to 1).
      batch: its `coords` float [B, 25, 3] normalised (depth, row, col), `coords_series` int [B, 25] (-1 =
        none) and `present` bool [B, S] are read.
      key_layout: (key_series int [K], key_centres float [K, 3]): the head's `key_layout()`.
      volume_shape: [D, H, W], to report distances in voxels.
    Returns:
      (loss, {"localisation": loss, "peak_distance": mean voxel distance between the attention peak over the
      annotated series' keys and the annotated point, over the same (b, t); "annotated": their number}).
    """
    coords, coords_series, present = batch["coords"], batch["coords_series"], batch["present"]
    key_series, key_centres = jnp.asarray(key_layout[0]), jnp.asarray(key_layout[1], jnp.float32)
    series = jnp.clip(coords_series, 0, present.shape[1] - 1)
    annotated = (coords_series >= 0) & jnp.take_along_axis(present, series, axis=1)  # [B, 25]
    on_series = key_series[None, None, :] == coords_series[..., None]  # [B, 25, K]
    sq_dist = jnp.sum((key_centres[None, None] - coords[:, :, None, :]) ** 2, axis=-1)  # [B, 25, K]
    goal = jnp.where(on_series, jnp.exp(-0.5 * sq_dist / sigma**2), 0.0)
    goal = goal / jnp.maximum(goal.sum(-1, keepdims=True), 1e-12)
    ce = -jnp.sum(goal * jnp.log(query_attention.astype(jnp.float32) + 1e-9), axis=-1)  # [B, 25]
    count = jnp.maximum(annotated.sum(), 1)
    loss = jnp.sum(jnp.where(annotated, ce, 0.0)) / count

    peak = jnp.argmax(jnp.where(on_series, query_attention, -1.0), axis=-1)  # [B, 25]
    extent = jnp.asarray(voxel_extent(volume_shape), jnp.float32)
    distance = jnp.linalg.norm((key_centres[peak] - coords) * extent, axis=-1)
    peak_distance = jnp.sum(jnp.where(annotated, distance, 0.0)) / count
    return loss, {"localisation": loss, "peak_distance": peak_distance, "annotated": annotated.sum()}


LOSSES = ("metric", "cross_entropy")  # config train.loss


def cross_entropy_loss(logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None
                       ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Plain, unweighted cross-entropy: the mean over every labelled (study, target) of -log p(label), every
    target and class counting alike (what the earlier systems trained on; `train.loss = 'cross_entropy'`).

    Args: as `metric_loss` (logits float [B, 25, 3]; labels int [B, 25], -1 missing; valid optional bool [B]).
    Returns: (scalar loss, {"cross_entropy": loss}); 0 when the batch holds no label.
    """
    labelled = labels >= 0
    if valid is not None:
        labelled = labelled & valid[:, None]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, jnp.where(labelled, labels, 0)[..., None], axis=-1)[..., 0]
    loss = jnp.sum(jnp.where(labelled, nll, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)
    return loss, {"cross_entropy": loss}
