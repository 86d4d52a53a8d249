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
`train_batches(..., stream, ...)[k]` (`Stream`: batch size, seed, epochs, shard), built from global stream
positions that are fixed by the seed (grain's index shuffle, reshuffled each epoch) and augmented with an RNG
seeded by (seed, stream position). Nothing depends on worker count, thread scheduling or what was read before, so a
resumed run reads `train_batches(...)[start:]` (start = the checkpointed step) and gets exactly the batches an
uninterrupted run would have seen. `train_stream`, `padded_eval_stream` and `iterate` are that machinery for any
per-record example (stage 2's crop batches, `lumbar_jax.data.crop_pipeline`, use them).

Where the work happens: decoding and augmentation run on the host, per record, inside grain's reader threads
(`Reading.read_threads`) and, with `Reading.worker_count > 0`, in grain worker processes (`mp_prefetch`). Worker
processes are started with multiprocessing "spawn", so the training script needs an `if __name__ == "__main__":`
guard; grain reads absl flags when it starts them (if the script has not parsed its flags yet, they are marked
parsed with their defaults). Their batches arrive as grain SharedMemoryArray (an np.ndarray subclass); at
interpreter exit grain may print "leaked shared_memory" / "'NoneType' object has no attribute 'mmap'" warnings
(grain issue #398, harmless). Records stay uint8 all the way to the device (4x less transfer than float32).

Multi-host: pass `Shard.of_process()` (jax.process_index() of jax.process_count()) and the per-process batch
size. Each global step consumes `batch_size * shard.count` consecutive positions of the global stream;
process p reads the p-th block of `batch_size`, so processes read disjoint records and the concatenation of
their local batches equals the single-process batch of size `batch_size * shard.count`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import flags

from lumbar_jax import labels as labels_lib
from lumbar_jax.data.augment import augment_record
from lumbar_jax.dataset_configs import NATIVE_VOLUMES

_AUGMENT_STREAM = 0x5EED  # separates the augmentation RNG streams from any other use of the same seed
_LABEL_READ_CHUNK = 256


def _to_example(record: dict[str, Any]) -> dict[str, np.ndarray]:
    """Record (docs/conventions.md section 4) -> one batch row (module docstring, without the batch axis)."""
    return {
        "volumes": np.stack([np.asarray(record[name], dtype=np.uint8) for name in labels_lib.SERIES_TYPES]),
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


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's share of the data: block `index` of every global batch of `count` blocks (training), or
    every `count`-th index from `index` on (evaluation). Module docstring, multi-host."""

    index: int = 0  # this process: jax.process_index()
    count: int = 1  # processes sharing the data: jax.process_count()

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} not in [0, count={self.count})")

    @classmethod
    def of_process(cls) -> Shard:
        """The shard of this JAX process (jax.process_index() of jax.process_count())."""
        import jax  # only here: the records and grain workers need no JAX

        return cls(jax.process_index(), jax.process_count())


@dataclasses.dataclass(frozen=True)
class Stream:
    """Which training batches this process gets: its local batches of the seeded global stream (module
    docstring); batch k is a pure function of these fields and k."""

    batch_size: int  # B: rows of this process's batch (a global batch holds B * shard.count)
    seed: int  # the record order and the augmentation RNG, in [0, 2**32)
    num_epochs: int | None = None  # passes over the indices; None = repeat forever
    shard: Shard = Shard()  # this process's block of every global batch


@dataclasses.dataclass(frozen=True)
class Reading:
    """How batches are read (`iterate`): never what they hold, so results do not depend on it."""

    worker_count: int = 0  # grain worker processes (started with spawn); 0 = read in this process
    read_threads: int = 2  # reader threads per process, each prefetching up to 2 batches


def train_stream(indices: Sequence[int], example: Callable[[int, int], dict[str, np.ndarray]], stream: Stream
                 ) -> grain.MapDataset:
    """The seeded, sharded training stream of `train_batches`, for any per-record example.

    `example(stream position, record index) -> dict of arrays` must be a pure function of its arguments (derive
    any RNG from the position) and picklable (grain workers); element k of the result = local batch of step k.
    """
    indices = np.asarray(indices, dtype=np.int64)
    batch_size, shard = stream.batch_size, stream.shard
    global_batch = batch_size * shard.count
    if len(indices) < global_batch:
        raise ValueError(f"{len(indices)} training records cannot fill one global batch of {global_batch}")
    if not 0 <= stream.seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {stream.seed}")
    positions = grain.MapDataset.range(len(indices)).shuffle(seed=stream.seed).repeat(stream.num_epochs)
    examples = positions.map_with_index(_AtRecord(example, indices))
    blocks = examples.batch(batch_size, drop_remainder=True)  # block j = stream positions [jB, (j+1)B)
    if stream.num_epochs is not None:
        blocks = blocks[: len(examples) // global_batch * shard.count]
    return blocks[shard.index::shard.count]


def train_batches(source: Sequence[Any], indices: Sequence[int], stream: Stream,
                  augment_config: ml_collections.ConfigDict) -> grain.MapDataset:
    """Random-access training batches of this process: element k = local batch of training step k.

    The global stream visits every record of `indices` once per epoch in a seeded order (a different order
    each epoch) and runs on across epoch boundaries (a batch may hold the end of one epoch and the start of
    the next). `stream.num_epochs=None` repeats forever; otherwise the stream ends after `num_epochs` passes and
    the trailing positions that do not fill one global batch are dropped, so every process has the same number
    of steps. `augment_config`: the run config's `augment` section (validated with the run config). Lazy:
    nothing is read until an element is accessed; read batches from step `start` on with
    `iterate(train_batches(...)[start:], reading)` (close that iterator when done if it has workers).
    """
    return train_stream(indices, _TrainExample(source, stream.seed, augment_config), stream)


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
            fill = {"labels": labels_lib.MISSING, "coords": -1, "coords_series": -1, "study_id": -1}
            self._padding = {k: np.full_like(v, fill.get(k, 0)) for k, v in template.items()}
            self._padding["valid"] = np.asarray(False)
        return self._padding


def eval_batches(source: Sequence[Any], indices: Sequence[int], *, batch_size: int, shard: Shard = Shard()
                 ) -> grain.MapDataset:
    """Every record of `indices` exactly once, in order, no augmentation, in fixed-shape batches (read them
    with `iterate`).

    The last batch is padded up to `batch_size` (so jit sees one shape); padding rows have `valid` False,
    labels -1, coords/coords_series -1, present False, study_id -1 and zero volumes. With `shard.count > 1`,
    process p gets `indices[p::count]` and every process has the same number of batches (padding as needed),
    so collective ops stay in step; gather predictions with `valid` (or `study_id`).
    """
    return padded_eval_stream(indices, _RecordExample(source), batch_size=batch_size, shard=shard)


def padded_eval_stream(indices: Sequence[int], example: Callable[[int], dict[str, np.ndarray]], *, batch_size: int,
                       shard: Shard = Shard()) -> grain.MapDataset:
    """The padded, sharded evaluation batches of `eval_batches`, for any per-record example.

    `example(record index) -> dict of arrays` (picklable). Rows gain `valid`; padding rows copy the shapes of
    `example(indices[0])` and are 0 everywhere except labels, coords, coords_series and study_id (-1).
    """
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        raise ValueError("eval_batches needs at least one index")
    local = indices[shard.index::shard.count]
    num_batches = math.ceil(math.ceil(len(indices) / shard.count) / batch_size)
    rows = grain.MapDataset.range(num_batches * batch_size).map(_EvalExample(example, local, int(indices[0])))
    return rows.batch(batch_size)


def iterate(batches: grain.MapDataset, reading: Reading = Reading()) -> grain.DatasetIterator:
    """Iterator over `batches` as `reading` says: its `read_threads` threads (per process) prefetch up to 2
    batches each, in `worker_count` grain worker processes or this one. Close it (`.close()`) when done if it
    has workers."""
    read_threads = reading.read_threads
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * max(read_threads, 1))
    dataset = batches.to_iter_dataset(read)
    if reading.worker_count > 0:
        if not flags.FLAGS.is_parsed():  # grain reads its absl flags when it starts workers
            flags.FLAGS.mark_as_parsed()  # (defaults); a later app.run / FLAGS(argv) still parses argv
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=reading.worker_count))
    return iter(dataset)


def read_labels(source: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(study_ids int64 [N], labels int64 [N, 25]) of every record of `source`, in source order.

    For fold assignment. A TFDS data source is re-opened with the volume features (native ones too) left
    undecoded (TFDS SkipDecoding: the zlib-compressed bytes are not inflated), several times faster per record,
    and the gap grows with the volume size. Any other sequence is read record by record.
    """
    if dataclasses.is_dataclass(source) and hasattr(source, "dataset_info"):
        import tensorflow_datasets as tfds  # only needed for a TFDS source

        volumes = [name for name in (*labels_lib.SERIES_TYPES, *NATIVE_VOLUMES) if name in source.dataset_info.features]
        source = dataclasses.replace(source, decoders={name: tfds.decode.SkipDecoding() for name in volumes})
    n = len(source)
    study_ids = np.empty(n, dtype=np.int64)
    labels = np.empty((n, labels_lib.NUM_TARGETS), dtype=np.int64)
    read_many = getattr(source, "__getitems__", None)
    for start in range(0, n, _LABEL_READ_CHUNK):
        keys = list(range(start, min(n, start + _LABEL_READ_CHUNK)))
        records = read_many(keys) if read_many is not None else [source[k] for k in keys]
        for k, record in zip(keys, records):
            study_ids[k] = record["study_id"]
            labels[k] = record["labels"]
    return study_ids, labels
