"""Stage-2 crop pipelines: batch layout, crops at annotated / given points, augmentation, determinism, resume,
sharding, eval padding; over in-memory `*_native` records (tests.data.test_crops.native_record)."""

import pickle

import numpy as np
import pytest

from lumbar_jax import labels
from lumbar_jax.data import crop_pipeline
from lumbar_jax.data import crops as crops_lib
from lumbar_jax.data import pipeline
from tests.data.test_crops import CROP, JITTER, native_record

NUM_RECORDS = 9
EVERY = np.arange(NUM_RECORDS)  # record indices of the whole set
AUGMENT = crop_pipeline.CropAugment(JITTER, intensity_scale=(0.8, 1.2), intensity_shift=0.1)


@pytest.fixture(scope="module")
def records():
    rng = np.random.default_rng(0)
    return [native_record(rng, present=(True, i % 4 != 1, i % 3 != 2), study_id=1000 + i)
            for i in range(NUM_RECORDS)]


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_train_batch_layout_and_unaugmented_rows(records):
    batch = crop_pipeline.train_batches(records, EVERY, pipeline.Stream(4, seed=0), CROP, augment=AUGMENT)[0]
    expected = {"crops": (np.uint8, (4, 25, 5, 16, 16)), "crop_present": (np.bool_, (4, 25)),
                "labels": (np.int32, (4, 25)), "study_id": (np.int64, (4,))}
    assert {k: (v.dtype.type, v.shape) for k, v in batch.items()} == expected
    plain = crop_pipeline.train_batches(records, EVERY, pipeline.Stream(4, seed=0), CROP)[0]
    np.testing.assert_array_equal(plain["study_id"], batch["study_id"])
    for i, study_id in enumerate(plain["study_id"]):
        record = records[study_id - 1000]
        crops, present = crops_lib.study_crops(record, crops_lib.training_points(record), CROP)
        np.testing.assert_array_equal(plain["crops"][i], crops)
        np.testing.assert_array_equal(plain["crop_present"][i], present)
        np.testing.assert_array_equal(plain["labels"][i], record["labels"])
        # Augmented: the same crops are present, and absent ones stay zero.
        np.testing.assert_array_equal(batch["crop_present"][i], present)
        assert not batch["crops"][i][~present].any()
        assert not np.array_equal(batch["crops"][i], crops)


def test_intensity_jitter_alone_keeps_the_crops_in_place(records):
    # halve the contrast about the mean
    intensity = crop_pipeline.CropAugment(intensity_scale=(0.5, 0.5), intensity_shift=0.0)
    batch = crop_pipeline.train_batches(records, EVERY, pipeline.Stream(3, seed=1), CROP, augment=intensity)[0]
    plain = crop_pipeline.train_batches(records, EVERY, pipeline.Stream(3, seed=1), CROP)[0]
    present = plain["crop_present"]
    original, jittered = plain["crops"][present].astype(float), batch["crops"][present].astype(float)
    assert np.corrcoef(original.ravel(), jittered.ravel())[0, 1] > 0.99
    np.testing.assert_allclose(jittered.std() / original.std(), 0.5, rtol=0.05)


def test_training_uses_fallback_points_only_where_nothing_is_annotated(records):
    fallback = np.full((NUM_RECORDS, 25, 3), 0.5)
    batch = crop_pipeline.train_batches(records, EVERY, pipeline.Stream(4, seed=0), CROP, fallback_points=fallback)[0]
    for i, study_id in enumerate(batch["study_id"]):
        record = records[study_id - 1000]
        crops, _ = crops_lib.study_crops(record, crops_lib.training_points(record, fallback[0]), CROP)
        np.testing.assert_array_equal(batch["crops"][i], crops)
    assert batch["crop_present"][:, 3].any()  # target 3 has no annotated point: cut at the fallback
    with pytest.raises(ValueError, match="fallback_points"):
        crop_pipeline.train_batches(records, np.arange(4), pipeline.Stream(2, seed=0), CROP,
                                    fallback_points=fallback[:4])


def test_train_is_a_function_of_the_seed_and_resumes_exactly(records):
    def read(seed, start=0, reading=pipeline.Reading()):
        stream = pipeline.Stream(2, seed, num_epochs=2)
        batches = crop_pipeline.train_batches(records, EVERY, stream, CROP, augment=AUGMENT)
        return list(pipeline.iterate(batches[start:], reading))

    a, b, c, resumed = read(5), read(5, reading=pipeline.Reading(read_threads=0)), read(6), read(5, start=5)
    assert len(a) == len(b) == 9 and len(resumed) == 4  # 18 positions // 2
    for x, y in zip(a, b):
        assert_batches_equal(x, y)
    for x, y in zip(a[5:], resumed):
        assert_batches_equal(x, y)
    assert not np.array_equal(a[0]["crops"], c[0]["crops"])
    # Each epoch jitters the same record afresh.
    first, second = (np.concatenate([batch["crops"] for batch in half]) for half in (a[:4], a[4:8]))
    ids = np.concatenate([batch["study_id"] for batch in a])
    assert not np.array_equal(first[np.argsort(ids[:8])], second[np.argsort(ids[8:16])])


def test_shards_split_the_global_batch(records):
    single = crop_pipeline.train_batches(records, EVERY, pipeline.Stream(4, 1, num_epochs=2), CROP, augment=AUGMENT)
    shards = [crop_pipeline.train_batches(records, EVERY, pipeline.Stream(2, 1, num_epochs=2,
                                                                          shard=pipeline.Shard(p, 2)),
                                          CROP, augment=AUGMENT) for p in range(2)]
    assert len(single) == len(shards[0]) == len(shards[1]) == 4
    for step in (0, 3):
        parts = [shards[p][step] for p in range(2)]
        for key in single[step]:
            np.testing.assert_array_equal(np.concatenate([part[key] for part in parts]), single[step][key])


def test_examples_survive_pickling_for_grain_workers(records):
    """grain worker processes receive the example callables pickled; they must cut the same crops there."""
    example = crop_pipeline._TrainCropExample(records, 3, CROP, AUGMENT, None)
    assert_batches_equal(pickle.loads(pickle.dumps(example))(7, 2), example(7, 2))
    evaluate = crop_pipeline._EvalCropExample(records, CROP, np.full((NUM_RECORDS, 25, 3), 0.5))
    assert_batches_equal(pickle.loads(pickle.dumps(evaluate))(4), evaluate(4))


@pytest.mark.parametrize("given_points", [False, True])
def test_eval_cuts_at_the_given_points_once_per_record_and_pads(records, given_points):
    fold = np.array([8, 1, 4, 0, 6])
    points = np.random.default_rng(3).uniform(0.2, 0.8, (NUM_RECORDS, 25, 3)) if given_points else None
    batches = list(pipeline.iterate(crop_pipeline.eval_batches(records, fold, CROP, batch_size=3, points=points)))
    assert len(batches) == 2 and all(b["crops"].shape == (3, 25, 5, 16, 16) for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    np.testing.assert_array_equal(valid, [True] * 5 + [False])
    ids = np.concatenate([b["study_id"] for b in batches])
    np.testing.assert_array_equal(ids[:5], fold + 1000)
    crops = np.concatenate([b["crops"] for b in batches])
    present = np.concatenate([b["crop_present"] for b in batches])
    for row, i in enumerate(fold):
        at = points[i] if given_points else crops_lib.training_points(records[i])
        expected, expected_present = crops_lib.study_crops(records[i], at, CROP)
        np.testing.assert_array_equal(crops[row], expected)
        np.testing.assert_array_equal(present[row], expected_present)
    if given_points:  # every target of a present series is cut, annotated or not
        series_present = np.stack([records[i]["present"] for i in fold])[:, labels.TARGET_SERIES]
        np.testing.assert_array_equal(present[:5], series_present)
    padding = {k: np.concatenate([b[k] for b in batches])[~valid] for k in batches[0]}
    assert not padding["crops"].any() and not padding["crop_present"].any()
    assert np.all(padding["labels"] == labels.MISSING) and np.all(padding["study_id"] == -1)


def test_eval_refuses_points_that_do_not_cover_the_source(records):
    with pytest.raises(ValueError, match="points"):
        crop_pipeline.eval_batches(records, [0, 1], CROP, batch_size=2, points=np.zeros((2, 25, 3)))
