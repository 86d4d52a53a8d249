"""Checkpoint evaluation: re-score each fold's held-out studies from its restored checkpoint.

The folds are recomputed from the run's config exactly as training made them
(`train.folds.load_fold_split`), each fold's checkpoint is restored onto the devices present, and its held-out
studies are predicted and scored again by the training loop's own held-out evaluation
(`train.folds.evaluate_fold`). The report has what the training summary has (competition score,
per-condition losses, any_severe_spinal, accuracy, balanced accuracy, per-class recall, class-prior baseline,
best constant) per fold and, with every fold, out of fold. Evaluating the best checkpoints of every fold
reproduces `cv_summary.json`; `evaluate_run` says whether it did.
"""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np

from lumbar_jax import inference
from lumbar_jax import labels as L
from lumbar_jax import metrics, rundir
from lumbar_jax.train import cv, folds as folds_lib
from lumbar_jax.train import mesh as mesh_lib

log = logging.getLogger(__name__)

REPRODUCE_TOLERANCE = 1e-4  # |OOF score - cv_summary.json's| below which evaluation reproduces training


def evaluate_run(workdir: str, folds: list[int] | None = None, checkpoint: str | int = "best",
                 mesh=None) -> dict:
    """Evaluate `folds` (default: every fold of the run) at `checkpoint` ('best', 'latest' or a step).

    Returns {'checkpoint', 'folds': [{'fold', 'step', 'val'}], 'devices'} and, when every fold is evaluated,
    'oof' (as in cv_summary.json) and 'cv_summary_oof_score' / 'reproduces_cv_summary' when the run has one.
    """
    config = inference.load_run_config(workdir)
    num_folds = config.cv.num_folds
    folds = list(range(num_folds)) if folds is None else list(folds)
    bad = [k for k in folds if not 0 <= k < num_folds]
    if bad:
        raise ValueError(f"--fold {bad[0]} not in 0..{num_folds - 1} (the run has {num_folds} folds)")
    mesh = mesh or mesh_lib.make_mesh()
    restorer = inference.RunRestorer(workdir, mesh, with_attention_peaks=True)
    split = folds_lib.load_fold_split(config)
    batch_size = inference.eval_batch_size(config, mesh)

    results = []
    for k in folds:
        model, fold = restorer.restore(k, checkpoint), split.fold(k)
        probs, val = folds_lib.evaluate_fold(model.eval_step, model.state, fold, batch_size, mesh)
        log.info("fold %d, step %d: score %.4f (baseline %.4f)", k, model.step, val["score"],
                 val["baseline"]["score"])
        results.append({"fold": k, "best_step": model.step, "val": val, "val_indices": fold.val_idx,
                        "val_probs": probs})

    report = {"checkpoint": str(checkpoint), "devices": int(mesh.size),
              "folds": [{"fold": r["fold"], "step": r["best_step"], "val": r["val"]} for r in results]}
    if sorted(folds) == list(range(num_folds)):
        summary, _ = cv.oof_summary(split, sorted(results, key=lambda r: r["fold"]))
        report["oof"] = summary["oof"]
        if os.path.exists(rundir.summary_path(workdir)):
            trained = rundir.read_summary(workdir)["oof"]["score"]
            report["cv_summary_oof_score"] = trained
            report["reproduces_cv_summary"] = bool(abs(trained - report["oof"]["score"]) < REPRODUCE_TOLERANCE)
    return report


def format_report(report: dict) -> str:
    """The per-fold (and OOF) table, then per-condition losses and per-class recall of each row."""
    rows = [(f"fold {f['fold']}", f["val"], f["step"]) for f in report["folds"]]
    if "oof" in report:
        rows.append(("OOF", report["oof"], ""))
    lines = [f"checkpoint: {report['checkpoint']} (on {report['devices']} device(s))",
             *cv.score_table(rows, step_header="step")]
    recalls = [f"recall_{c}" for c in L.SEVERITY_COLUMNS]
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
    if "cv_summary_oof_score" in report:
        verdict = "reproduced" if report["reproduces_cv_summary"] else "DIFFERS"
        lines.append(f"OOF score {report['oof']['score']:.6f} vs cv_summary.json {report['cv_summary_oof_score']:.6f}:"
                     f" {verdict}")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def to_json(report: dict) -> str:
    """The report as JSON (numpy scalars made plain)."""
    return json.dumps(report, indent=2, default=lambda x: x.item() if isinstance(x, np.generic) else str(x))
