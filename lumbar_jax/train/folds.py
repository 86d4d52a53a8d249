"""A run's dataset split into folds, one fold's part of it, and the score of a train state on that part.

The split is stratified, seeded and the same on every run of a config, so checkpoint evaluation
(`lumbar_jax.evaluate`) recomputes exactly the folds training used. `evaluate_fold` is the one held-out
evaluation: the training loop scores its checkpoints with it, and checkpoint evaluation re-scores them with it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from sklearn.model_selection import StratifiedKFold

from lumbar_jax import labels as labels_lib
from lumbar_jax import metrics
from lumbar_jax.data import dataset, kaggle_csv, pipeline, record_cache
from lumbar_jax.train import config as config_lib
from lumbar_jax.train.eval_loop import Predict

log = logging.getLogger(__name__)


def stratification_key(labels: np.ndarray) -> np.ndarray:
    """A per-study key from its labels: the worst severity in each condition group (27 possible values)."""
    worst = [np.max(labels[:, labels_lib.group_target_indices(g)], axis=1).clip(0) for g in labels_lib.CONDITION_GROUPS]
    return worst[0] * 9 + worst[1] * 3 + worst[2]


def make_folds(labels: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """Fold index int [N] of each study: stratified on `stratification_key`, deterministic in seed.

    Keys too rare to appear in every fold are merged into the most common key, so StratifiedKFold can split.
    """
    if len(labels) < num_folds:
        raise config_lib.ConfigError(f"config.cv.num_folds: {num_folds}, but only {len(labels)} labelled studies")
    key = stratification_key(labels)
    values, counts = np.unique(key, return_counts=True)
    key = np.where(np.isin(key, values[counts < num_folds]), values[np.argmax(counts)], key)
    folds = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(key)), key)):
        folds[held_out] = k
    return folds


@dataclasses.dataclass(frozen=True)
class Fold:
    """One fold: the records it trains on and holds out, and what scoring them needs."""

    index: int
    source: Any  # random-access records of the train split
    study_ids: np.ndarray  # int [N] study id of every record
    labels: np.ndarray  # int [N, 25] of every record, -1 missing
    train_idx: np.ndarray  # record indices of the training studies
    val_idx: np.ndarray  # record indices of the held-out studies

    @property
    def train_labels(self) -> np.ndarray:
        return self.labels[self.train_idx]

    @property
    def val_labels(self) -> np.ndarray:
        return self.labels[self.val_idx]


@dataclasses.dataclass(frozen=True)
class FoldSplit:
    """A run's dataset and its fold assignment: the same on every run of a config (and in evaluation)."""

    source: Any  # random-access records of the train split
    study_ids: np.ndarray  # int [N] study id of every record
    labels: np.ndarray  # int [N, 25], -1 missing
    folds: np.ndarray  # int [N] held-out fold of every record; -1 for studies without any label
    dataset: dict | None = None  # which dataset the records are (`data.dataset.dataset_record`)

    def fold(self, k: int) -> Fold:
        """Fold `k`: trains on the labelled records of the other folds, holds out its own."""
        train_idx = np.flatnonzero((self.folds >= 0) & (self.folds != k))
        return Fold(k, self.source, self.study_ids, self.labels, train_idx, np.flatnonzero(self.folds == k))


def _prepare_dataset(data_config) -> str:
    """`dataset.prepare`; in a multi-process run process 0 goes first (a build or the synthetic set is written
    once) and the others then find it built (every process must see the same data path)."""
    if jax.process_count() == 1:
        return dataset.prepare(data_config)
    data_dir = dataset.prepare(data_config) if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("lumbar_jax dataset prepared")
    return data_dir or dataset.prepare(data_config)


def load_fold_split(config) -> FoldSplit:
    """Resolve (building if needed) the config's dataset, check it fits the model, and split it into folds."""
    data_dir = _prepare_dataset(config.data)
    record = dataset.dataset_record(data_dir, config.data.config)
    log.info("dataset %s (content hash %s)", record["path"], record["content_hash"][:16])
    source = record_cache.cached(dataset.load_split(data_dir, config.data.config, "train"),
                                 config.data.record_cache_mb)
    config_lib.check_dataset(config, source)
    study_ids, labels = pipeline.read_labels(source)
    labelled = np.flatnonzero((labels != labels_lib.MISSING).any(axis=1))
    folds = np.full(len(labels), -1)
    folds[labelled] = make_folds(labels[labelled], config.cv.num_folds, config.seed)
    log.info("%d studies (%d labelled) in %d folds", len(labels), len(labelled), config.cv.num_folds)
    return FoldSplit(source, study_ids, labels, folds, record)


def training_studies_per_fold(folds: np.ndarray, num_folds: int) -> list[int]:
    """How many labelled studies each fold trains on (`folds`: the held-out fold of every study, -1 unlabelled)."""
    return [int(((folds >= 0) & (folds != k)).sum()) for k in range(num_folds)]


def check_batches_fit(batch_fields: dict[str, int], folds: np.ndarray, num_folds: int, source: str) -> None:
    """ConfigError naming the first batch field (`Pipeline.batch_fields`) that a fold's training studies cannot
    fill once: its training would stop at the first step."""
    per_fold = training_studies_per_fold(folds, num_folds)
    for field, size in batch_fields.items():
        if size > min(per_fold):
            raise config_lib.ConfigError(
                f"config.{field}: {size}, but {source} leaves {', '.join(map(str, per_fold))} training studies per "
                f"fold ({num_folds} folds); use a batch of at most {min(per_fold)}, or fewer folds")


def folds_before_the_build(config) -> tuple[np.ndarray, str] | None:
    """(the folds of the labelled studies of `data.manual_dir`'s train.csv, a description of it): the split
    `load_fold_split` makes if every study builds, known before the build (None without a Kaggle folder
    whose train.csv exists). The build can only drop studies, so a batch these folds cannot fill is refused
    before any DICOM is read."""
    path = os.path.join(config.data.manual_dir, kaggle_csv.LABELS_CSV) if config.data.manual_dir else ""
    if not os.path.isfile(path):
        return None
    labels = np.array(list(kaggle_csv.read_labels(config.data.manual_dir).values()))
    labels = labels.reshape(-1, labels_lib.NUM_TARGETS)
    labelled = labels[(labels != labels_lib.MISSING).any(axis=1)]
    return make_folds(labelled, config.cv.num_folds, config.seed), f"{path} ({len(labelled)} labelled studies)"


def evaluate_fold(eval_step, state, fold: Fold, batch_size: int, mesh) -> tuple[np.ndarray, dict]:
    """(held-out probabilities float [len(fold.val_idx), 25, 3], their `metrics.evaluate_predictions` report
    against the class prior of the fold's training part, with 'peak_distance' when `eval_step` reports the
    attention peaks of a target-query model)."""
    probs, peak_distance = Predict(eval_step, batch_size, mesh)(state, fold.source, fold.val_idx, fold.study_ids)
    result = metrics.evaluate_predictions(fold.val_labels, probs, fold.train_labels)
    if peak_distance is not None:
        result["peak_distance"] = peak_distance
    return probs, result
