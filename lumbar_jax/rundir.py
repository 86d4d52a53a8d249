"""The layout of a run directory, and the readers and writers of its JSON files.

A run of `python -m lumbar_jax.main` writes everything into one directory (docs/conventions.md section 5):

    config.json              the resolved config, written before any work
    dataset.json             which dataset it trains on: path, name, source folder, content hash
    fold_{k}/checkpoints/    Orbax checkpoints `latest` (for resume) and `best` (`train.state.CheckpointStore`)
    fold_{k}/metrics.jsonl   train/ and val/ scalars; fold_{k}/tensorboard/ the same (`train.logging`)
    fold_{k}/result.json     the fold's final result; a fold with one is finished and not trained again
    fold_{k}/localiser/      two-stage runs: the localiser's checkpoints/, metrics.jsonl and tensorboard/
    fold_{k}/localiser_predictions.npz   two-stage runs: fold k's localiser's points for every study
    oof_predictions.csv      out-of-fold probabilities, 25 rows per study (`cross_validation.write_oof`)
    cv_summary.json          per-fold and out-of-fold scores

A seed ensemble (`lumbar_jax.seed_ensemble`) is a directory of such runs, `seed_{s}/`, one per seed, beside the
average's `ensemble_summary.json` and `ensemble_oof_predictions.csv` (the format of oof_predictions.csv).

Every name of that layout that more than one module needs is here, so that training, evaluation, prediction
and the analysis agree on it. Every file is written whole under a temporary name and then renamed into place
(`write_atomically`): a run killed at any moment leaves each file complete or absent, never half written.
Plain files only: nothing here imports JAX.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
OOF_FILE = "oof_predictions.csv"
SUMMARY_FILE = "cv_summary.json"
RESULT_FILE = "result.json"
ENSEMBLE_SUMMARY_FILE = "ensemble_summary.json"
ENSEMBLE_OOF_FILE = "ensemble_oof_predictions.csv"
CHECKPOINTS_DIR = "checkpoints"
LOCALISER_DIR = "localiser"
LOCALISER_PREDICTIONS_FILE = "localiser_predictions.npz"


def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG_FILE)


def oof_path(workdir: str) -> str:
    return os.path.join(workdir, OOF_FILE)


def summary_path(workdir: str) -> str:
    return os.path.join(workdir, SUMMARY_FILE)


def fold_dir(workdir: str, fold: int) -> str:
    return os.path.join(workdir, f"fold_{fold}")


def checkpoints_dir(workdir: str, fold: int) -> str:
    return os.path.join(fold_dir(workdir, fold), CHECKPOINTS_DIR)


def localiser_dir(workdir: str, fold: int) -> str:
    return os.path.join(fold_dir(workdir, fold), LOCALISER_DIR)


def localiser_predictions_path(workdir: str, fold: int) -> str:
    return os.path.join(fold_dir(workdir, fold), LOCALISER_PREDICTIONS_FILE)


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """`write(temporary_path)` writes the whole file, which is then renamed to `path` (one atomic step on a
    POSIX file system): `path` is either the complete new file or what it was before, whenever the process
    dies. The temporary name keeps `path`'s extension, for writers that add or read one (numpy, pandas)."""
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", exist_ok=True)
    partial = os.path.join(directory, f".partial.{name}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_text(path: str, text: str) -> None:
    """`text` as the whole of `path`, atomically (`write_atomically`)."""
    def write(partial: str) -> None:
        with open(partial, "w") as f:
            f.write(text)
    write_atomically(path, write)


def write_json(path: str, value, indent: int | None = 2) -> None:
    """`value` as JSON in `path`, atomically (`write_atomically`)."""
    write_text(path, json.dumps(value, indent=indent))


def write_localiser_predictions(path: str, study_ids, points, held_out) -> None:
    """`localiser_predictions.npz`: study_id int64 [N], points float32 [N, 25, 3] (normalised (depth, row, col)
    on each target's series), held_out bool [N] (the studies this fold's localiser never trained on)."""
    write_atomically(path, lambda partial: np.savez(
        partial, study_id=np.asarray(study_ids, np.int64), points=np.asarray(points, np.float32),
        held_out=np.asarray(held_out, bool)))


def read_localiser_predictions(path: str) -> dict:
    """The arrays of a `localiser_predictions.npz` (see `write_localiser_predictions`)."""
    with np.load(path) as data:
        return {k: data[k] for k in ("study_id", "points", "held_out")}


def result_path(workdir: str, fold: int) -> str:
    return os.path.join(fold_dir(workdir, fold), RESULT_FILE)


def trained_folds(workdir: str, num_folds: int) -> list[int]:
    """The folds of a run that have a checkpoint directory."""
    return [k for k in range(num_folds) if os.path.isdir(checkpoints_dir(workdir, k))]


def write_config(workdir: str, config_json: str) -> None:
    """Create the run directory and write its config (the JSON text of the resolved config)."""
    write_text(config_path(workdir), config_json)


def read_config(workdir: str) -> dict | None:
    """The run's stored config.json as a dict, or None for a directory without one (a new run)."""
    if not os.path.exists(config_path(workdir)):
        return None
    with open(config_path(workdir)) as f:
        return json.load(f)


def dataset_path(workdir: str) -> str:
    return os.path.join(workdir, DATASET_FILE)


def read_dataset_record(workdir: str) -> dict | None:
    """The run's dataset.json (`data.dataset.dataset_record` of the dataset it trains on), or None."""
    if not os.path.exists(dataset_path(workdir)):
        return None
    with open(dataset_path(workdir)) as f:
        return json.load(f)


def dataset_identity(record: dict) -> tuple[str, str]:
    """(name, content hash) of a dataset.json record: two records with equal ones are the same dataset, wherever
    it lies (its path may change: `data.data_dir` is result-neutral)."""
    return record["name"], record["content_hash"]


def check_dataset_record(workdir: str, record: dict, num_folds: int) -> None:
    """ValueError when a run that has trained folds recorded another dataset (name or content hash) than
    `record`: its folds would mix two datasets. The message names both and what to do."""
    previous = read_dataset_record(workdir)
    if previous is None or not trained_folds(workdir, num_folds):
        return
    if dataset_identity(previous) != dataset_identity(record):
        raise ValueError(
            f"{workdir} has folds trained on {previous['path']} (content hash {previous['content_hash'][:16]}), "
            f"but this config gives {record['path']} (content hash {record['content_hash'][:16]}): use a new "
            f"workdir, or remove {dataset_path(workdir)} and the fold_* folders to retrain on it")


def write_dataset_record(workdir: str, record: dict) -> None:
    write_json(dataset_path(workdir), record)


def read_fold_result(workdir: str, fold: int) -> dict | None:
    """Fold `fold`'s result.json, or None while the fold is unfinished."""
    path = result_path(workdir, fold)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_fold_result(workdir: str, fold: int, result: dict) -> None:
    """Write result.json (atomically: a fold with one is finished)."""
    write_json(result_path(workdir, fold), result, indent=None)


def read_summary(workdir: str) -> dict:
    with open(summary_path(workdir)) as f:
        return json.load(f)


def write_summary(workdir: str, summary: dict) -> None:
    write_json(summary_path(workdir), summary)
