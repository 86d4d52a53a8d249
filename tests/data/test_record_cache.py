"""data.record_cache: a split's records decoded once when they fit the budget, read-only, the same records."""

import pickle

import numpy as np
import pytest

from lumbar_jax.data import record_cache


class CountingSource:
    """A random-access split of `n` records of one 1 KiB array each, counting every read (a decode)."""

    def __init__(self, n: int):
        self.reads = [0] * n

    def __len__(self) -> int:
        return len(self.reads)

    def __getitem__(self, index: int) -> dict:
        self.reads[index] += 1
        return {"volume": np.full(1024, index, np.uint8), "study_id": index}


def test_records_are_decoded_once_and_are_the_same_records():
    source = CountingSource(4)
    cached = record_cache.cached(source, budget_mb=1)
    assert isinstance(cached, record_cache.DecodedRecords) and len(cached) == 4
    for _ in range(3):
        for i in (2, 0, 3, 1):
            assert cached[i]["study_id"] == i and np.all(cached[i]["volume"] == i)
    assert source.reads == [1, 1, 1, 1]


def test_cached_records_are_read_only():
    cached = record_cache.cached(CountingSource(2), budget_mb=1)
    with pytest.raises(ValueError, match="read-only"):
        cached[0]["volume"][0] = 7


def test_a_split_over_the_budget_or_a_zero_budget_is_left_as_it_is():
    source = CountingSource(3)  # 3 x (1024 + 8) bytes decoded
    assert record_cache.cached(source, budget_mb=3 / 1024) is source
    assert record_cache.cached(source, budget_mb=0) is source
    assert isinstance(record_cache.cached(source, budget_mb=3.1 / 1024), record_cache.DecodedRecords)


def test_pickled_cache_travels_empty():
    source = CountingSource(2)
    cached = record_cache.cached(source, budget_mb=1)
    cached[0], cached[1]
    copy = pickle.loads(pickle.dumps(cached))
    assert copy._records == [None, None] and copy[1]["study_id"] == 1
