"""grain pipelines: batch layout, determinism, resume, multi-host sharding, workers, eval padding, label
reading; over an in-memory source and a tiny ArrayRecord dataset built here with a toy TFDS builder."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from lumbar_jax import labels as labels_lib
from lumbar_jax.data import pipeline
from lumbar_jax.data.build import tfds_scratch_tempdir
from lumbar_jax.train.config import SPATIAL_JITTER
from tests.data.test_augment import augment_config, make_record

SHAPE = (4, 8, 8)  # [D, H, W]
NUM_RECORDS = 15
NO_AUGMENT = augment_config(enabled=False)
AUGMENT = augment_config(**SPATIAL_JITTER)  # every op but noise on
NOISY = augment_config(**SPATIAL_JITTER, noise_std=0.02)


def make_records(n=NUM_RECORDS, shape=SHAPE):
    rng = np.random.default_rng(0)
    return [make_record(rng, shape, study_id=1000 + i, present=(True, i % 4 != 1, i % 3 != 2)) for i in range(n)]


@pytest.fixture(scope="module")
def records():
    return make_records()


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def read(source, indices, stream, augment, start=0, reading=pipeline.Reading()):
    """Training batches from step `start` on, read as a training run reads them."""
    return pipeline.iterate(pipeline.train_batches(source, indices, stream, augment)[start:], reading)


def test_train_batch_layout(records):
    batch = pipeline.train_batches(records, np.arange(NUM_RECORDS), pipeline.Stream(4, seed=0), AUGMENT)[0]
    expected = {
        "volumes": (np.uint8, (4, 3, *SHAPE)), "present": (np.bool_, (4, 3)), "labels": (np.int32, (4, 25)),
        "coords": (np.float32, (4, 25, 3)), "coords_series": (np.int32, (4, 25)), "study_id": (np.int64, (4,)),
    }
    assert {k: (v.dtype.type, v.shape) for k, v in batch.items()} == expected
    # Without augmentation a row is its record, series stacked in SERIES_TYPES order.
    row = pipeline.train_batches(records, np.arange(NUM_RECORDS), pipeline.Stream(4, seed=0), NO_AUGMENT)[0]
    for i, study_id in enumerate(row["study_id"]):
        record = records[study_id - 1000]
        for s, name in enumerate(labels_lib.SERIES_TYPES):
            np.testing.assert_array_equal(row["volumes"][i, s], record[name])
        np.testing.assert_array_equal(row["labels"][i], record["labels"])
        np.testing.assert_array_equal(row["coords_series"][i], record["coords_series"])


def test_train_reads_only_the_fold_and_visits_each_record_once_per_epoch(records):
    fold = np.array([0, 2, 3, 5, 7, 8, 9, 11, 12, 14, 4, 6])  # 12 of 15 records
    batches = list(read(records, fold, pipeline.Stream(4, seed=3, num_epochs=2), NO_AUGMENT))
    assert len(batches) == 6
    ids = np.concatenate([b["study_id"] for b in batches]) - 1000
    first, second = ids[:12], ids[12:]
    assert sorted(first) == sorted(fold) and sorted(second) == sorted(fold)
    assert not np.array_equal(first, second)  # reshuffled each epoch
    assert not np.array_equal(first, np.sort(first))


def test_train_is_a_function_of_the_seed(records):
    a = list(read(records, np.arange(NUM_RECORDS), pipeline.Stream(4, seed=5, num_epochs=3), AUGMENT))
    b = list(read(records, np.arange(NUM_RECORDS), pipeline.Stream(4, seed=5, num_epochs=3), AUGMENT,
                  reading=pipeline.Reading(read_threads=0)))
    c = list(read(records, np.arange(NUM_RECORDS), pipeline.Stream(4, seed=6, num_epochs=3), AUGMENT))
    assert len(a) == len(b) == len(c) == 11  # 45 positions // 4, remainder dropped
    for x, y in zip(a, b):
        assert_batches_equal(x, y)
    assert not np.array_equal(a[0]["study_id"], c[0]["study_id"])


def test_the_same_record_is_augmented_differently_in_each_epoch(records):
    batches = list(read(records, np.arange(4), pipeline.Stream(4, seed=0, num_epochs=2), AUGMENT))
    order = [np.argsort(b["study_id"]) for b in batches]
    first, second = (b["volumes"][o] for b, o in zip(batches, order))
    assert not np.array_equal(first, second)


def test_resumed_iterator_equals_the_advanced_one(records):
    running = read(records, np.arange(NUM_RECORDS), pipeline.Stream(4, seed=9), NOISY)
    take(running, 7)  # crosses an epoch boundary (15 records, 4 per step)
    resumed = read(records, np.arange(NUM_RECORDS), pipeline.Stream(4, seed=9), NOISY, start=7)
    for x, y in zip(take(running, 3), take(resumed, 3)):
        assert_batches_equal(x, y)


def test_shards_split_the_global_batch(records):
    single = pipeline.train_batches(records, np.arange(NUM_RECORDS), pipeline.Stream(4, seed=1, num_epochs=3), AUGMENT)
    shards = [pipeline.train_batches(records, np.arange(NUM_RECORDS),
                                     pipeline.Stream(2, seed=1, num_epochs=3, shard=pipeline.Shard(p, 2)), AUGMENT)
              for p in range(2)]
    assert len(single) == len(shards[0]) == len(shards[1]) == 11
    for step in (0, 5, 10):
        parts = [shards[p][step] for p in range(2)]
        assert not set(parts[0]["study_id"]) & set(parts[1]["study_id"])
        for key in single[step]:
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), single[step][key])


def test_worker_processes_do_not_change_the_batches(records):
    expected = take(read(records, np.arange(NUM_RECORDS), pipeline.Stream(3, seed=2), NOISY), 6)
    with_workers = read(records, np.arange(NUM_RECORDS), pipeline.Stream(3, seed=2), NOISY,
                        reading=pipeline.Reading(worker_count=2))
    try:
        got = take(with_workers, 6)
    finally:
        with_workers.close()
    for x, y in zip(expected, got):
        assert_batches_equal({k: np.asarray(v) for k, v in y.items()}, x)


@pytest.mark.parametrize("batch_size", [4, 5])
def test_eval_yields_every_record_once_and_pads_the_last_batch(records, batch_size):
    fold = np.array([13, 1, 4, 9, 0, 7, 2])
    batches = list(pipeline.iterate(pipeline.eval_batches(records, fold, batch_size=batch_size)))
    assert len(batches) == -(-len(fold) // batch_size)
    assert all(b["volumes"].shape == (batch_size, 3, *SHAPE) and b["valid"].dtype == bool for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == len(fold) and np.all(valid[: len(fold)])
    ids = np.concatenate([b["study_id"] for b in batches])
    np.testing.assert_array_equal(ids[valid], fold + 1000)
    labels = np.concatenate([b["labels"] for b in batches])
    np.testing.assert_array_equal(labels[valid], np.stack([records[i]["labels"] for i in fold]))
    padding = {k: np.concatenate([b[k] for b in batches])[~valid] for k in batches[0]}
    assert np.all(padding["labels"] == -1) and np.all(padding["coords_series"] == -1)
    assert np.all(padding["coords"] == -1) and np.all(padding["study_id"] == -1)
    assert not padding["present"].any() and not padding["volumes"].any()


def test_sharded_eval_splits_the_records_and_keeps_processes_in_step(records):
    fold = np.arange(11)
    shards = [list(pipeline.eval_batches(records, fold, batch_size=2, shard=pipeline.Shard(p, 3))) for p in range(3)]
    assert [len(s) for s in shards] == [2, 2, 2]  # 4, 4 and 3 records: same batch count everywhere
    seen = np.concatenate([b["study_id"][b["valid"]] for s in shards for b in s]) - 1000
    assert sorted(seen) == list(fold)


def test_read_labels(records):
    study_ids, labels = pipeline.read_labels(records)
    np.testing.assert_array_equal(study_ids, 1000 + np.arange(NUM_RECORDS))
    np.testing.assert_array_equal(labels, np.stack([r["labels"] for r in records]))
    assert study_ids.dtype == np.int64 and labels.shape == (NUM_RECORDS, 25)


class ToyLumbarRecords(tfds.core.GeneratorBasedBuilder):
    """The `rsna_lumbar_spine` features at a tiny volume size, filled with `make_records()`."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        volume = lambda: tfds.features.Tensor(shape=SHAPE, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "study_id": np.int64,
            **{name: volume() for name in labels_lib.SERIES_TYPES},
            "present": tfds.features.Tensor(shape=(3,), dtype=np.bool_),
            "series_ids": tfds.features.Tensor(shape=(3,), dtype=np.int64),
            "labels": tfds.features.Tensor(shape=(labels_lib.NUM_TARGETS,), dtype=np.int64),
            "coords": tfds.features.Tensor(shape=(labels_lib.NUM_TARGETS, 3), dtype=np.float32),
            "coords_series": tfds.features.Tensor(shape=(labels_lib.NUM_TARGETS,), dtype=np.int64),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for record in make_records():
            yield int(record["study_id"]), record


@pytest.fixture(scope="module")
def tfds_source(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    with tfds_scratch_tempdir():  # TFDS leaves an empty /tmp/tmp*tfds behind for an unbuilt dataset
        builder = ToyLumbarRecords(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return tfds.data_source("toy_lumbar_records", split="train", data_dir=data_dir, download=False)


def test_pipelines_over_an_array_record_dataset(tfds_source, records):
    assert len(tfds_source) == NUM_RECORDS
    study_ids, labels = pipeline.read_labels(tfds_source)  # the SkipDecoding path
    order = np.argsort(study_ids)  # TFDS stores examples in its own (key-hashed) order
    np.testing.assert_array_equal(study_ids[order], 1000 + np.arange(NUM_RECORDS))
    np.testing.assert_array_equal(labels[order], np.stack([r["labels"] for r in records]))

    fold = order[:10]
    evaluated = list(pipeline.iterate(pipeline.eval_batches(tfds_source, fold, batch_size=4)))
    np.testing.assert_array_equal(np.concatenate([b["study_id"] for b in evaluated])[:10], study_ids[fold])
    in_memory = [records[i] for i in study_ids - 1000]  # the same records in TFDS order
    for x, y in zip(take(read(tfds_source, fold, pipeline.Stream(4, seed=4), NOISY), 3),
                    take(read(in_memory, fold, pipeline.Stream(4, seed=4), NOISY), 3)):
        assert_batches_equal(x, y)
