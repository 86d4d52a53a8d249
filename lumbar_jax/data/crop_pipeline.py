"""grain input pipelines for stage 2: batches of the 25 target crops of `*_native` records (`data.crops`).

`source` and `indices` as in `lumbar_jax.data.pipeline`, over a `*_native` dataset (r64_native, r128_native):
records with `{series}_native` volumes and `native_affine` besides the fields of docs/conventions.md section 4.

Batches are dicts of numpy arrays, B = batch size of this process, K = `crop.slices`, P = `crop.pixels`:
    crops          uint8   [B, 25, K, P, P]  per target, the crop of its series (`crops.study_crops`)
    crop_present   bool    [B, 25]           False where the series is absent or the target has no point
    labels         int32   [B, 25]           -1 = missing
    study_id       int64   [B]
    valid          bool    [B]               eval batches only: False on padding rows

Training places the crops at `crops.training_points` (the annotated point on the target's series, else
`fallback_points[record]` when given, else no crop), moved by Gaussian jitter per condition group
(`CropAugment.jitter`, std in (slices, mm, mm), e.g. the localiser's measured error, so training sees the placement
errors that evaluation will), then jitters contrast and brightness per series. Evaluation places them at
`points[record]` (the localiser's predictions for held-out studies) or, without `points`, at the annotated points;
no augmentation. No left/right flip: left crops are already mirrored into right-side crops, so flipping the patient
would give the encoder the very same pixels and only move each crop, with its label, to the other side's token.

Determinism, resume, sharding and workers are those of `lumbar_jax.data.pipeline` (same stream: `train_stream`,
`padded_eval_stream`, `iterate`): training batch k is a pure function of (seed, k), the augmentation RNG is
seeded by (seed, stream position), so `train_batches(...)[start:]` resumes exactly and worker count changes
nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from lumbar_jax import labels
from lumbar_jax.data import augment
from lumbar_jax.data import crops as crops_lib
from lumbar_jax.data import pipeline

_CROP_STREAM = 0xC809  # separates the crop augmentation RNG streams from other uses of the same seed


def _row(record: dict[str, Any], points: np.ndarray, crop: crops_lib.CropSpec, *, jitter: np.ndarray | None = None,
         rng: np.random.Generator | None = None, offset: tuple[float, float, float] | None = None
         ) -> dict[str, np.ndarray]:
    """One batch row (module docstring, without the batch axis) of `record` with crops at `points` [25, 3]
    (`crops.study_crops`: jitter, offset)."""
    crops, crop_present = crops_lib.study_crops(record, points, crop, jitter=jitter, rng=rng, offset=offset)
    return {
        "crops": crops,
        "crop_present": crop_present,
        "labels": np.asarray(record["labels"], dtype=np.int32),
        "study_id": np.asarray(record["study_id"], dtype=np.int64),
    }


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: no field-wise hash over the ndarray
class CropAugment:
    """How training crops are augmented (neutral by default): placement jitter, then contrast and brightness
    jitter per series."""

    jitter: np.ndarray | None = None  # float64 [3 groups, 3] std (slices, mm, mm) of the placement; None = none
    intensity_scale: tuple[float, float] = (1.0, 1.0)  # (low, high) contrast range
    intensity_shift: float = 0.0  # brightness range, a fraction of 255

    def __post_init__(self):
        if not 0 < self.intensity_scale[0] <= self.intensity_scale[1] or self.intensity_shift < 0:
            raise ValueError(f"intensity_scale must be 0 < low <= high and intensity_shift >= 0, got "
                             f"{self.intensity_scale}, {self.intensity_shift}")
        if self.jitter is not None:
            object.__setattr__(self, "jitter", np.asarray(self.jitter, dtype=np.float64))
        object.__setattr__(self, "intensity_scale", tuple(self.intensity_scale))

    @classmethod
    def from_config(cls, augment_config, jitter: np.ndarray | None) -> CropAugment:
        """The intensity ranges of a run config's `augment` section, with placement `jitter` [3, 3] (e.g. the
        localiser's held-out error)."""
        return cls(jitter, tuple(augment_config.intensity_scale), augment_config.intensity_shift)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: no field-wise hash over the ndarrays
class _TrainCropExample:
    """(stream position, record index) -> augmented row; picklable for grain workers."""

    source: Sequence[Any]
    seed: int
    crop: crops_lib.CropSpec
    augment: CropAugment
    fallback_points: np.ndarray | None  # [len(source), 25, 3] where targets without an annotated point are cut

    def __call__(self, position: int, record_index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, _CROP_STREAM, position))
        record = self.source[record_index]
        fallback = None if self.fallback_points is None else self.fallback_points[record_index]
        row = _row(record, crops_lib.training_points(record, fallback), self.crop, jitter=self.augment.jitter, rng=rng)
        row["crops"] = augment.jitter_crop_intensity(row["crops"], row["crop_present"], rng,
                                                     self.augment.intensity_scale, self.augment.intensity_shift)
        return row


@dataclasses.dataclass(frozen=True, eq=False)
class _EvalCropExample:
    """Record index -> its row, crops at `points[record]`, or at the annotated points when `points` is None,
    moved by `offset` (slices, mm, mm) when given."""

    source: Sequence[Any]
    crop: crops_lib.CropSpec
    points: np.ndarray | None
    offset: tuple[float, float, float] | None = None

    def __call__(self, record_index: int) -> dict[str, np.ndarray]:
        record = self.source[record_index]
        points = crops_lib.training_points(record) if self.points is None else self.points[record_index]
        return _row(record, points, self.crop, offset=self.offset)


def _per_record_points(points: np.ndarray | None, source: Sequence[Any], what: str) -> np.ndarray | None:
    """`points` as float64 [len(source), 25, 3] (indexed by record index), checked; None stays None."""
    if points is None:
        return None
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (len(source), labels.NUM_TARGETS, 3):
        raise ValueError(f"{what} must be [{len(source)} records, {labels.NUM_TARGETS}, 3], got {points.shape}")
    return points


def train_batches(source: Sequence[Any], indices: Sequence[int], stream: pipeline.Stream, crop: crops_lib.CropSpec, *,
                  augment: CropAugment = CropAugment(), fallback_points: np.ndarray | None = None
                  ) -> grain.MapDataset:
    """Random-access training batches of crops of this process: element k = local batch of training step k.

    The stream of `pipeline.train_batches` (seeded order, reshuffled per epoch, epochs, sharding: `stream`).
    Crops: `crop` (K slices x size_mm squares sampled to P pixels), augmented as `augment` says;
    `fallback_points` [len(source), 25, 3]: where to cut targets without an annotated point (e.g. the
    localiser's predictions), None = leave them absent. Lazy; read from step `start` on with
    `pipeline.iterate(train_batches(...)[start:], reading)`.
    """
    example = _TrainCropExample(source, stream.seed, crop, augment,
                                _per_record_points(fallback_points, source, "fallback_points"))
    return pipeline.train_stream(indices, example, stream)


def eval_batches(source: Sequence[Any], indices: Sequence[int], crop: crops_lib.CropSpec, *, batch_size: int,
                 points: np.ndarray | None = None, offset: tuple[float, float, float] | None = None,
                 shard: pipeline.Shard = pipeline.Shard()) -> grain.MapDataset:
    """Every record of `indices` once, in order, unaugmented, in fixed-shape batches (padding and sharding as
    `pipeline.eval_batches`; padding rows: zero crops, crop_present False, labels -1, study_id -1); read them
    with `pipeline.iterate`.

    `points` float [len(source), 25, 3]: per record (by index in `source`) the normalised point of every
    target on its series, e.g. the localiser's predictions (every finite point is cut, annotated or not);
    None = the annotated points (`crops.training_points`). `offset` (slices, mm, mm): every crop moved by it in
    its series' frame (`crops.study_crops`), for test-time shifts.
    """
    example = _EvalCropExample(source, crop, _per_record_points(points, source, "points"), offset)
    return pipeline.padded_eval_stream(indices, example, batch_size=batch_size, shard=shard)
