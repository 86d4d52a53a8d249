"""A seed ensemble: one setting trained with several seeds, and the out-of-fold score of their average.

  python scripts/ensemble.py --config configs/vit_effnet.py --seeds 0 1 2 [--workdir runs/vit_effnet_seeds]
  python scripts/ensemble.py --workdirs W1 W2 ... [--out DIR]

`train_seeds` trains each seed as an ordinary run in `{workdir}/seed_{s}` (`cross_validation.cross_validate`:
resumable, refused on config drift like the main job). `average_runs` averages finished runs' out-of-fold
probabilities per row_id and scores the average as a run is scored (`cross_validation.oof_summary`). Each
member's prediction of a study comes from the member's fold that held that study out, so the average is out of
fold too, although the seeds split the studies into different folds; its per-fold figures use the first
member's folds.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import statistics
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lumbar_jax import calibration, compare, cross_validation, inference, metrics, rundir
from lumbar_jax import labels as labels_lib
from lumbar_jax.train import config as config_lib
from lumbar_jax.train import folds as folds_lib

SEED_LIMIT = 2**32  # config.seed is in [0, 2**32)


def member_workdir(workdir: str, seed: int) -> str:
    """The run directory of seed `seed`'s member: `{workdir}/seed_{seed}`."""
    return os.path.join(workdir, f"seed_{seed}")


def check_seeds(seeds: Sequence[int]) -> None:
    """ConfigError, in one line naming --seeds, unless `seeds` are at least 2 distinct ints in [0, 2**32)."""
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < SEED_LIMIT]
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if bad:
        raise config_lib.ConfigError(f"--seeds: {bad} not integers in [0, 2**32)")
    if repeated:
        raise config_lib.ConfigError(f"--seeds: {repeated} given more than once; each seed trains one member")
    if len(seeds) < 2:
        raise config_lib.ConfigError(f"--seeds: {list(seeds)}; a seed ensemble needs at least 2 seeds")


def train_seeds(config, workdir: str, seeds: Sequence[int]) -> list[str]:
    """Train every member not yet finished: `config` with `seed` = each of `seeds`, in `member_workdir`; returns
    the members' run directories. Before any work: the seeds (`check_seeds`), each member's config and its
    agreement with a member's stored config.json (`cross_validation.check_same_run`)."""
    check_seeds(seeds)
    members = []
    for seed in seeds:
        member = copy.deepcopy(config)
        member.seed = seed
        config_lib.validate(member)
        cross_validation.check_same_run(member, member_workdir(workdir, seed))
        members.append(member)
    for member in members:
        cross_validation.cross_validate(member, member_workdir(workdir, member.seed))
    return [member_workdir(workdir, seed) for seed in seeds]


@dataclasses.dataclass(frozen=True)
class AveragedOof:
    """The average's out-of-fold probabilities, one entry per labelled study of the dataset, in record order."""

    study_ids: np.ndarray  # int [M]
    probs: np.ndarray  # float [M, 25, 3]: the members' mean
    folds: np.ndarray  # int [M]: the first member's held-out fold of each study


def _required(value: dict | None, path: str) -> dict:
    """`value`, read from `path`; FileNotFoundError naming `path` when it was not there (None)."""
    if value is None:
        raise FileNotFoundError(f"{path} not found: not a run directory of python -m lumbar_jax.main")
    return value


def check_same_setting(workdirs: Sequence[str]) -> None:
    """ValueError naming the run and the field when a member's config.json differs from the first member's in
    a field other than `seed` and RESULT_NEUTRAL_FIELDS, or its dataset.json names another dataset; also when
    two members have the same seed (the same model twice)."""
    first = workdirs[0]
    stored = _required(rundir.read_config(first), rundir.config_path(first))
    dataset = _required(rundir.read_dataset_record(first), rundir.dataset_path(first))
    seeds = {stored["seed"]: first}
    for workdir in workdirs[1:]:
        other = _required(rundir.read_config(workdir), rundir.config_path(workdir))
        changes = [c for c in config_lib.changed_fields(stored, config_lib.restore_config(other)) if c[0] != "seed"]
        if changes:
            listed = ", ".join(f"{field} {old!r} -> {new!r}" for field, old, new in changes)
            raise ValueError(f"{rundir.config_path(workdir)} differs from {rundir.config_path(first)} in {listed}; "
                             "the members of a seed ensemble differ only in seed")
        record = _required(rundir.read_dataset_record(workdir), rundir.dataset_path(workdir))
        if rundir.dataset_identity(record) != rundir.dataset_identity(dataset):
            raise ValueError(f"{rundir.dataset_path(workdir)}: another dataset than {rundir.dataset_path(first)} "
                             "(name, content_hash); the members of a seed ensemble train on one dataset")
        if other["seed"] in seeds:
            raise ValueError(f"{rundir.config_path(workdir)}: seed {other['seed']} is also the seed of "
                             f"{seeds[other['seed']]}; each member needs its own seed")
        seeds[other["seed"]] = workdir


def _read_oof(workdir: str) -> pd.DataFrame:
    """A run's oof_predictions.csv: the probability columns, indexed by row_id."""
    return pd.read_csv(rundir.oof_path(workdir), index_col="row_id")[list(labels_lib.SEVERITY_COLUMNS)]


def _averaged_frame(workdirs: Sequence[str]) -> pd.DataFrame:
    """The mean of the members' OOF probabilities per row_id; ValueError naming a run whose rows differ."""
    frames = [_read_oof(w) for w in workdirs]
    rows = frames[0].index
    for workdir, frame in zip(workdirs[1:], frames[1:]):
        if set(frame.index) != set(rows):
            raise ValueError(f"{rundir.oof_path(workdir)}: its row_id values differ from "
                             f"{rundir.oof_path(workdirs[0])}'s; the runs did not predict the same studies")
    return sum(frame.loc[rows] for frame in frames) / len(frames)


def average_runs(workdirs: Sequence[str]) -> tuple[dict, AveragedOof]:
    """(result, its predictions) of the average of finished runs of one setting trained with different seeds.

    result: {'members': [{'workdir' (absolute, so that predict.py finds the members from any directory), 'seed',
    'score', 'oof'}], 'mean_member_score', 'std_member_score' (sample standard deviation), 'ensemble': the
    average's CV summary (`cross_validation.oof_summary`: OOF score, components, accuracy, class-prior baseline
    and best constant out of fold, cross-fitted calibration; per fold of the first member)}. Refused, naming the
    run: fewer than 2 runs, a missing or unfinished run, runs of different settings or datasets, the same seed
    twice, a dataset that changed since the first run trained."""
    if len(set(map(os.path.realpath, workdirs))) < 2:
        raise ValueError(f"--workdirs: {list(workdirs)}; a seed ensemble needs at least 2 different runs")
    rows = compare.compare_runs(list(workdirs))  # RunNotComparable naming every missing or unfinished run
    check_same_setting(workdirs)
    averaged = _averaged_frame(workdirs)

    config = inference.load_run_config(workdirs[0])
    split = folds_lib.load_fold_split(config)
    if rundir.dataset_identity(split.dataset) != rundir.dataset_identity(rundir.read_dataset_record(workdirs[0])):
        raise ValueError(f"{rundir.dataset_path(workdirs[0])}: the dataset {split.dataset['path']} now holds other "
                         "content (content_hash) than the runs trained on; the average cannot be scored on it")
    scored = np.flatnonzero(split.folds >= 0)
    row_ids = [labels_lib.row_id(s, t) for s in split.study_ids[scored] for t in labels_lib.TARGETS]
    missing = set(row_ids) - set(averaged.index)
    if missing:
        raise ValueError(f"{rundir.oof_path(workdirs[0])}: no prediction of {len(missing)} labelled rows of "
                         f"{split.dataset['path']} (e.g. row_id {min(missing)})")
    probs = np.full((len(split.labels), labels_lib.NUM_TARGETS, labels_lib.NUM_SEVERITIES), np.nan)
    probs[scored] = averaged.loc[row_ids].to_numpy().reshape(len(scored), *probs.shape[1:])

    results = []
    for k in range(config.cv.num_folds):
        fold = split.fold(k)
        results.append({"fold": k, "best_step": None, "val_indices": fold.val_idx, "val_probs": probs[fold.val_idx],
                        "val": metrics.evaluate_predictions(fold.val_labels, probs[fold.val_idx], fold.train_labels)})
    summary, _ = cross_validation.oof_summary(split, results)
    scores = [row["score"] for row in rows]
    result = {
        "members": [{"workdir": os.path.abspath(w), "seed": row["seed"], "score": row["score"],
                     "oof": rundir.read_summary(w)["oof"]} for w, row in zip(workdirs, rows)],
        "mean_member_score": statistics.mean(scores),
        "std_member_score": statistics.stdev(scores),
        "ensemble": summary,
    }
    return result, AveragedOof(split.study_ids[scored], probs[scored], split.folds[scored])


def write_ensemble(workdir: str, result: dict, predictions: AveragedOof) -> list[str]:
    """Write `{workdir}/ensemble_summary.json` (`result`) and `{workdir}/ensemble_oof_predictions.csv` (the
    format of a run's oof_predictions.csv), each atomically; returns their paths."""
    summary_path = os.path.join(workdir, rundir.ENSEMBLE_SUMMARY_FILE)
    oof_path = os.path.join(workdir, rundir.ENSEMBLE_OOF_FILE)
    rundir.write_json(summary_path, result)
    cross_validation.write_oof(oof_path, predictions.study_ids, predictions.probs, predictions.folds)
    return [summary_path, oof_path]


def format_ensemble(result: dict) -> str:
    """A table of every member's OOF score, the average's per fold (the first member's folds) and out of fold,
    each beside its class-prior baseline and best constant; then the members' mean and std, the average's worst
    fold, its calibration, and its verdict (`cross_validation.verdict`)."""
    summary = result["ensemble"]
    members = [(f"seed {m['seed']}", m["oof"], "") for m in result["members"]]
    folds = [(f"avg fold {f['fold']}", f["val"], "") for f in summary["folds"]]
    table = cross_validation.score_table(members + folds + [("average", summary["oof"], "")], step_header="")
    lines = [line.rstrip() for line in table]  # no checkpoint step column: the average has none
    lines.append("members: " + ", ".join(f"seed {m['seed']} {m['workdir']}" for m in result["members"]))
    mean, score = result["mean_member_score"], summary["oof"]["score"]
    lines.append(f"members' OOF score: mean {mean:.4f}, std {result['std_member_score']:.4f} over {len(members)} "
                 f"seeds; their average scores {score:.4f}: " +
                 (f"better than the mean member by {mean - score:.4f}" if score < mean else
                  f"NOT better than the mean member (worse by {score - mean:.4f})"))
    worst = compare.worst_fold(summary["folds"])
    lines.append(f"worst fold of the average: fold {worst['worst_fold_index']}, {worst['worst_fold']:.4f}")
    lines.append(calibration.describe(summary["calibration"]))
    lines.append(cross_validation.verdict(summary["oof"]))
    return "\n".join(lines)
