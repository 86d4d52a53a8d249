"""Prediction with a train state, and the trained models of a run directory restored for it.

`predict` runs an eval step over records in global batches, each process feeding its shard, and gathers the
probabilities back in record order: the training loop's held-out evaluation and every restored model use it.

A run directory (docs/conventions.md section 5) holds the resolved `config.json` and, per fold, Orbax checkpoints
(`best`, `latest`). `RunRestorer` turns them back into jit-compiled eval steps on whatever devices are present
(a checkpoint written on 4 devices restores on 1: the state is replicated, and Orbax restores onto the
shardings of a freshly built template); records are predicted with one fold's model or with the ensemble of
folds, optionally averaged with the left/right flip (test-time augmentation). `scripts/evaluate.py` and
`scripts/predict.py` are built on it; two-stage runs (a localiser and a crop classifier per fold) are restored
by `lumbar_jax.two_stage_inference` on the same functions (`gather_outputs`, `restore_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lumbar_jax import labels as L
from lumbar_jax import rundir
from lumbar_jax.data import augment, pipeline
from lumbar_jax.models import registry
from lumbar_jax.train import config as config_lib
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train import step as step_lib
from lumbar_jax.train.init import build_state
from lumbar_jax.train.state import CheckpointStore, TrainStatics, eval_model_state, merge_model


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


@dataclasses.dataclass(frozen=True)
class FoldModel:
    """One fold's restored state and the run's jit-compiled eval step (see `train.step.make_eval_step`)."""

    fold: int
    step: int  # training step of the restored checkpoint
    state: dict
    eval_step: Any
    statics: TrainStatics


class RunRestorer:
    """Restores the folds of one run onto `mesh`. The model is built and the eval step compiled once and
    shared by every fold (same config, same shapes): an ensemble of 5 folds costs one compilation.

    `with_attention_peaks` (target-query models only) makes the eval step also report the held-out
    attention-peak distance to the annotated points.
    """

    def __init__(self, workdir: str, mesh: Mesh, with_attention_peaks: bool = False):
        self.workdir = workdir
        self.config = load_run_config(workdir)
        if self.config.pipeline == "two_stage":
            raise ValueError(f"{workdir} is a two-stage run: restore it with "
                             "lumbar_jax.two_stage_inference.TwoStageRestorer")
        self.statics, self.template = build_state(self.config, mesh)
        tq = with_attention_peaks and registry.uses_query_attention(self.config.model)
        self.eval_step = step_lib.make_eval_step(self.statics, mesh, self.config.train.coord_sigma if tq else None)

    def restore(self, fold: int, checkpoint: str | int = "best") -> FoldModel:
        """Fold `fold`'s checkpoint: 'best', 'latest' or a step."""
        state, step = restore_checkpoint(rundir.checkpoints_dir(self.workdir, fold), self.template, checkpoint,
                                         f"fold {fold} of {self.workdir}")
        return FoldModel(fold, step, state, self.eval_step, self.statics)


def restore_checkpoint(directory: str, template: dict, checkpoint: str | int, what: str) -> tuple[dict, int]:
    """(state shaped and sharded like `template`, its training step) of the `checkpoint` ('best', 'latest' or
    a step) under `directory` (a train.state.CheckpointStore); FileNotFoundError naming `what` (e.g. "fold 0
    of RUN") when the directory does not exist."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} not found: {what} has not been trained")
    store = CheckpointStore(directory)
    try:
        state, meta = store.restore(template, checkpoint)
    finally:
        store.close()
    return state, int(meta["step"])


def eval_batch_size(config, mesh: Mesh) -> int:
    """The run's eval batch size rounded up to a multiple of the devices present (any device count works)."""
    return math.ceil(config.train.eval_batch_size / mesh.size) * mesh.size


MODEL_INPUTS = ("volumes", "present", "labels", "coords", "coords_series")  # what the train and eval steps read


def model_inputs(batch: dict) -> dict:
    """The arrays of a pipeline batch that the train and eval steps take (not `study_id`)."""
    return {k: batch[k] for k in MODEL_INPUTS}


def predict(eval_step, state, records, indices: np.ndarray, batch_size: int, mesh: Mesh, study_ids: np.ndarray
            ) -> tuple[np.ndarray, float | None]:
    """(probabilities float [len(indices), 25, 3] for `records[indices]`, in that order; the mean voxel
    distance between attention peak and annotated point when `eval_step` reports it, else None).

    `records` is any random-access record source (a tfds split, a list of records); `study_ids` int
    [len(records)] the (distinct) study id of every record. Each process feeds its shard of every global
    batch (`gather_outputs`).
    """
    batches = pipeline.eval_batches(records, indices, batch_size=mesh_lib.process_batch_size(batch_size),
                                    shard_index=jax.process_index(), shard_count=jax.process_count())
    out, sums = gather_outputs(eval_step, state, batches, mesh, MODEL_INPUTS, study_ids[indices])
    peak_distance = sums["peak_distance_sum"] / max(sums["annotated"], 1) if "annotated" in sums else None
    return out["probs"], peak_distance


def gather_outputs(eval_step, state, batches, mesh: Mesh, inputs: Sequence[str], study_ids: np.ndarray
                   ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Run `eval_step` (train.step.make_apply_step) over this process's eval `batches` (each with `study_id`,
    -1 on padding) and return (per-example outputs gathered from every process, each [len(study_ids), ...] in
    `study_ids` order, padding dropped; the step's summed scalars, added over the batches). `inputs`: the batch
    keys the step reads."""
    per_example: dict[str, list] = {}
    sums: dict[str, float] = {}
    gathered_ids = []
    for batch in batches:
        out = eval_step(state, mesh_lib.shard_batch({k: batch[k] for k in inputs}, mesh))
        for key, value in out.items():
            if value.ndim == 0:
                sums[key] = sums.get(key, 0.0) + float(value)
            else:
                per_example.setdefault(key, []).append(
                    np.asarray(multihost_utils.process_allgather(value, tiled=True)))
        # int64 study ids travel as int32 pairs: with x64 off, JAX would truncate ids >= 2**31 (Kaggle's go to 4e9)
        ids32 = np.ascontiguousarray(batch["study_id"], dtype=np.int64).view(np.int32).reshape(-1, 2)
        gathered_ids.append(np.ascontiguousarray(
            multihost_utils.process_allgather(ids32, tiled=True), dtype=np.int32).view(np.int64).reshape(-1))
    ids = np.concatenate(gathered_ids)
    row_of_study = {int(s): r for r, s in enumerate(ids) if s >= 0}
    rows = [row_of_study[int(s)] for s in study_ids]
    return {k: np.concatenate(v)[rows] for k, v in per_example.items()}, sums


class FlippedRecords(Sequence):
    """`records` mirrored left <-> right (`augment.flip_left_right`), lazily, record by record."""

    def __init__(self, records: Sequence[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return augment.flip_left_right(self.records[index])


def predict_records(model: FoldModel, records: Sequence[dict], indices: np.ndarray, study_ids: np.ndarray,
                    batch_size: int, mesh: Mesh, tta: bool = False) -> tuple[np.ndarray, float | None]:
    """(probabilities float [len(indices), 25, 3] of `records[indices]`, mean attention-peak distance or None).

    `study_ids` int [len(records)]: the (distinct) study id of every record. With `tta` the probabilities are
    the mean of the prediction and the unflipped prediction of the mirrored study (the peak distance is that of
    the unflipped pass).
    """
    probs, peak_distance = predict(model.eval_step, model.state, records, indices, batch_size, mesh, study_ids)
    if tta:
        flipped, _ = predict(model.eval_step, model.state, FlippedRecords(records), indices, batch_size, mesh,
                             study_ids)
        probs = (probs + augment.unflip_predictions(flipped)) / 2
    return probs, peak_distance


def ensemble_predict(models: Sequence[FoldModel], records: list[dict], batch_size: int, mesh: Mesh,
                     tta: bool = False) -> np.ndarray:
    """Mean over `models` of their probabilities float [N, 25, 3] for every record (in memory), in order."""
    indices, study_ids = np.arange(len(records)), np.array([int(r["study_id"]) for r in records])
    return np.mean([predict_records(m, records, indices, study_ids, batch_size, mesh, tta)[0] for m in models],
                   axis=0)


def query_attention(model: FoldModel, records: list[dict]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Where each target query of a target-query model looked, for a few studies (in memory).

    Returns (probabilities float [N, 25, 3], attention float [N, 25, K] over the head's keys (rows sum to 1),
    layout {'series': int [K], 'centres': float [K, 3] normalised (depth, row, col), 'grids': the token grid
    of each key source, 'volume_shape': [D, H, W]}); keys are series-major within each source, sources in
    order (ViT patches, then EfficientNet cells).
    """
    net = merge_model(model.statics, model.statics.rng_state, eval_model_state(model.state), train=False)
    if not net.head.spatial:
        raise ValueError("attention maps need a model with the 'target_query' fusion head")
    volumes = np.stack([np.stack([r[name] for name in L.SERIES_TYPES]) for r in records])
    present = np.stack([np.asarray(r["present"], bool) for r in records])
    logits, attention = nnx.jit(lambda m, v, p: m.with_query_attention(v, p))(net, volumes, present)
    series, centres = net.head.key_layout()
    layout = {"series": series, "centres": centres, "grids": net.head.grids, "volume_shape": net.head.volume_shape}
    return np.asarray(jax.nn.softmax(logits, axis=-1)), np.asarray(attention), layout
