"""K-fold cross-validation: the fold loop, out-of-fold predictions and the CV summary.

`cross_validate(config, workdir)` is the whole main job: resolve the dataset, split studies into folds
(`train.folds`: stratified, seeded, identical on every run), train each unfinished fold from a fresh model
with the config's pipeline (`pipelines.get(config.pipeline)`, chosen here once),
then write `oof_predictions.csv` and `cv_summary.json` and print the table (docs/conventions.md section 5).
The run's `dataset.json` records which dataset it trained on; a run with trained folds refuses another one.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
import pandas as pd

from lumbar_jax import labels as labels_lib
from lumbar_jax import calibration, metrics, pipelines, rundir
from lumbar_jax.train import config as config_lib
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train import xla_cache
from lumbar_jax.train import folds as folds_lib
from lumbar_jax.train import noisy_labels
from lumbar_jax.train.folds import FoldSplit, load_fold_split

log = logging.getLogger(__name__)


def write_oof(path: str, study_ids: np.ndarray, probs: np.ndarray, folds: np.ndarray) -> None:
    """oof_predictions.csv: row_id, normal_mild, moderate, severe, fold (25 rows per study), atomically."""
    rows = {
        "row_id": [labels_lib.row_id(s, t) for s in study_ids for t in labels_lib.TARGETS],
        **{c: probs[:, :, k].reshape(-1) for k, c in enumerate(labels_lib.SEVERITY_COLUMNS)},
        "fold": np.repeat(folds, labels_lib.NUM_TARGETS),
    }
    rundir.write_atomically(path, lambda partial: pd.DataFrame(rows).to_csv(partial, index=False, float_format="%.6g"))


def score_table(rows: list[tuple[str, dict, str]], step_header: str = "best step") -> list[str]:
    """Lines of a table: per row (name, evaluate_predictions result, checkpoint step) the competition score
    beside the class-prior baseline and the best constant, accuracy and balanced accuracy."""
    lines = [f"{'':10s}{'score':>9s}{'baseline':>10s}{'best const':>12s}{'accuracy':>10s}{'bal.acc':>9s}"
             f"{step_header:>11s}"]
    for name, r, step in rows:
        lines.append(f"{name:10s}{r['score']:9.4f}{r['baseline']['score']:10.4f}{r['weighted_prior']['score']:12.4f}"
                     f"{r['accuracy']:10.4f}{r['balanced_accuracy']:9.4f}{step!s:>11s}")
    return lines


def format_table(summary: dict) -> str:
    """Per-fold and OOF competition score beside the class-prior baseline, then the OOF components, the
    calibration per group, and last the verdict line (`verdict`)."""
    rows = [(f"fold {f['fold']}", f["val"], f["best_step"]) for f in summary["folds"]]
    lines = score_table(rows + [("OOF", summary["oof"], "")])
    if "peak_distance" in summary["oof"]:
        lines.append(f"attention peak to annotated point (held-out, mean of folds): "
                     f"{summary['oof']['peak_distance']:.2f} voxels")
    if "localiser" in summary:
        loc = summary["localiser"]
        lines.append(f"localiser (held out): median {loc['median_mm']:.2f} mm, p90 {loc['p90_mm']:.2f} mm, "
                     f"correct level {100 * loc['level_accuracy']:.1f} %")
    lines.append("OOF losses: " + "  ".join(
        f"{k} {summary['oof'][k]:.4f} (baseline {summary['oof']['baseline'][k]:.4f})" for k in metrics.LOSS_KEYS))
    lines.append(calibration.describe(summary["calibration"]))
    lines.append(verdict(summary["oof"]))
    return "\n".join(lines)


def verdict(oof: dict) -> str:
    """The last line of the summary: the OOF score against the class prior and the best constant (what a model
    that learnt nothing from the images scores, docs/conventions.md section 2), and whether it beats that."""
    score, prior, constant = oof["score"], oof["baseline"]["score"], oof["weighted_prior"]["score"]
    beats = score < constant
    return (f"verdict: OOF score {score:.4f} (competition log loss, lower is better) against the class prior "
            f"{prior:.4f} and the best constant {constant:.4f}: the model "
            + (f"beats the best constant by {constant - score:.4f}" if beats else
               f"does NOT beat the best constant (worse by {score - constant:.4f}); its predictions carry no "
               "more than the label frequencies"))


def cross_validate(config, workdir: str) -> dict | None:
    """Run the configured folds; returns the CV summary once every fold is done (None for a single fold).

    Every refusal leaves `workdir` as it was (a new one is not created): config.json and dataset.json are
    written only after all of them. Before any work: a bad config, a config that differs from the run's stored
    config.json in a field that changes results (`check_same_run`), a batch the devices cannot divide or the
    folds of the Kaggle folder's train.csv cannot fill. Once the dataset is resolved: a batch its folds cannot
    fill (studies the build dropped), another dataset than the trained folds'."""
    config_lib.validate(config)
    check_same_run(config, workdir)
    mesh_lib.initialize_distributed(**config.distributed)
    mesh = mesh_lib.make_mesh(config.mesh.num_devices)
    mesh_lib.check_batch_size(config.train.batch_size, mesh)
    mesh_lib.check_batch_size(config.train.eval_batch_size, mesh, "train.eval_batch_size")
    pipeline = pipelines.get(config.pipeline)
    pipeline.check_config(config, mesh)
    known_early = folds_lib.folds_before_the_build(config)
    if known_early is not None:
        folds_lib.check_batches_fit(pipeline.batch_fields(config), known_early[0], config.cv.num_folds, known_early[1])
    if config.compilation_cache:
        xla_cache.enable(config.data.cache_dir)

    split = load_fold_split(config)
    folds_lib.check_batches_fit(pipeline.batch_fields(config), split.folds, config.cv.num_folds,
                                f"the dataset {split.dataset['path']}")
    rundir.check_dataset_record(workdir, split.dataset, config.cv.num_folds)
    noisy_labels.check_source_run(config, split.dataset)
    if jax.process_index() == 0:
        rundir.write_config(workdir, config.to_json_best_effort(indent=2))
        rundir.write_dataset_record(workdir, split.dataset)
    wanted = range(config.cv.num_folds) if config.cv.fold < 0 else [config.cv.fold]
    results = {}
    for k in wanted:
        results[k] = rundir.read_fold_result(workdir, k)
        if results[k] is not None:
            log.info("fold %d already finished (score %.4f), skipped", k, results[k]["val"]["score"])
            continue
        results[k] = pipeline.train_fold(config, workdir, split.fold(k), mesh)
    done = {k: rundir.read_fold_result(workdir, k) or results.get(k) for k in range(config.cv.num_folds)}
    if any(r is None for r in done.values()):
        return None
    return summarize(workdir, split, list(done.values()), pipeline)


def check_same_run(config, workdir: str) -> None:
    """ConfigError when `workdir` holds a run whose stored config.json differs from `config` in a field that
    changes results (`config_lib.changed_fields`: any outside RESULT_NEUTRAL_FIELDS): its checkpoints, folds and
    summary belong to the stored config. The one line names each field with its stored and new value."""
    stored = rundir.read_config(workdir)
    changes = config_lib.changed_fields(stored, config) if stored is not None else []
    if changes:
        listed = ", ".join(f"{field} {old!r} -> {new!r}" for field, old, new in changes)
        raise config_lib.ConfigError(
            f"config: {rundir.config_path(workdir)} holds a run trained with other values (stored -> given): "
            f"{listed}; its checkpoints belong to the stored config: re-run without these changes to resume it, "
            f"or give a new --workdir to start a new run")


def oof_summary(split: FoldSplit, results: list[dict]) -> tuple[dict, np.ndarray]:
    """(CV summary, OOF probabilities float [N, 25, 3] in record order, NaN for unlabelled studies) from every
    fold's result (`{'fold', 'best_step', 'val', 'val_indices', 'val_probs'}`, as `Pipeline.train_fold`
    returns)."""
    labels, folds = split.labels, split.folds
    probs = np.full((len(labels), labels_lib.NUM_TARGETS, labels_lib.NUM_SEVERITIES), np.nan)
    for r in results:
        probs[r["val_indices"]] = np.asarray(r["val_probs"])
    scored = np.flatnonzero(folds >= 0)

    def out_of_fold(baseline_fn) -> dict:
        """Score of a prior-only predictor whose prior for each study comes from its own fold's training
        part, like its prediction."""
        predictions = np.empty_like(probs)
        for k in range(len(results)):
            held = folds == k
            predictions[held] = baseline_fn(labels[(folds >= 0) & ~held], int(held.sum()))
        return metrics.competition_score(labels[scored], predictions[scored])

    oof = {
        **metrics.competition_score(labels[scored], probs[scored]),
        **metrics.classification_stats(labels[scored], probs[scored]),
        "baseline": out_of_fold(metrics.class_prior_baseline),
        "weighted_prior": out_of_fold(metrics.weighted_prior_baseline),
    }
    oof["beats_best_constant"] = bool(oof["score"] < oof["weighted_prior"]["score"])
    if all("peak_distance" in r["val"] for r in results):  # target-query models: mean over the folds
        oof["peak_distance"] = float(np.mean([r["val"]["peak_distance"] for r in results]))
    summary = {
        "oof": oof,
        "folds": [{k: v for k, v in r.items() if k not in ("val_probs", "val_indices")} for r in results],
        "num_studies": int(len(scored)),
        "calibration": calibration.cross_fitted(labels[scored], probs[scored], folds[scored]),
    }
    return summary, probs


def summarize(workdir: str, split: FoldSplit, results: list[dict], pipeline) -> dict:
    """Assemble OOF predictions from every fold's best checkpoint, with the pipeline's own figures
    (`Pipeline.summary_figures`); write the CSV, the JSON and the table."""
    summary, probs = oof_summary(split, results)
    summary.update(pipeline.summary_figures(workdir, split))
    scored = np.flatnonzero(split.folds >= 0)
    if jax.process_index() == 0:
        write_oof(rundir.oof_path(workdir), split.study_ids[scored], probs[scored], split.folds[scored])
        rundir.write_summary(workdir, summary)
        print(format_table(summary))
    return summary
