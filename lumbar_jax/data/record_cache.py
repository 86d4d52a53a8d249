"""A split's records decoded once and kept in memory, when they fit a budget.

Training reads every study of a fold once per epoch (the default's crop classifier about 15 times, its localiser
about 7 times, then the held-out evaluation and the localiser's predictions once more each), and every read of
an ArrayRecord source decodes the record's images again: on the default's r64_native records about 3.5 ms of
one core per study, more than cutting its 25 crops. `cached(source, budget_mb)` decodes each record on its first
read and returns the same record after that, for the whole job (every fold), when the split's decoded size
(estimated from its first record) fits `budget_mb`; otherwise it returns `source` itself.

The cached arrays are read-only: a consumer that wrote into a record would otherwise change what every later
read of it returns (TFDS hands out fresh arrays on every read, so nothing here may rely on writing into one).
Pickled (for grain worker processes) the cache travels empty: each process decodes what it reads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def decoded_bytes(record: dict[str, Any]) -> int:
    """Bytes of a decoded record's arrays."""
    return int(sum(np.asarray(v).nbytes for v in record.values()))


def _read_only(record: dict[str, Any]) -> dict[str, Any]:
    for value in record.values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return record


class DecodedRecords(Sequence):
    """`source` (a random-access split) whose records are decoded on their first read and kept (read-only)."""

    def __init__(self, source: Sequence[dict[str, Any]], first: dict[str, Any] | None = None):
        """`first`: record 0, when the caller has decoded it already."""
        self.source = source
        self._records: list[dict[str, Any] | None] = [None] * len(source)
        if first is not None and self._records:
            self._records[0] = _read_only(first)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._records[index]
        if record is None:
            record = self._records[index] = _read_only(self.source[index])
        return record

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source, "_records": [None] * len(self._records)}


def cached(source: Sequence[dict[str, Any]], budget_mb: float) -> Sequence[dict[str, Any]]:
    """`DecodedRecords(source)` when all of its records, decoded, are estimated to take at most `budget_mb`
    MiB (the first record's size times their number); else `source` itself (also for an empty split or a
    budget of 0)."""
    if budget_mb <= 0 or len(source) == 0:
        return source
    first = source[0]
    estimate_mb = decoded_bytes(first) * len(source) / 2**20
    if estimate_mb > budget_mb:
        log.info("records not kept in memory: %d records take about %.0f MiB decoded, more than "
                 "data.record_cache_mb=%g", len(source), estimate_mb, budget_mb)
        return source
    log.info("records kept in memory once decoded: %d records, about %.0f MiB", len(source), estimate_mb)
    return DecodedRecords(source, first)
