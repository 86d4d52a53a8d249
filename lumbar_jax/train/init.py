"""Fresh train states: a model, its optimizer and EMA, replicated over the mesh.

`fresh_state` is the one builder; the three models a run trains each have a constructor on it: the
one-stage study model (`study_model_state`), and the two-stage pipeline's localiser (`localiser_state`) and
crop classifier (`classifier_state`). Training starts (or resumes) from them, and restoring a checkpoint needs
one as the template whose shapes and shardings Orbax restores onto.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from lumbar_jax import metrics
from lumbar_jax.data.crops import CropSpec
from lumbar_jax.models import pretrained, registry
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train import step as step_lib
from lumbar_jax.train.seeds import model_rngs
from lumbar_jax.train.state import create_train_state


# XLA:CPU compiles an initialisation program (random draws only, run once) in less than half the time without
# LLVM's optimisations; other backends compile it as they compile everything.
_CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


# (model kind, seed, its config sections as JSON) -> (graph definition, compiled initialisation program)
_INIT_PROGRAMS: dict[tuple, tuple] = {}


def initialised(build: Callable[[], nnx.Module], key: tuple) -> nnx.Module:
    """The module `build()` returns, its parameters drawn by one compiled program, which is kept for `key`
    (what determines `build`: every fold of a run starts from the same initialisation, train/seeds.py).

    Built eagerly, each initializer of each shape would be compiled on its own (over a hundred small XLA
    programs, about 10-15 s per model on a CPU); one program compiles in a few seconds, later folds reuse it,
    and the compilation cache (train/xla_cache.py) keeps it for later runs. `build` must be a pure function of
    `key` (it is traced): pretrained weights and output biases are set on the result, not inside it.
    """
    if key not in _INIT_PROGRAMS:
        graphdef, _ = nnx.split(nnx.eval_shape(build))
        options = _CPU_INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
        _INIT_PROGRAMS[key] = graphdef, jax.jit(lambda: nnx.split(build())[1]).lower().compile(compiler_options=options)
    graphdef, draw = _INIT_PROGRAMS[key]
    return nnx.merge(graphdef, draw())


def _init_key(kind: str, config, *sections: str) -> tuple:
    """The `initialised` key of a model of `kind` built from the run config's `sections` and its seed."""
    return (kind, config.seed, *(config[name].to_json(sort_keys=True) for name in sections))


def fresh_state(model: nnx.Module, schedule, config, mesh, use_ema: bool) -> tuple:
    """(statics, state) of `model` with AdamW on `schedule`'s (lr, steps, warmup_steps) and the run's weight
    decay and gradient clip (`config.train`), an EMA copy when `use_ema`, replicated over `mesh`."""
    tx = step_lib.make_optimizer(schedule.lr, schedule.steps, schedule.warmup_steps, config.train.weight_decay,
                                 config.train.grad_clip)
    statics, state = create_train_state(model, tx, use_ema=use_ema)
    return statics, jax.device_put(state, mesh_lib.replicated(mesh))


def log_prior(train_labels: np.ndarray) -> np.ndarray:
    """float [25, 3]: the log class prior of `train_labels` int [M, 25], where a fresh model's logit bias starts,
    so the first steps learn from the images instead of spending themselves on moving a bias (Adam moves each
    parameter by about the learning rate per step: a bias of log(0.05) would take thousands)."""
    return np.log(metrics.class_prior_baseline(train_labels, 1)[0])


def study_model_state(config, mesh, train_labels: np.ndarray | None = None, load_pretrained: bool = False):
    """(statics, state) of a fresh one-stage study model (`registry.create_model`) for this config.

    With `train_labels` (int [M, 25]) the logit bias starts at their `log_prior`. `load_pretrained` loads the
    config's pretrained encoder weights (`model.pretrained_*`): a fresh start only, a resumed or restored state
    overwrites them anyway.
    """
    model = initialised(lambda: registry.create_model(config.model, model_rngs(config.seed)),
                        _init_key("study_model", config, "model"))
    if load_pretrained:
        pretrained.apply_pretrained(model, config.model)
    if train_labels is not None:
        model.head.set_output_bias(log_prior(train_labels))
    return fresh_state(model, config.train, config, mesh, use_ema=config.train.ema_decay > 0)


def localiser_state(config, mesh) -> tuple:
    """(statics, state) of a fresh localiser (two-stage stage 1) on its own schedule (`config.localiser`), no
    EMA."""
    model = initialised(lambda: registry.create_localiser(config.localiser, config.model,
                                                          tuple(config.model.volume_shape), model_rngs(config.seed)),
                        _init_key("localiser", config, "localiser", "model"))
    return fresh_state(model, config.localiser, config, mesh, use_ema=False)


def classifier_state(config, mesh, train_labels: np.ndarray | None = None, load_pretrained: bool = False
                     ) -> tuple:
    """(statics, state) of a fresh crop classifier (two-stage stage 2) on `config.train`'s schedule (EMA when
    configured); `train_labels` and `load_pretrained` as `study_model_state`."""
    crop_shape = CropSpec.from_config(config.crops).shape
    model = initialised(lambda: registry.create_crop_classifier(config.model, crop_shape, model_rngs(config.seed)),
                        _init_key("crop_classifier", config, "model", "crops"))
    if load_pretrained:
        pretrained.apply_pretrained(model, config.model)
    if train_labels is not None:
        model.set_output_bias(log_prior(train_labels))
    return fresh_state(model, config.train, config, mesh, use_ema=config.train.ema_decay > 0)
