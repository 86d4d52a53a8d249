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

Every name of that layout that more than one module needs is here, so that training, evaluation, prediction
and the analysis agree on it. Plain files only: nothing here imports JAX.
"""

from __future__ import annotations

import json
import os

import numpy as np

CONFIG_FILE = "config.json"
DATASET_FILE = "dataset.json"
OOF_FILE = "oof_predictions.csv"
SUMMARY_FILE = "cv_summary.json"
RESULT_FILE = "result.json"
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


def write_localiser_predictions(path: str, study_ids, points, held_out) -> None:
    """`localiser_predictions.npz`: study_id int64 [N], points float32 [N, 25, 3] (normalised (depth, row, col)
    on each target's series), held_out bool [N] (the studies this fold's localiser never trained on).
    Written to a temporary name and renamed, so that a file that exists is complete."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".partial.npz"
    np.savez(partial, study_id=np.asarray(study_ids, np.int64), points=np.asarray(points, np.float32),
             held_out=np.asarray(held_out, bool))
    os.replace(partial, path)


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
    os.makedirs(workdir, exist_ok=True)
    with open(config_path(workdir), "w") as f:
        f.write(config_json)


def dataset_path(workdir: str) -> str:
    return os.path.join(workdir, DATASET_FILE)


def read_dataset_record(workdir: str) -> dict | None:
    """The run's dataset.json (`data.dataset.dataset_record` of the dataset it trains on), or None."""
    if not os.path.exists(dataset_path(workdir)):
        return None
    with open(dataset_path(workdir)) as f:
        return json.load(f)


def check_dataset_record(workdir: str, record: dict, num_folds: int) -> None:
    """ValueError when a run that has trained folds recorded another dataset (name or content hash) than
    `record`: its folds would mix two datasets. The message names both and what to do."""
    previous = read_dataset_record(workdir)
    if previous is None or not trained_folds(workdir, num_folds):
        return
    if (previous["name"], previous["content_hash"]) != (record["name"], record["content_hash"]):
        raise ValueError(
            f"{workdir} has folds trained on {previous['path']} (content hash {previous['content_hash'][:16]}), "
            f"but this config gives {record['path']} (content hash {record['content_hash'][:16]}): use a new "
            f"workdir, or remove {dataset_path(workdir)} and the fold_* folders to retrain on it")


def write_dataset_record(workdir: str, record: dict) -> None:
    with open(dataset_path(workdir), "w") as f:
        json.dump(record, f, indent=2)


def read_fold_result(workdir: str, fold: int) -> dict | None:
    """Fold `fold`'s result.json, or None while the fold is unfinished."""
    path = result_path(workdir, fold)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_fold_result(workdir: str, fold: int, result: dict) -> None:
    """Write result.json whole, then rename it into place: a reader never sees half of one."""
    path = result_path(workdir, fold)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


def read_summary(workdir: str) -> dict:
    with open(summary_path(workdir)) as f:
        return json.load(f)


def write_summary(workdir: str, summary: dict) -> None:
    with open(summary_path(workdir), "w") as f:
        json.dump(summary, f, indent=2)
