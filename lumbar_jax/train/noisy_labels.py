"""Training labels that a finished run's confident out-of-fold predictions contradict, dropped from training.

The way of the competition's 2nd-place solution (`../shared/lsdc_solutions.md`): a label whose out-of-fold
probability is below `train.drop_labels_below` (0.2 there: the prediction differs from the label by >= 0.8) is
more likely a mislabel than a hard case, and training on it teaches the model to hedge everywhere. With
`train.drop_labels_from = W` (a finished run on the same dataset) each fold trains with those labels missing
(-1): its training batches read the records through `DroppedLabels`. Held-out studies are never changed, and
every score is still taken against the dataset's labels, all of them. On the embedded synthetic set, whose
held-out labels are as noisy as its training labels, it found the noise but scored worse (README, Results).

The source run's predictions of a study came from a model that never saw that study, but it did see the other
studies, the current fold's held-out ones among them; so the choice of which training labels to drop carries
a little of their labels. It costs a second run (the source run's); the README gives what it measured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from lumbar_jax import labels as labels_lib
from lumbar_jax import rundir
from lumbar_jax.train.config_validation import ConfigError
from lumbar_jax.train.folds import Fold

log = logging.getLogger(__name__)

FIELD = "train.drop_labels_from"


def contradicted(labels: np.ndarray, probs: np.ndarray, below: float) -> np.ndarray:
    """bool [N, 25]: labelled targets (labels int [N, 25], -1 missing) whose probability of their label in
    `probs` float [N, 25, 3] is below `below`; targets without a prediction (NaN) are kept."""
    labelled = labels != labels_lib.MISSING
    p_label = np.take_along_axis(probs, np.where(labelled, labels, 0)[..., None], axis=-1)[..., 0]
    return labelled & (p_label < below)  # NaN < below is False


def read_oof(workdir: str, study_ids: np.ndarray) -> np.ndarray:
    """float [N, 25, 3] the run's out-of-fold probabilities (oof_predictions.csv) of `study_ids` int [N], in that
    order; NaN for a study the run did not predict."""
    path = rundir.oof_path(workdir)
    table = pd.read_csv(path)
    missing = [c for c in ("row_id", *labels_lib.SEVERITY_COLUMNS) if c not in table.columns]
    if missing:
        raise ConfigError(f"config.{FIELD}: {path} has no column {missing[0]!r}: not the oof_predictions.csv of a "
                          "finished run")
    table = table.set_index("row_id")
    row_ids = [labels_lib.row_id(s, t) for s in study_ids for t in labels_lib.TARGETS]
    values = table.reindex(row_ids)[list(labels_lib.SEVERITY_COLUMNS)].to_numpy(np.float64)
    return values.reshape(len(study_ids), labels_lib.NUM_TARGETS, labels_lib.NUM_SEVERITIES)


def check_source_run(config, dataset: dict) -> None:
    """ConfigError naming `train.drop_labels_from` unless that run (validation checked it is finished) trained
    on `dataset` (this run's `data.dataset.dataset_record`: its content hash). Nothing to check when it is ''."""
    source = config.train.drop_labels_from
    if not source:
        return
    recorded = rundir.read_dataset_record(source)
    if recorded is None or recorded["content_hash"] != dataset["content_hash"]:
        raise ConfigError(f"config.{FIELD}: {source} was not trained on this run's dataset {dataset['path']} "
                          f"(content hash {dataset['content_hash'][:16]}); its predictions name other studies")


class DroppedLabels(Sequence):
    """`records` with the labels marked in `dropped` bool [N, 25] set to -1 (missing), lazily, record by record."""

    def __init__(self, records: Sequence[Any], dropped: np.ndarray):
        self.records, self.dropped = records, dropped

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        if not self.dropped[index].any():
            return record
        labels = np.array(record["labels"], copy=True)
        labels[self.dropped[index]] = labels_lib.MISSING
        return {**record, "labels": labels}


def training_records(config, fold: Fold) -> Sequence[Any]:
    """The records `fold` trains on: `fold.source`, with no label that the run `train.drop_labels_from`
    contradicts (`contradicted`, below `train.drop_labels_below`) on its training studies; `fold.source`
    itself when that is ''. The fold's `labels` (what scores and the class prior read) are unchanged."""
    if not config.train.drop_labels_from:
        return fold.source
    dropped = contradicted(fold.labels, read_oof(config.train.drop_labels_from, fold.study_ids),
                           config.train.drop_labels_below)
    dropped[fold.val_idx] = False
    labelled = int((fold.train_labels != labels_lib.MISSING).sum())
    log.info("fold %d: %d of %d training labels dropped (out-of-fold P(label) < %g in %s)", fold.index,
             int(dropped.sum()), labelled, config.train.drop_labels_below, config.train.drop_labels_from)
    return DroppedLabels(fold.source, dropped)
