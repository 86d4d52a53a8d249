"""The training loss: the competition metric made differentiable and batch-local.

The metric (conventions section 2) averages four losses: a 1/2/4-weighted cross-entropy per condition group,
each normalised by that group's summed weights, and a binary any_severe_spinal term. Training on plain
cross-entropy optimises a different objective (the earlier projects learnt the majority class); this loss
is the metric's own formula evaluated on a batch, with missing labels (and padded examples) masked out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lumbar_jax import labels as L

_GROUP_OF_TARGET = np.zeros(L.NUM_TARGETS, dtype=np.int32)
for _g, _group in enumerate(L.CONDITION_GROUPS):
    _GROUP_OF_TARGET[L.group_target_indices(_group)] = _g
_NUM_GROUPS = len(L.CONDITION_GROUPS)
_SPINAL = L.group_target_indices("spinal")


def metric_loss(logits: jax.Array, labels: jax.Array, valid: jax.Array | None = None,
                any_severe_weight: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Batch estimate of the competition score, differentiable in `logits`.

    Args:
      logits: float [B, 25, 3].
      labels: int [B, 25] severity codes, -1 missing (masked).
      valid: optional bool [B]; False rows (eval padding) are masked entirely.
      any_severe_weight: weight of the any_severe_spinal term (the competition uses 1).
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
    weights = jnp.where(labelled, jnp.asarray(L.SEVERITY_WEIGHTS, jnp.float32)[safe], 0.0)
    group_onehot = jax.nn.one_hot(_GROUP_OF_TARGET, _NUM_GROUPS)  # [25, G]
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

    components = {name: group_loss[g] for g, name in enumerate(L.CONDITION_GROUPS)}
    components["any_severe_spinal"] = any_loss
    present = jnp.concatenate([group_weight > 0, jnp.sum(study_weight)[None] > 0]).astype(jnp.float32)
    terms = jnp.concatenate([group_loss, any_loss[None]])
    term_weights = present * jnp.array([1.0] * _NUM_GROUPS + [any_severe_weight])
    loss = jnp.sum(terms * term_weights) / jnp.maximum(jnp.sum(term_weights), 1e-9)
    return loss, components
