"""The eval loop: an eval step over records in global batches, outputs gathered back in record order.

Every held-out evaluation in training and every prediction of a restored run goes through `gather_outputs`:
each process feeds its shard of every global batch (padding rows carry study id -1), and the per-example
outputs of all processes come back in the order of the study ids asked for. It sits below training
(train/loop.py, train/folds.py and the pipelines import it) and imports nothing above `train.mesh`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lumbar_jax.data import pipeline
from lumbar_jax.train import mesh as mesh_lib

MODEL_INPUTS = ("volumes", "present", "labels", "coords", "coords_series")  # what the study model's steps read


def model_inputs(batch: dict) -> dict:
    """The arrays of a pipeline batch that the study model's train and eval steps take (not `study_id`)."""
    return {k: batch[k] for k in MODEL_INPUTS}


@dataclasses.dataclass(frozen=True)
class Predict:
    """A study model's state, records -> probabilities: `eval_step` (`train.step.make_eval_step`) over global
    batches of `batch_size` on `mesh`, each process feeding its shard."""

    eval_step: Callable  # state, batch of MODEL_INPUTS -> {"probs": [B, 25, 3], optional summed scalars}
    batch_size: int  # global eval batch
    mesh: Mesh  # devices the batches are sharded over

    def __call__(self, state, records: Sequence[Any], indices: np.ndarray, study_ids: np.ndarray
                 ) -> tuple[np.ndarray, float | None]:
        """(probabilities float [len(indices), 25, 3] of the study model for `records[indices]`, in that order;
        the mean voxel distance between attention peak and annotated point when `eval_step` reports it, else
        None).

        `records` is any random-access record source (a tfds split, a list of records); `study_ids` int
        [len(records)] the (distinct) study id of every record.
        """
        batches = pipeline.iterate(pipeline.eval_batches(records, indices, shard=pipeline.Shard.of_process(),
                                                         batch_size=mesh_lib.process_batch_size(self.batch_size)))
        out, sums = gather_outputs(self.eval_step, state, batches, self.mesh, MODEL_INPUTS, study_ids[indices])
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
