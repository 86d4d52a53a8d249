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
`fallback_points[record]` when given, else no crop), moved by Gaussian jitter per condition group (`jitter`,
std in (slices, mm, mm), e.g. the localiser's measured error, so training sees the placement errors that
evaluation will), then jitters contrast and brightness per series. Evaluation places them at `points[record]`
(the localiser's predictions for held-out studies) or, without `points`, at the annotated points; no
augmentation. No left/right flip: left crops are already mirrored into right-side crops, so flipping the
patient would give the encoder the very same pixels and only move each crop, with its label, to the other
side's token.

Determinism, resume, sharding and workers are those of `lumbar_jax.data.pipeline` (same stream: `train_stream`,
`padded_eval_stream`, `iterate`): training batch k is a pure function of (seed, k), the augmentation RNG is
seeded by (seed, stream position), so `start_step` resumes exactly and worker count changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from lumbar_jax import labels as L
from lumbar_jax.data import augment
from lumbar_jax.data import crops as C
from lumbar_jax.data import pipeline

_CROP_STREAM = 0xC809  # separates the crop augmentation RNG streams from other uses of the same seed


def _row(record: dict[str, Any], points: np.ndarray, crop: C.CropSpec, *, jitter: np.ndarray | None = None,
         rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """One batch row (module docstring, without the batch axis) of `record` with crops at `points` [25, 3]."""
    crops, crop_present = C.study_crops(record, points, crop, jitter=jitter, rng=rng)
    return {
        "crops": crops,
        "crop_present": crop_present,
        "labels": np.asarray(record["labels"], dtype=np.int32),
        "study_id": np.asarray(record["study_id"], dtype=np.int64),
    }


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: no field-wise hash over the ndarrays
class _TrainCropExample:
    """(stream position, record index) -> augmented row; picklable for grain workers."""

    source: Sequence[Any]
    seed: int
    crop: C.CropSpec
    jitter: np.ndarray | None
    intensity_scale: tuple[float, float]
    intensity_shift: float
    fallback_points: np.ndarray | None

    def __call__(self, position: int, record_index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, _CROP_STREAM, position))
        record = self.source[record_index]
        fallback = None if self.fallback_points is None else self.fallback_points[record_index]
        row = _row(record, C.training_points(record, fallback), self.crop, jitter=self.jitter, rng=rng)
        row["crops"] = augment.jitter_crop_intensity(row["crops"], row["crop_present"], rng, self.intensity_scale,
                                                     self.intensity_shift)
        return row


@dataclasses.dataclass(frozen=True, eq=False)
class _EvalCropExample:
    """Record index -> its row, crops at `points[record]`, or at the annotated points when `points` is None."""

    source: Sequence[Any]
    crop: C.CropSpec
    points: np.ndarray | None

    def __call__(self, record_index: int) -> dict[str, np.ndarray]:
        record = self.source[record_index]
        points = C.training_points(record) if self.points is None else self.points[record_index]
        return _row(record, points, self.crop)


def _per_record_points(points: np.ndarray | None, source: Sequence[Any], what: str) -> np.ndarray | None:
    """`points` as float64 [len(source), 25, 3] (indexed by record index), checked; None stays None."""
    if points is None:
        return None
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (len(source), L.NUM_TARGETS, 3):
        raise ValueError(f"{what} must be [{len(source)} records, {L.NUM_TARGETS}, 3], got {points.shape}")
    return points


def train_batches(
    source: Sequence[Any],
    indices: Sequence[int],
    *,
    batch_size: int,
    seed: int,
    crop: C.CropSpec,
    jitter: np.ndarray | None = None,
    intensity_scale: tuple[float, float] = (1.0, 1.0),
    intensity_shift: float = 0.0,
    fallback_points: np.ndarray | None = None,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.MapDataset:
    """Random-access training batches of crops of this process: element k = local batch of training step k.

    The stream of `pipeline.train_batches` (seeded order, reshuffled per epoch, `num_epochs`, sharding). Crops:
    `crop` (K slices x size_mm squares sampled to P pixels); `jitter` [3, 3] std per condition group
    (slices, mm, mm) or None; `intensity_scale` (low, high) contrast range and `intensity_shift` brightness
    range (fraction of 255), neutral by default; `fallback_points` [len(source), 25, 3]: where to cut targets
    without an annotated point (e.g. the localiser's predictions), None = leave them absent. Lazy.
    """
    if not 0 < intensity_scale[0] <= intensity_scale[1] or intensity_shift < 0:
        raise ValueError(f"intensity_scale must be 0 < low <= high and intensity_shift >= 0, got "
                         f"{intensity_scale}, {intensity_shift}")
    example = _TrainCropExample(
        source, seed, crop,
        None if jitter is None else np.asarray(jitter, dtype=np.float64), tuple(intensity_scale), intensity_shift,
        _per_record_points(fallback_points, source, "fallback_points"))
    return pipeline.train_stream(indices, example, batch_size=batch_size, seed=seed, num_epochs=num_epochs,
                                 shard_index=shard_index, shard_count=shard_count)


def train_dataset(
    source: Sequence[Any],
    indices: Sequence[int],
    *,
    batch_size: int,
    seed: int,
    crop: C.CropSpec,
    jitter: np.ndarray | None = None,
    intensity_scale: tuple[float, float] = (1.0, 1.0),
    intensity_shift: float = 0.0,
    fallback_points: np.ndarray | None = None,
    num_epochs: int | None = None,
    start_step: int = 0,
    worker_count: int = 0,
    read_threads: int = 2,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Iterator over training batches from step `start_step` on (= `train_batches(...)[start_step:]`), read
    as `pipeline.train_dataset` reads (`worker_count` processes, `read_threads` threads; close it when done)."""
    batches = train_batches(source, indices, batch_size=batch_size, seed=seed, crop=crop, jitter=jitter,
                            intensity_scale=intensity_scale, intensity_shift=intensity_shift, fallback_points=fallback_points,
                            num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count)
    return pipeline.iterate(batches[start_step:], worker_count=worker_count, read_threads=read_threads)


def eval_batches(
    source: Sequence[Any],
    indices: Sequence[int],
    *,
    batch_size: int,
    crop: C.CropSpec,
    points: np.ndarray | None = None,
    worker_count: int = 0,
    read_threads: int = 2,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every record of `indices` once, in order, unaugmented, in fixed-shape batches (padding and sharding as
    `pipeline.eval_batches`; padding rows: zero crops, crop_present False, labels -1, study_id -1).

    `points` float [len(source), 25, 3]: per record (by index in `source`) the normalised point of every
    target on its series, e.g. the localiser's predictions (every finite point is cut, annotated or not);
    None = the annotated points (`crops.training_points`).
    """
    example = _EvalCropExample(source, crop, _per_record_points(points, source, "points"))
    batches = pipeline.padded_eval_stream(indices, example, batch_size=batch_size, shard_index=shard_index,
                                          shard_count=shard_count)
    return pipeline.iterate(batches, worker_count=worker_count, read_threads=read_threads)
