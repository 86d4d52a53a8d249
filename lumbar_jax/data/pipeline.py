"""grain input pipelines over `rsna_lumbar_spine` records: training batches, evaluation batches, labels.

`source` is any random-access sequence of records (docs/conventions.md section 4), normally the TFDS ArrayRecord
source of one split:

    import tensorflow_datasets as tfds
    import lumbar_jax.data.rsna_lumbar_spine  # registers the builder
    source = tfds.data_source("rsna_lumbar_spine/r64", split="train", data_dir=DATA_DIR, download=False)

`indices` select the records of one fold (positions in `source`, e.g. from `read_labels` + a fold split).

Batches are dicts of numpy arrays, B = batch size of this process:
    volumes        uint8   [B, 3, D, H, W]  series stacked in SERIES_TYPES order (zeros where absent)
    present        bool    [B, 3]
    labels         int32   [B, 25]          -1 = missing
    coords         float32 [B, 25, 3]       normalised (depth, row, col), -1 = absent
    coords_series  int32   [B, 25]          series of each coordinate, -1 = absent
    study_id       int64   [B]
    valid          bool    [B]              eval batches only: False on padding rows
(`series_ids` is dropped: the model does not use it.)

Determinism and resume: the training stream is a pure function of (seed, step). Training batch k is
`train_batches(...)[k]`, built from global stream positions that are fixed by the seed (grain's index
shuffle, reshuffled each epoch) and augmented with an RNG seeded by (seed, stream position). Nothing depends on
worker count, thread scheduling or what was read before, so a resumed run passes `start_step` (the
checkpointed step) and gets exactly the batches an uninterrupted run would have seen.
`train_stream`, `padded_eval_stream` and `iterate` are that machinery for any per-record example (stage 2's
crop batches, `lumbar_jax.data.crop_pipeline`, use them).

Where the work happens: decoding and augmentation run on the host, per record, inside grain's reader threads
(`read_threads`) and, with `worker_count > 0`, in grain worker processes (`mp_prefetch`). Worker processes are
started with multiprocessing "spawn", so the training script needs an `if __name__ == "__main__":` guard;
grain reads absl flags when it starts them (if the script has not parsed its flags yet, they are marked parsed
with their defaults). Their batches arrive as grain SharedMemoryArray (an np.ndarray subclass); at interpreter
exit grain may print "leaked shared_memory" / "'NoneType' object has no attribute 'mmap'" warnings (grain
issue #398, harmless). Records stay uint8 all the way to the device (4x less transfer than float32).

Multi-host: pass `shard_index=jax.process_index()`, `shard_count=jax.process_count()` and the per-process
batch size. Each global step consumes `batch_size * shard_count` consecutive positions of the global stream;
process p reads the p-th block of `batch_size`, so processes read disjoint records and the concatenation of
their local batches equals the single-process batch of size `batch_size * shard_count`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags

from lumbar_jax import labels as L
from lumbar_jax.data.augment import augment_record
from lumbar_jax.dataset_configs import NATIVE_VOLUMES

_AUGMENT_STREAM = 0x5EED  # separates the augmentation RNG streams from any other use of the same seed
_LABEL_READ_CHUNK = 256


def _to_example(record: dict[str, Any]) -> dict[str, np.ndarray]:
    """Record (docs/conventions.md section 4) -> one batch row (module docstring, without the batch axis)."""
    return {
        "volumes": np.stack([np.asarray(record[name], dtype=np.uint8) for name in L.SERIES_TYPES]),
        "present": np.asarray(record["present"], dtype=bool),
        "labels": np.asarray(record["labels"], dtype=np.int32),
        "coords": np.asarray(record["coords"], dtype=np.float32),
        "coords_series": np.asarray(record["coords_series"], dtype=np.int32),
        "study_id": np.asarray(record["study_id"], dtype=np.int64),
    }


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: no field-wise hash over the ndarray
class _TrainExample:
    """(stream position g, record index) -> augmented example; picklable for grain workers."""

    source: Sequence[Any]
    seed: int
    augment: ml_collections.ConfigDict  # the run config's `augment` section

    def __call__(self, position: int, record_index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, _AUGMENT_STREAM, position))
        return _to_example(augment_record(self.source[record_index], rng, self.augment))


@dataclasses.dataclass(frozen=True, eq=False)
class _AtRecord:
    """grain's (stream position, position in `indices`) -> `example(stream position, record index)`."""

    example: Callable[[int, int], dict[str, np.ndarray]]
    indices: np.ndarray

    def __call__(self, position: int, index_in_fold: int) -> dict[str, np.ndarray]:
        return self.example(position, int(self.indices[index_in_fold]))


def train_stream(
    indices: Sequence[int],
    example: Callable[[int, int], dict[str, np.ndarray]],
    *,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.MapDataset:
    """The seeded, sharded training stream of `train_batches`, for any per-record example.

    `example(stream position, record index) -> dict of arrays` must be a pure function of its arguments (derive
    any RNG from the position) and picklable (grain workers); element k of the result = local batch of step k.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
    global_batch = batch_size * shard_count
    if len(indices) < global_batch:
        raise ValueError(f"{len(indices)} training records cannot fill one global batch of {global_batch}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    stream = grain.MapDataset.range(len(indices)).shuffle(seed=seed).repeat(num_epochs)
    examples = stream.map_with_index(_AtRecord(example, indices))
    blocks = examples.batch(batch_size, drop_remainder=True)  # block j = stream positions [jB, (j+1)B)
    if num_epochs is not None:
        blocks = blocks[: len(examples) // global_batch * shard_count]
    return blocks[shard_index::shard_count]


def train_batches(
    source: Sequence[Any],
    indices: Sequence[int],
    *,
    batch_size: int,
    seed: int,
    augment_config: ml_collections.ConfigDict,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.MapDataset:
    """Random-access training batches of this process: element k = local batch of training step k.

    The global stream visits every record of `indices` once per epoch in a seeded order (a different order
    each epoch) and runs on across epoch boundaries (a batch may hold the end of one epoch and the start of
    the next). `num_epochs=None` repeats forever; otherwise the stream ends after `num_epochs` passes and the
    trailing positions that do not fill one global batch are dropped, so every process has the same number
    of steps. `augment_config`: the run config's `augment` section (validated with the run config). Lazy:
    nothing is read until an element is accessed.
    """
    return train_stream(indices, _TrainExample(source, seed, augment_config), batch_size=batch_size, seed=seed,
                        num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count)


def train_dataset(
    source: Sequence[Any],
    indices: Sequence[int],
    *,
    batch_size: int,
    seed: int,
    augment_config: ml_collections.ConfigDict,
    num_epochs: int | None = None,
    start_step: int = 0,
    worker_count: int = 0,
    read_threads: int = 2,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Iterator over training batches from step `start_step` on (= `train_batches(...)[start_step:]`).

    `worker_count` grain worker processes (0 = read and augment in this process), each with `read_threads`
    reader threads prefetching whole batches. Close the returned iterator (`.close()`) when done with it if
    it has workers. See `train_batches` for the stream and the module docstring for resume and sharding.
    """
    batches = train_batches(source, indices, batch_size=batch_size, seed=seed, augment_config=augment_config,
                            num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count)
    return iterate(batches[start_step:], worker_count=worker_count, read_threads=read_threads)


@dataclasses.dataclass(frozen=True, eq=False)
class _RecordExample:
    """Record index -> its un-augmented example."""

    source: Sequence[Any]

    def __call__(self, record_index: int) -> dict[str, np.ndarray]:
        return _to_example(self.source[record_index])


@dataclasses.dataclass
class _EvalExample:
    """Local position j -> example of record `indices[j]`, or a padding row for j >= len(indices)."""

    example: Callable[[int], dict[str, np.ndarray]]
    indices: np.ndarray
    template_index: int  # a record whose shapes the padding rows copy
    _padding: dict[str, np.ndarray] | None = dataclasses.field(default=None, init=False, repr=False)

    def __call__(self, j: int) -> dict[str, np.ndarray]:
        if j < len(self.indices):
            return {**self.example(int(self.indices[j])), "valid": np.asarray(True)}
        if self._padding is None:
            # Padding says "nothing here" in every field, so even a metric that forgets `valid` sees only
            # missing labels and absent series.
            template = self.example(self.template_index)
            fill = {"labels": L.MISSING, "coords": -1, "coords_series": -1, "study_id": -1}
            self._padding = {k: np.full_like(v, fill.get(k, 0)) for k, v in template.items()}
            self._padding["valid"] = np.asarray(False)
        return self._padding


def eval_batches(
    source: Sequence[Any],
    indices: Sequence[int],
    *,
    batch_size: int,
    worker_count: int = 0,
    read_threads: int = 2,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Every record of `indices` exactly once, in order, no augmentation, in fixed-shape batches.

    The last batch is padded up to `batch_size` (so jit sees one shape); padding rows have `valid` False,
    labels -1, coords/coords_series -1, present False, study_id -1 and zero volumes. With `shard_count > 1`,
    process p gets `indices[p::shard_count]` and every process yields the same number of batches (padding as
    needed), so collective ops stay in step; gather predictions with `valid` (or `study_id`).
    """
    batches = padded_eval_stream(indices, _RecordExample(source), batch_size=batch_size, shard_index=shard_index,
                                 shard_count=shard_count)
    return iterate(batches, worker_count=worker_count, read_threads=read_threads)


def padded_eval_stream(
    indices: Sequence[int],
    example: Callable[[int], dict[str, np.ndarray]],
    *,
    batch_size: int,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.MapDataset:
    """The padded, sharded evaluation batches of `eval_batches`, for any per-record example.

    `example(record index) -> dict of arrays` (picklable). Rows gain `valid`; padding rows copy the shapes of
    `example(indices[0])` and are 0 everywhere except labels, coords, coords_series and study_id (-1).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        raise ValueError("eval_batches needs at least one index")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
    local = indices[shard_index::shard_count]
    num_batches = math.ceil(math.ceil(len(indices) / shard_count) / batch_size)
    rows = grain.MapDataset.range(num_batches * batch_size).map(_EvalExample(example, local, int(indices[0])))
    return rows.batch(batch_size)


def iterate(batches: grain.MapDataset, *, worker_count: int, read_threads: int) -> grain.DatasetIterator:
    """Iterator over `batches` with `read_threads` threads (per process) prefetching up to 2 batches each."""
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * max(read_threads, 1))
    dataset = batches.to_iter_dataset(read)
    if worker_count > 0:
        if not flags.FLAGS.is_parsed():  # grain reads its absl flags when it starts workers
            flags.FLAGS.mark_as_parsed()  # (defaults); a later app.run / FLAGS(argv) still parses argv
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(dataset)


def read_labels(source: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(study_ids int64 [N], labels int64 [N, 25]) of every record of `source`, in source order.

    For fold assignment. A TFDS data source is re-opened with the volume features (native ones too) left
    undecoded (TFDS SkipDecoding: the zlib-compressed bytes are not inflated), several times faster per record,
    and the gap grows with the volume size. Any other sequence is read record by record.
    """
    if dataclasses.is_dataclass(source) and hasattr(source, "dataset_info"):
        import tensorflow_datasets as tfds  # only needed for a TFDS source

        volumes = [name for name in (*L.SERIES_TYPES, *NATIVE_VOLUMES) if name in source.dataset_info.features]
        source = dataclasses.replace(source, decoders={name: tfds.decode.SkipDecoding() for name in volumes})
    n = len(source)
    study_ids = np.empty(n, dtype=np.int64)
    labels = np.empty((n, L.NUM_TARGETS), dtype=np.int64)
    read_many = getattr(source, "__getitems__", None)
    for start in range(0, n, _LABEL_READ_CHUNK):
        keys = list(range(start, min(n, start + _LABEL_READ_CHUNK)))
        records = read_many(keys) if read_many is not None else [source[k] for k in keys]
        for k, record in zip(keys, records):
            study_ids[k] = record["study_id"]
            labels[k] = record["labels"]
    return study_ids, labels
