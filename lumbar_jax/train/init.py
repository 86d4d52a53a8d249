"""A fresh train state for a config: the model, its optimizer and EMA, replicated over the mesh.

Training starts (or resumes) from it, and restoring a checkpoint (`inference.RunRestorer`) needs it as the
template whose shapes and shardings Orbax restores onto.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from lumbar_jax import metrics
from lumbar_jax.models import registry
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train import step as step_lib
from lumbar_jax.train.state import create_train_state


def build_state(config, mesh, train_labels: np.ndarray | None = None, load_pretrained: bool = False):
    """(statics, state): a freshly initialised model + optimizer for this config, replicated over the mesh.

    With `train_labels` (int [M, 25]) the logit bias starts at the log class prior of those labels, so the
    first steps learn from the images instead of spending themselves on moving a bias (Adam moves each
    parameter by about the learning rate per step: a bias of log(0.05) would take thousands).
    `load_pretrained` loads the config's pretrained encoder weights (`model.pretrained_*`): a fresh start only,
    a resumed or restored state overwrites them anyway.
    """
    model = registry.create_model(config.model, nnx.Rngs(params=config.seed, dropout=config.seed + 1),
                                  load_pretrained=load_pretrained)
    if train_labels is not None:
        model.head.set_output_bias(np.log(metrics.class_prior_baseline(train_labels, 1)[0]))
    tx = step_lib.make_optimizer(config.train.lr, config.train.steps, config.train.warmup_steps,
                                 config.train.weight_decay, config.train.grad_clip)
    statics, state = create_train_state(model, tx, use_ema=config.train.ema_decay > 0)
    return statics, jax.device_put(state, mesh_lib.replicated(mesh))
