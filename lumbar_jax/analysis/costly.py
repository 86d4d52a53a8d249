"""The most costly held-out predictions of a run, each with its cause: where the confident mistakes come from.

A held-out row is one (study, target) with a label, predicted by the fold that held the study out (the run's
out-of-fold probabilities). Its cost is its part of the OOF score (`metrics.row_score_shares`: weight 1/2/4 x
-log P(true grade), over its condition group's weight, over the score's components). A confident mistake is a
row with P(true grade) < CONFIDENT_MISS.

The cause of a row is the first of CAUSES that applies:
- `label noise`: the written label is not the grade the image shows. Known only for a folder the synthetic
  generator wrote (`synthetic.latent_severities`); no reader can be right about such a row.
- `no image`: the target's series is absent (or, two-stage, no crop was cut): the model read no image of it.
- `localiser` (two-stage runs): re-classified from crops cut at the annotated point instead of at the fold's
  localiser's, the fold's classifier loses at most LOCALISER_RECOVERY of the row's cost: the point was the
  problem. The row shows the point's error in mm, in native slices, and whether it lies at its own level.
- `crop`: the crop at the annotated point lies less than MIN_CROP_FILL inside its series (cut at the edge of the
  volume or past its last slice): the image holds too little of the target.
- `model`: everything else: the model read the right place and was wrong.
Rows without an annotated point on their own series cannot be tested for `localiser` and `crop`.

`analyse` restores each fold's classifier once (two-stage runs) to re-classify its held-out studies at the
annotated points; nothing else is recomputed. The figure shows, for the costliest rows, the crop slices the
classifier read beside the crop slices at the annotated point.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from lumbar_jax import inference, localiser_metrics, metrics, rundir
from lumbar_jax import labels as labels_lib
from lumbar_jax.analysis import markdown as md
from lumbar_jax.analysis import plots
from lumbar_jax.analysis.attention import probability_text
from lumbar_jax.data import crops as crops_lib
from lumbar_jax.data import synthetic
from lumbar_jax.dataset_configs import NATIVE_VOLUMES
from lumbar_jax.train import folds as folds_lib
from lumbar_jax.train import mesh as mesh_lib

log = logging.getLogger(__name__)

CAUSES = ("label noise", "no image", "localiser", "crop", "model")
CONFIDENT_MISS = 0.01  # P(true grade) below which a held-out row is a confident mistake
LOCALISER_RECOVERY = 0.5  # `localiser` when the annotated point's crop leaves at most this share of the row's cost
NUM_DRAWN = 8  # costliest rows whose crops the report draws
MIN_CROP_FILL = 0.75  # `crop` when less than this share of the annotated point's crop lies inside its series


@dataclasses.dataclass(frozen=True)
class HeldOutRows:
    """Every held-out study of a run (N, in out-of-fold order) with what a cause needs; `[N, 25]` unless said."""

    study_ids: np.ndarray  # int [N]
    folds: np.ndarray  # int [N]
    labels: np.ndarray  # int, -1 missing
    probs: np.ndarray  # float [N, 25, 3]: the run's out-of-fold probabilities
    shares: np.ndarray  # float: each row's part of the OOF score
    latent: np.ndarray | None  # int: the grade the image shows (synthetic folders), else None
    reader_shares: np.ndarray | None  # float: with `latent`, each row's part of the perfect reader's score
    image: np.ndarray  # bool: the model read an image of the target (its series present; two-stage: a crop)
    annotated_probs: np.ndarray | None  # float [N, 25, 3]: two-stage, crops at the annotated points; else None
    point_errors: localiser_metrics.PointErrors | None  # two-stage: the fold's localiser's points, in mm
    crop_fill: np.ndarray | None  # float: two-stage, share of the annotated point's crop inside its series

    def p_true(self, probs: np.ndarray | None = None) -> np.ndarray:
        """float [N, 25]: P(label) of `probs` (default: the OOF probabilities); NaN where the label is missing."""
        probs = self.probs if probs is None else probs
        picked = np.take_along_axis(probs, np.maximum(self.labels, 0)[..., None], axis=-1)[..., 0]
        return np.where(self.labels >= 0, picked, np.nan)

    def causes(self) -> np.ndarray:
        """object [N, 25]: each labelled row's cause (CAUSES, module docstring); None for a missing label."""
        labelled = self.labels >= 0
        cause = np.full(self.labels.shape, "model", dtype=object)
        if self.annotated_probs is not None:
            scored = self.point_errors.scored
            cause[scored & (self.crop_fill < MIN_CROP_FILL)] = "crop"
            annotated_shares = metrics.row_score_shares(self.labels, self.annotated_probs)
            recovered = annotated_shares <= LOCALISER_RECOVERY * self.shares
            cause[scored & recovered & (self.shares > 0)] = "localiser"
        cause[~self.image] = "no image"
        if self.latent is not None:
            cause[labelled & (self.latent != self.labels)] = "label noise"
        cause[~labelled] = None
        return cause


def analyse(workdir: str, kaggle_dir: str, out_of_fold: tuple) -> HeldOutRows:
    """The held-out rows of the run in `workdir`. `out_of_fold`: (study_ids [N], labels [N, 25], probs
    [N, 25, 3], folds [N]) as `oof.read_oof` with the labels aligned; `kaggle_dir`: the training folder (for
    the synthetic generator's latent grades, when it wrote it)."""
    study_ids, labels, probs, folds = out_of_fold
    config, pipeline = inference.load_run(workdir)
    split = folds_lib.load_fold_split(config)
    position = {int(s): i for i, s in enumerate(split.study_ids)}
    records = [split.source[position[int(s)]] for s in study_ids]
    image = np.stack([np.asarray(r["present"], bool)[labels_lib.TARGET_SERIES] for r in records])
    latent_by_id = synthetic.latent_severities(kaggle_dir)
    latent = reader_shares = None
    if latent_by_id is not None:
        latent = np.stack([latent_by_id[int(s)] for s in study_ids]).astype(np.int64)
        reader_shares = metrics.row_score_shares(labels, _perfect_reader(latent))
    two_stage = {}
    if pipeline.localises:
        two_stage = _two_stage_rows(workdir, config, pipeline, split, study_ids, folds, records)
        image &= two_stage.pop("crop_present")
    return HeldOutRows(study_ids, folds, labels, probs, metrics.row_score_shares(labels, probs), latent,
                       reader_shares, image, two_stage.get("annotated_probs"), two_stage.get("point_errors"),
                       two_stage.get("crop_fill"))


def _perfect_reader(latent: np.ndarray) -> np.ndarray:
    """float [N, 25, 3]: the synthetic set's perfect reader, P(written grade | latent grade) (its noise floor)."""
    noise = np.stack([synthetic.label_noise_matrix(g) for g in labels_lib.CONDITION_GROUPS])  # [3 groups, 3, 3]
    return noise[labels_lib.TARGET_GROUP[None, :], latent]


def _two_stage_rows(workdir: str, config, pipeline, split, study_ids, folds, records) -> dict:
    """{'annotated_probs', 'point_errors', 'crop_fill', 'crop_present'} of the held-out studies, each fold's
    classifier re-reading its own held-out studies from crops at the annotated points."""
    restorer = pipeline.restorer(workdir, config, mesh_lib.make_mesh())
    crop = crops_lib.CropSpec.from_config(config.crops)
    annotated_probs = np.zeros((len(study_ids), labels_lib.NUM_TARGETS, labels_lib.NUM_SEVERITIES))
    points = np.zeros((len(study_ids), labels_lib.NUM_TARGETS, 3))
    position = {int(s): i for i, s in enumerate(split.study_ids)}
    for k in np.unique(folds):
        rows = np.flatnonzero(folds == k)
        indices = np.array([position[int(study_ids[r])] for r in rows])
        model = restorer.restore(int(k), "best")
        log.info("fold %d: re-classifying %d held-out studies at the annotated points", k, len(rows))
        annotated_probs[rows] = restorer.classify(model.state, split.source, indices, split.study_ids, None)
        saved = rundir.read_localiser_predictions(rundir.localiser_predictions_path(workdir, int(k)))
        saved_row = {int(s): i for i, s in enumerate(saved["study_id"])}
        points[rows] = saved["points"][[saved_row[int(study_ids[r])] for r in rows]]
    crop_present = [crops_lib.study_crops(r, p, crop)[1] for r, p in zip(records, points)]
    return {"annotated_probs": annotated_probs, "point_errors": localiser_metrics.read_geometry(records).errors(points),
            "crop_fill": np.stack([_crop_fill(r, crop) for r in records]), "crop_present": np.stack(crop_present)}


def _crop_fill(record: dict, crop: crops_lib.CropSpec) -> np.ndarray:
    """float [25]: the share of each target's crop at its annotated point that lies inside its series (0 without
    one): the crops of the same record with every native voxel 255, cut as `study_crops` cuts."""
    full = dict(record)
    for name in NATIVE_VOLUMES:
        full[name] = np.full(np.shape(record[name]), 255, np.uint8)
    cut, _ = crops_lib.study_crops(full, crops_lib.training_points(record), crop)
    return cut.reshape(labels_lib.NUM_TARGETS, -1).mean(axis=1) / 255.0


# ---------------------------------------------------------------------------------------------- tables
def costly_rows(rows: HeldOutRows, top: int) -> list[dict]:
    """The `top` labelled rows with the largest cost, costliest first, as dicts (JSON-able)."""
    cause, p_true = rows.causes(), rows.p_true()
    p_annotated = rows.p_true(rows.annotated_probs) if rows.annotated_probs is not None else None
    order = np.argsort(-rows.shares, axis=None, kind="stable")[:top]
    out = []
    for n, t in zip(*np.unravel_index(order, rows.shares.shape)):
        if rows.labels[n, t] < 0:
            break
        row = {"study_id": int(rows.study_ids[n]), "fold": int(rows.folds[n]), "target": labels_lib.TARGETS[t],
               "label": labels_lib.SEVERITY_NAMES[rows.labels[n, t]], "p_true": float(p_true[n, t]),
               "score_share": float(rows.shares[n, t]), "cause": cause[n, t]}
        if rows.latent is not None:
            row["image_grade"] = labels_lib.SEVERITY_NAMES[rows.latent[n, t]]
        if p_annotated is not None:
            e = rows.point_errors
            row |= {"p_true_at_annotated_point": float(p_annotated[n, t]),
                    "localiser_error_mm": float(e.error[n, t]) if e.scored[n, t] else None,
                    "localiser_slice_error": int(e.slice_error[n, t]) if e.scored[n, t] else None,
                    "localiser_at_own_level": bool(e.level_correct[n, t]) if e.level_counted[n, t] else None,
                    "crop_fill": float(rows.crop_fill[n, t]) if e.scored[n, t] else None}
        out.append(row)
    return out


def loss_by_cause(rows: HeldOutRows) -> list[dict]:
    """Per cause (CAUSES order, then all): labelled rows, their summed part of the OOF score, the confident
    mistakes among them and their part of the score; with the latent grades, also the perfect reader's part
    of the score on the same rows (what no model can go below) and the excess over it."""
    cause, p_true = rows.causes(), rows.p_true()
    labelled = rows.labels >= 0
    miss = labelled & (p_true < CONFIDENT_MISS)
    out = []
    for name, sel in [(c, cause == c) for c in CAUSES] + [("all", labelled)]:
        out.append({"cause": name, "rows": int(sel.sum()), "score_share": float(rows.shares[sel].sum()),
                    "confident_mistakes": int((sel & miss).sum()),
                    "confident_mistakes_score_share": float(rows.shares[sel & miss].sum())})
        if rows.reader_shares is not None:
            out[-1]["perfect_reader_score_share"] = float(rows.reader_shares[sel].sum())
    return out


def score_by_fold(rows: HeldOutRows) -> list[dict]:
    """Per fold: its held-out studies, its score, its confident mistakes and, with the latent grades, the perfect
    reader's score on the same studies: a fold's own noise floor, so that a bad fold shows whether its labels or
    the model make it bad."""
    reader = _perfect_reader(rows.latent) if rows.latent is not None else None
    p_true = rows.p_true()
    out = []
    for k in np.unique(rows.folds):
        held = rows.folds == k
        labelled = rows.labels[held] >= 0
        out.append({"fold": int(k), "studies": int(held.sum()),
                    "score": metrics.competition_score(rows.labels[held], rows.probs[held])["score"],
                    "confident_mistakes": int((p_true[held][labelled] < CONFIDENT_MISS).sum())})
        if reader is not None:
            out[-1]["perfect_reader_score"] = metrics.competition_score(rows.labels[held], reader[held])["score"]
    return out


# ---------------------------------------------------------------------------------------------- report
def markdown_section(workdir: str, kaggle_dir: str, out_dir: str, top: int, out_of_fold: tuple) -> list[str]:
    """The report's section: the OOF score split by cause, the `top` costliest held-out rows with their causes,
    the crops of the costliest (two-stage runs); also writes OUT/costly.json. Arguments as `analyse`."""
    rows = analyse(workdir, kaggle_dir, out_of_fold)
    table, folds = costly_rows(rows, top), score_by_fold(rows)
    write_json(rows, table, folds, os.path.join(out_dir, "costly.json"))
    labelled = rows.labels >= 0
    score = metrics.competition_score(rows.labels, rows.probs)["score"]
    causes = loss_by_cause(rows)
    reader = "perfect_reader_score_share" in causes[0]
    by_cause = []
    for r in causes:
        by_cause.append([r["cause"], r["rows"], md.fmt(r["score_share"], 4), f"{r['score_share'] / score:.0%}",
                         r["confident_mistakes"], md.fmt(r["confident_mistakes_score_share"], 4)])
        if reader:
            reader_share = r["perfect_reader_score_share"]
            by_cause[-1] += [md.fmt(reader_share, 4), md.fmt(r["score_share"] - reader_share, 4)]
    header = ["study_id", "fold", "target", "label", "P(label)", "part of score", "cause"]
    keys = ["study_id", "fold", "target", "label", "p_true", "score_share", "cause"]
    extra = [("image grade", "image_grade"), ("P(label) at annotated point", "p_true_at_annotated_point"),
             ("localiser mm", "localiser_error_mm"), ("slices off", "localiser_slice_error"),
             ("own level", "localiser_at_own_level"), ("crop fill", "crop_fill")]
    for title, key in extra:
        if table and key in table[0]:
            header, keys = header + [title], keys + [key]
    cells = [[md.fmt(r[k], 4) if isinstance(r[k], float) else ("-" if r[k] is None else r[k]) for k in keys]
             for r in table]
    reader_note = (" On this synthetic folder the latent grades are known: the perfect reader (who knows the grade "
                   "the image shows and predicts P(label | that grade)) scores the noise floor, and `excess` is "
                   "what each cause costs beyond it." if reader else "")
    lines = ["## Most costly held-out predictions\n", __doc__.split("\n\n")[1].replace("\n", " ") + reader_note
             + "\n",
             f"Confident mistakes (P(label) < {CONFIDENT_MISS}): "
             f"{np.mean(rows.p_true()[labelled] < CONFIDENT_MISS):.2%} of {int(labelled.sum())} held-out "
             f"rows. OOF score {md.fmt(score, 4)}, of which the rows' parts below (any_severe_spinal, a per-study "
             "term, is not split). Causes, the first that applies: " + ", ".join(CAUSES) + " (definitions "
             "in `lumbar_jax/analysis/costly.py`). Also in costly.json.\n",
             "### OOF score by cause\n",
             md.table(["cause", "rows", "part of score", "share", "confident mistakes", "their part"]
                      + (["perfect reader's part", "excess"] if reader else []), by_cause) + "\n",
             "### OOF score by fold\n",
             md.table(["fold", "studies", "score", "confident mistakes"]
                      + (["perfect reader's score", "excess"] if reader else []),
                      [[f["fold"], f["studies"], md.fmt(f["score"], 4), f["confident_mistakes"]]
                       + ([md.fmt(f["perfect_reader_score"], 4), md.fmt(f["score"] - f["perfect_reader_score"], 4)]
                          if reader else []) for f in folds]) + "\n",
             f"### The {len(table)} costliest rows\n", md.table(header, cells) + "\n"]
    png = plot_costly_crops(rows, workdir, table[:NUM_DRAWN], os.path.join(out_dir, "costly_crops.png"))
    if png:
        lines.append(md.image("costly crops", png, out_dir, f"The {min(len(table), NUM_DRAWN)} costliest rows: "
                              "every slice of the crop the classifier read and of the crop at the annotated point."))
    return lines


# ---------------------------------------------------------------------------------------------- figure
def plot_costly_crops(rows: HeldOutRows, workdir: str, table: list[dict], path: str) -> str | None:
    """One figure row per costly row of `table` (two-stage runs): the crop slices its fold's classifier read
    (at the localiser's point) and, beside them, the slices at the annotated point. None for other runs."""
    if rows.annotated_probs is None or not table:
        return None
    config, _ = inference.load_run(workdir)
    crop = crops_lib.CropSpec.from_config(config.crops)
    split = folds_lib.load_fold_split(config)
    position = {int(s): i for i, s in enumerate(split.study_ids)}
    import matplotlib.pyplot as plt

    k = crop.slices
    height = 0.5 + 2.0 * len(table)
    fig, axes = plt.subplots(len(table), 2 * k, figsize=(1.4 * 2 * k, height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.55 / height, wspace=0.06, hspace=0.75)
    for ax_row, row in zip(axes, table):
        record = split.source[position[row["study_id"]]]
        t = labels_lib.TARGETS.index(row["target"])
        saved = rundir.read_localiser_predictions(rundir.localiser_predictions_path(workdir, row["fold"]))
        localised = saved["points"][int(np.flatnonzero(saved["study_id"] == row["study_id"])[0])]
        for half, points in enumerate((localised, crops_lib.training_points(record))):
            cut, present = crops_lib.study_crops(record, points, crop)
            for j in range(k):
                ax = ax_row[half * k + j]
                ax.set_xticks([])
                ax.set_yticks([])
                if present[t]:
                    ax.imshow(cut[t, j], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                else:
                    ax.set_facecolor("0.85")
        n = int(np.flatnonzero(rows.study_ids == row["study_id"])[0])
        ax_row[0].set_title(f"{row['study_id']} {row['target']} (fold {row['fold']}), cause: {row['cause']}\n"
                            f"true {row['label']}; read at the localiser's point: {probability_text(rows.probs[n, t])}",
                            fontsize=7, loc="left")
        ax_row[k].set_title("\nat the annotated point: " + (probability_text(rows.annotated_probs[n, t])
                                                            if present[t] else "no point"), fontsize=7, loc="left")
    fig.suptitle("Costliest held-out rows: every crop slice at the localiser's point (left, what the classifier "
                 "read) and at the annotated point (right); left targets mirrored", fontsize=9, y=1 - 0.1 / height,
                 va="top")
    return plots.save_figure(fig, path)


def write_json(rows: HeldOutRows, table: list[dict], folds: list[dict], path: str) -> str:
    """The costly rows, the loss by cause and the score by fold (`score_by_fold`) as JSON (`path`), for compare
    scripts and seeds side by side."""
    import json

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    labelled = rows.labels >= 0
    with open(path, "w") as f:
        json.dump({"confident_miss_threshold": CONFIDENT_MISS,
                   "confident_mistake_share": float(np.mean(rows.p_true()[labelled] < CONFIDENT_MISS)),
                   "loss_by_cause": loss_by_cause(rows), "score_by_fold": folds, "costly_rows": table}, f, indent=1)
    return path
