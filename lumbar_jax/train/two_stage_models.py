"""The two-stage pipeline's models as training and prediction both use them: losses, eval steps, and the
one `Localise` and one `Classify` that run a model over records.

Stage 1, the localiser (models/localiser.py): r64 volumes -> 25 normalised points, flip-averaged. Stage 2, the
crop classifier (models/crop_classifier.py): crops of the native series at those points -> probabilities.
Training's held-out evaluation (train/two_stage.py) and a restored run's prediction and evaluation
(pipelines/two_stage.py) call the same two objects, so a study is localised and classified one way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from lumbar_jax import labels
from lumbar_jax.data import crop_pipeline, pipeline
from lumbar_jax.data.crops import CropSpec
from lumbar_jax.models.localiser import localiser_loss, predict_points
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train import step as step_lib
from lumbar_jax.train.eval_loop import gather_outputs
from lumbar_jax.train.loss import metric_loss

LOCALISER_INPUTS = ("volumes", "present", "coords", "coords_series")  # what the localiser's train step reads
CROP_INPUTS = ("crops", "crop_present", "labels")  # what the crop classifier's train step reads


def localiser_loss_fn(volume_shape) -> step_lib.LossFn:
    """Stage 1's loss: the localiser's mean distance to the annotated points, in voxels of `volume_shape`."""

    def loss_fn(model, batch):
        loss, parts = localiser_loss(model(batch["volumes"], batch["present"]), batch,
                                     volume_shape=tuple(volume_shape))
        return loss, {"distance_voxels": parts["distance"]}

    return loss_fn


def classifier_loss(label_smoothing: float = 0.0) -> step_lib.LossFn:
    """Stage 2's loss: the metric loss of the crop classifier's logits (`label_smoothing`: `metric_loss`'s)."""

    def loss_fn(model, batch):
        return metric_loss(model(batch["crops"], batch["crop_present"]), batch["labels"],
                           label_smoothing=label_smoothing)

    return loss_fn


def localiser_eval_step(statics, mesh):
    """state, batch (volumes, present) -> {"points": [B, 25, 3]}, with the left/right flip averaged in."""
    return step_lib.make_apply_step(statics, mesh, lambda model, batch: {
        "points": predict_points(model, batch["volumes"], batch["present"], flip_tta=True)})


def classifier_eval_step(statics, mesh):
    """state, batch (crops, crop_present) -> {"probs": [B, 25, 3]}."""
    return step_lib.make_apply_step(statics, mesh, lambda model, batch: {
        "probs": jax.nn.softmax(model(batch["crops"], batch["crop_present"]), axis=-1)})


@dataclasses.dataclass(frozen=True)
class Localise:
    """A localiser state, records -> their 25 points: `eval_step` (`localiser_eval_step`) over global batches of
    `batch_size` on `mesh`, each process feeding its shard."""

    eval_step: Callable
    batch_size: int
    mesh: Any

    def __call__(self, state, records: Sequence[Any], indices: np.ndarray, study_ids: np.ndarray) -> np.ndarray:
        """Normalised points float32 [len(indices), 25, 3] of `records[indices]` (flip TTA); `study_ids` int
        [len(records)], distinct."""
        batches = pipeline.iterate(pipeline.eval_batches(records, indices, shard=pipeline.Shard.of_process(),
                                                         batch_size=mesh_lib.process_batch_size(self.batch_size)))
        out, _ = gather_outputs(self.eval_step, state, batches, self.mesh, ("volumes", "present"),
                                study_ids[indices])
        return out["points"]


def shift_offsets(shift_mm: float) -> list[tuple[float, float, float]]:
    """The crop moves (slices, mm, mm) `Classify` averages over: none, and with `shift_mm` > 0 also +-shift_mm
    along the crop's rows and along its cols (5 crops per target)."""
    if shift_mm <= 0:
        return [(0.0, 0.0, 0.0)]
    return [(0.0, 0.0, 0.0), (0.0, shift_mm, 0.0), (0.0, -shift_mm, 0.0), (0.0, 0.0, shift_mm), (0.0, 0.0, -shift_mm)]


@dataclasses.dataclass(frozen=True)
class Classify:
    """A crop classifier state, records, points -> probabilities: crops of `crop` cut at the points,
    `eval_step` (`classifier_eval_step`) over global batches of `batch_size` on `mesh`; with `shift_mm` > 0 the
    mean over the crops at the point and moved by +-shift_mm along rows and cols (`shift_offsets`,
    `crops.tta_shift_mm`): a placement a millimetre off costs a classifier trained at the localiser's
    sub-millimetre jitter far more than it costs the average of five placements around it."""

    eval_step: Callable
    crop: CropSpec
    batch_size: int
    mesh: Any
    shift_mm: float = 0.0

    def __call__(self, state, records: Sequence[Any], indices: np.ndarray, study_ids: np.ndarray,
                 points: np.ndarray | None) -> np.ndarray:
        """Probabilities float32 [len(indices), 25, 3] of the classifier on crops of `records[indices]` at
        `points` [len(indices), 25, 3] (normalised), or at the annotated points when `points` is None."""
        per_record = None
        if points is not None:
            per_record = np.full((len(records), labels.NUM_TARGETS, 3), np.nan)
            per_record[indices] = points
        probs = []
        for offset in shift_offsets(self.shift_mm):
            batches = pipeline.iterate(crop_pipeline.eval_batches(
                records, indices, self.crop, batch_size=mesh_lib.process_batch_size(self.batch_size),
                points=per_record, offset=offset, shard=pipeline.Shard.of_process()))
            out, _ = gather_outputs(self.eval_step, state, batches, self.mesh, ("crops", "crop_present"),
                                    study_ids[indices])
            probs.append(out["probs"])
        return np.mean(probs, axis=0)
