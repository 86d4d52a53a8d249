"""Checkpoint evaluation: re-score each fold's held-out studies from its restored checkpoint.

The folds are recomputed from the run's config exactly as training made them
(`train.folds.load_fold_split`), each fold's checkpoint is restored onto the devices present, and its held-out
studies are predicted and scored again by the training loop's own held-out evaluation
(`train.folds.evaluate_fold`). The report has what the training summary has (competition score,
per-condition losses, any_severe_spinal, accuracy, balanced accuracy, per-class recall, class-prior baseline,
best constant) per fold and, with every fold, out of fold. Evaluating the best checkpoints of every fold
reproduces `cv_summary.json` and each fold's `result.json`; `evaluate_run` says whether it did.

The run's pipeline restores and evaluates each fold (`Restorer.evaluate_fold`, pipelines/): two-stage runs
locate fold k's held-out studies by fold k's localiser (its best checkpoint) and read them by fold k's crop
classifier, as training scored them; the report adds the localiser's held-out figures and how far its points
are from the fold's saved `localiser_predictions.npz`.
"""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import tqdm

from lumbar_jax import cross_validation, inference, metrics, rundir
from lumbar_jax import labels
from lumbar_jax.train import folds as folds_lib
from lumbar_jax.train import mesh as mesh_lib

log = logging.getLogger(__name__)

REPRODUCE_TOLERANCE = 1e-4  # |OOF score - cv_summary.json's| below which evaluation reproduces training


def evaluate_run(workdir: str, folds: list[int] | None = None, checkpoint: str | int = "best",
                 mesh=None) -> dict:
    """Evaluate `folds` (default: every fold of the run) at `checkpoint` ('best', 'latest' or a step).

    Returns {'checkpoint', 'folds': [{'fold', 'step', 'val'}], 'devices'} and, when every fold is evaluated,
    'oof' (as in cv_summary.json) and 'cv_summary_oof_score' / 'reproduces_cv_summary' when the run has one.
    Every checkpoint to restore is found on disk before any model is built (a wrong fold or checkpoint is
    refused in seconds); the folds are evaluated with a progress bar. A fold evaluated at its best checkpoint
    also has 'trained_score' / 'reproduces_result' (its result.json's val score). Two-stage runs: each fold's
    held-out studies go through that fold's localiser and classifier, and its entry also has 'localiser_step',
    'localiser' (the held-out localisation report, mm) and 'saved_points_max_diff' (vs its
    localiser_predictions.npz); with every fold, 'oof_localiser' too.
    """
    config, pipeline = inference.load_run(workdir)
    num_folds = config.cv.num_folds
    folds = list(range(num_folds)) if folds is None else list(folds)
    bad = [k for k in folds if not 0 <= k < num_folds]
    if bad:
        raise ValueError(f"--fold {bad[0]} not in 0..{num_folds - 1} (the run has {num_folds} folds)")
    inference.check_run_checkpoints(workdir, pipeline, folds, checkpoint)  # before any model is built
    mesh = mesh or mesh_lib.make_mesh()
    split = folds_lib.load_fold_split(config)
    log.info("building the %s models of %s; the first fold also compiles the eval steps (a minute or two on a "
             "CPU for the default run)", pipeline.name, workdir)
    restorer = pipeline.restorer(workdir, config, mesh)
    results = []
    for k in tqdm.tqdm(folds, desc=f"evaluating folds ({checkpoint})", unit="fold"):
        results.append(restorer.evaluate_fold(restorer.restore(k, checkpoint), split.fold(k)))
        log.info(restorer.describe_fold(results[-1]))

    report = {"checkpoint": str(checkpoint), "devices": int(mesh.size),
              "folds": [_fold_entry(workdir, r, checkpoint) for r in results]}
    if sorted(folds) == list(range(num_folds)):
        summary, _ = cross_validation.oof_summary(split, sorted(results, key=lambda r: r["fold"]))
        report["oof"] = summary["oof"]
        report.update(restorer.pooled_figures(results))
        if os.path.exists(rundir.summary_path(workdir)):
            trained = rundir.read_summary(workdir)["oof"]["score"]
            report["cv_summary_oof_score"] = trained
            report["reproduces_cv_summary"] = bool(abs(trained - report["oof"]["score"]) < REPRODUCE_TOLERANCE)
    return report


def _fold_entry(workdir: str, result: dict, checkpoint) -> dict:
    """A fold's entry of the report: fold, step, val, the two-stage figures, and the trained score to
    reproduce when the best checkpoint was evaluated."""
    entry = {"fold": result["fold"], "step": result["best_step"], "val": result["val"]}
    entry.update({k: result[k] for k in ("localiser_step", "localiser", "saved_points_max_diff") if k in result})
    trained = rundir.read_fold_result(workdir, result["fold"]) if str(checkpoint) == "best" else None
    if trained is not None:
        entry["trained_score"] = trained["val"]["score"]
        entry["reproduces_result"] = bool(abs(trained["val"]["score"] - result["val"]["score"]) < REPRODUCE_TOLERANCE)
    return entry


def format_report(report: dict) -> str:
    """The per-fold (and OOF) table, then per-condition losses and per-class recall of each row."""
    rows = [(f"fold {f['fold']}", f["val"], f["step"]) for f in report["folds"]]
    if "oof" in report:
        rows.append(("OOF", report["oof"], ""))
    lines = [f"checkpoint: {report['checkpoint']} (on {report['devices']} device(s))",
             *cross_validation.score_table(rows, step_header="step")]
    recalls = [f"recall_{c}" for c in labels.SEVERITY_COLUMNS]
    lines.append("")
    lines.append(f"{'':10s}" + "".join(f"{k:>19s}" for k in metrics.LOSS_KEYS)
                 + "".join(f"{k.removeprefix('recall_'):>13s}" for k in recalls))
    for name, r, _ in rows:
        losses = "".join(f"{r[k]:.4f} ({r['baseline'][k]:.4f})".rjust(19) for k in metrics.LOSS_KEYS)
        lines.append(f"{name:10s}{losses}" + "".join(f"{_fmt(r[k]):>13s}" for k in recalls))
    lines.append("(losses: model (class-prior baseline); recall: argmax predictions per true class)")
    if any("peak_distance" in r for _, r, _ in rows):
        lines.append("attention peak to annotated point (voxels): " + "  ".join(
            f"{name} {r['peak_distance']:.2f}" for name, r, _ in rows if "peak_distance" in r))
    lines += _localiser_lines(report)
    trained = [f for f in report["folds"] if "trained_score" in f]
    if trained:
        lines.append("result.json: " + "  ".join(
            f"fold {f['fold']} {f['trained_score']:.6f} ({'reproduced' if f['reproduces_result'] else 'DIFFERS'})"
            for f in trained))
    if "cv_summary_oof_score" in report:
        verdict = "reproduced" if report["reproduces_cv_summary"] else "DIFFERS"
        lines.append(f"OOF score {report['oof']['score']:.6f} vs cv_summary.json {report['cv_summary_oof_score']:.6f}:"
                     f" {verdict}")
    return "\n".join(lines)


def _localiser_lines(report: dict) -> list[str]:
    """Two-stage runs: per fold (and pooled) the held-out localisation figures, and how far the points
    recomputed here are from those training saved."""
    rows = [(f"fold {f['fold']}", f["localiser"], f) for f in report["folds"] if "localiser" in f]
    if "oof_localiser" in report:
        rows.append(("OOF", report["oof_localiser"], {}))
    lines = []
    for name, loc, fold in rows:
        level = loc["level_accuracy"]
        line = (f"localiser {name}: median {_fmt_optional(loc['median_mm'])} mm, p90 {_fmt_optional(loc['p90_mm'])} "
                f"mm, correct level {'n/a' if level is None else f'{100 * level:.1f} %'}")
        if "localiser_step" in fold:
            line += f" (step {fold['localiser_step']})"
        if fold.get("saved_points_max_diff") is not None:
            line += f"; points vs localiser_predictions.npz: max |diff| {fold['saved_points_max_diff']:.2e}"
        lines.append(line)
    return lines


def _fmt_optional(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def to_json(report: dict) -> str:
    """The report as JSON (numpy scalars made plain)."""
    return json.dumps(report, indent=2, default=lambda x: x.item() if isinstance(x, np.generic) else str(x))
