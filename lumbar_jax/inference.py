"""What every pipeline's restorer needs of a run directory: its config, its checkpoints, its eval batch.

A run directory (docs/conventions.md section 5) holds the resolved `config.json` and, per fold, Orbax checkpoints
(`best`, `latest`). `load_run_config` reads the config back on the current schema and validates it, and `load_run`
also picks its pipeline; `restore_checkpoint` restores one checkpoint onto the shardings of a freshly built
template (a checkpoint written on 4 devices restores on 1: the state is replicated). The pipelines' restorers
(pipelines/one_stage.py, pipelines/two_stage.py) are built on them.
"""

from __future__ import annotations

import json
import math
import os

import ml_collections
from jax.sharding import Mesh

from lumbar_jax import pipelines, rundir
from lumbar_jax.train import config as config_lib
from lumbar_jax.train.state import CheckpointStore


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with (`workdir/config.json`), on the current schema and validated."""
    path = rundir.config_path(workdir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a run directory of "
                                "`python -m lumbar_jax.main`")
    with open(path) as f:
        try:
            config = config_lib.restore_config(json.load(f))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
    config_lib.validate(config, check_paths=False)
    return config


def load_run(workdir: str):
    """(the validated config of the run in `workdir`, its `pipelines.base.Pipeline`): how evaluation, prediction
    and analysis find what restores the run."""
    config = load_run_config(workdir)
    return config, pipelines.get(config.pipeline)


def _open_store(directory: str, what: str) -> CheckpointStore:
    """The CheckpointStore of `directory`; FileNotFoundError naming `what` when the directory does not exist."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} not found: {what} has not been trained")
    return CheckpointStore(directory)


def check_checkpoint(directory: str, checkpoint: str | int, what: str) -> int:
    """The training step of the `checkpoint` ('best', 'latest' or a step) under `directory`, found without
    building a model or reading the weights; the errors of `restore_checkpoint` otherwise. What lets
    evaluate.py and predict.py refuse a wrong run or checkpoint in seconds, before any model is built."""
    store = _open_store(directory, what)
    try:
        return int(store.resolve(checkpoint)[1])
    finally:
        store.close()


def restore_checkpoint(directory: str, template: dict, checkpoint: str | int, what: str) -> tuple[dict, int]:
    """(state shaped and sharded like `template`, its training step) of the `checkpoint` ('best', 'latest' or
    a step) under `directory` (a train.state.CheckpointStore); FileNotFoundError naming `what` (e.g. "fold 0
    of RUN") when the directory does not exist, `CheckpointStore.resolve`'s errors when the checkpoint does not."""
    store = _open_store(directory, what)
    try:
        state, meta = store.restore(template, checkpoint)
    finally:
        store.close()
    return state, int(meta["step"])


def check_run_checkpoints(workdir: str, pipeline, folds: list[int], checkpoint: str | int) -> None:
    """Every checkpoint that restoring `folds` of the run at `checkpoint` reads (`pipeline.checkpoints`)
    exists: `check_checkpoint`'s errors for the first that does not. Builds no model."""
    for fold in folds:
        for directory, which, what in pipeline.checkpoints(workdir, fold, checkpoint):
            check_checkpoint(directory, which, what)


def eval_batch_size(config, mesh: Mesh) -> int:
    """The run's eval batch size rounded up to a multiple of the devices present (any device count works)."""
    return math.ceil(config.train.eval_batch_size / mesh.size) * mesh.size
