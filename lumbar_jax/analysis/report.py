"""The analysis report: label statistics, target correlations, OOF diagnostics of a run, volume montages.

`write_report` writes every PNG into `out_dir` and a `report.md` that links each image with a caption of
what it shows and its key numbers, computed here (nothing is hard-coded). Inputs are validated before any
slow step (a missing file is a FileNotFoundError naming it, OOF studies absent from train.csv a ValueError
naming some), so a bad call fails in seconds, not after the DICOM reading.

With a run whose model has the target-query head, the report ends with per-target attention overlays of
held-out studies (`analysis.attention`); with a two-stage run, with the crops its classifier read in the
worst-predicted held-out studies, the localiser's and the annotated points marked (`analysis.crop_figures`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Sequence

import numpy as np
import pandas as pd

from lumbar_jax import labels as labels_lib
from lumbar_jax import metrics, rundir
from lumbar_jax.analysis import attention, costly, crop_figures, label_stats, montage, oof, plots
from lumbar_jax.analysis import markdown as md
from lumbar_jax.data import dataset
from lumbar_jax.train import config as config_lib

log = logging.getLogger(__name__)

REPORT_FILE = "report.md"
NUM_WORST = 10


def number_headings(lines: Sequence[str]) -> list[str]:
    """Number the report's headings in order of appearance: '## Title' -> '## 2. Title', '### Title' under it
    -> '### 2.1 Title' (the sections present depend on the inputs, so numbers are given here, never by hand)."""
    section, sub, numbered = 0, 0, []
    for line in lines:
        if line.startswith("### "):
            sub += 1
            line = f"### {section}.{sub} {line[4:]}"
        elif line.startswith("## "):
            section, sub = section + 1, 0
            line = f"## {section}. {line[3:]}"
        numbered.append(line)
    return numbered


def _p_value(p: float) -> str:
    return "n/a" if not np.isfinite(p) else "<1e-4" if p < 1e-4 else f"{p:.4f}"


def _nanmedian(values: np.ndarray) -> float:
    """Median of the finite values, NaN (no warning) when there are none."""
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def _labels_section(labels: np.ndarray, out_dir: str) -> list[str]:
    table = label_stats.label_distribution(labels)
    missing = label_stats.missing_summary(labels)
    png = plots.label_distribution(table, os.path.join(out_dir, "label_distribution.png"))
    labelled = table[list(labels_lib.SEVERITY_COLUMNS)].to_numpy().sum(axis=0)
    shares = labelled / max(labelled.sum(), 1)
    by_group = []
    for group in labels_lib.CONDITION_GROUPS:
        rows = table.iloc[labels_lib.group_target_indices(group)]
        counts = rows[list(labels_lib.SEVERITY_COLUMNS)].to_numpy().sum(axis=0)
        by_group.append(f"{group} " + "/".join(f"{100 * c / max(counts.sum(), 1):.1f}" for c in counts) + " %")
    worst_missing = table["missing"].idxmax()
    caption = (
        f"Class counts per target, one panel per condition with the five levels along x (stacked: "
        f"{', '.join(labels_lib.SEVERITY_NAMES)}, missing in grey). Over all {missing['studies']} studies and "
        f"{int(labelled.sum())} labelled cells: Normal/Mild {100 * shares[0]:.1f} %, Moderate "
        f"{100 * shares[1]:.1f} %, Severe {100 * shares[2]:.1f} % (per group, N/M/S: {'; '.join(by_group)}). "
        f"Missing labels: {missing['missing_cells']} of {missing['cells']} cells "
        f"({100 * missing['missing_cells'] / max(missing['cells'], 1):.1f} %); {missing['studies_with_missing']} "
        f"studies have at least one missing label and {missing['studies_all_missing']} have no label at all; the most "
        f"often missing target is {worst_missing} ({table.loc[worst_missing, 'missing']})."
    )
    rows = [[t, r.normal_mild, r.moderate, r.severe, r.missing] for t, r in table.iterrows()]
    return ["## Labels\n", md.image("label distribution", png, out_dir, caption),
            md.table(["target", *labels_lib.SEVERITY_NAMES, "missing"], rows) + "\n"]


def _left_right_answer(lr: pd.DataFrame, group: str) -> str:
    significant = lr[(lr["p_value"] < 0.05) & (lr["rho"] > 0)]
    values = ", ".join(f"{lv} rho={md.fmt(r.rho, 2)} (n={int(r.n)})" for lv, r in lr.iterrows())
    if len(significant) == len(lr):
        verdict = "Yes, at every level"
    elif len(significant) == 0:
        verdict = "No, at no level"
    else:
        verdict = f"At {len(significant)} of {len(lr)} levels ({', '.join(significant.index)})"
    finite = lr["rho"].dropna()
    strength = (f"; strength {label_stats.describe_strength(finite.min())} to "
                f"{label_stats.describe_strength(finite.max())}" if len(finite) else "")
    return (f"**Do left and right {group} labels correlate?** {verdict} the left and right severities are "
            f"positively correlated (Spearman, p < 0.05){strength}: {values}.")


def _correlation_section(labels: np.ndarray, out_dir: str) -> list[str]:
    rho, counts = label_stats.pairwise_spearman(labels)
    png = plots.correlation_heatmap(rho, counts, os.path.join(out_dir, "target_correlation.png"))
    off_diagonal = ~np.eye(labels_lib.NUM_TARGETS, dtype=bool)
    same_group = (labels_lib.TARGET_GROUP[:, None] == labels_lib.TARGET_GROUP[None, :]) & off_diagonal
    other_group = (labels_lib.TARGET_GROUP[:, None] != labels_lib.TARGET_GROUP[None, :])
    masked = np.where(off_diagonal, rho, np.nan)
    i, j = np.unravel_index(np.nanargmax(masked), rho.shape) if np.isfinite(masked).any() else (0, 1)
    caption = (
        f"Left: Spearman rank correlation between the 25 targets' ordinal codes (0/1/2), each pair over the "
        f"studies labelled on both (missing labels excluded pairwise, never coded as a severity); black lines "
        f"separate conditions. Right: the number of studies each pair uses ({counts.min()} to {counts.max()}). "
        f"Off-diagonal rho: median {md.fmt(_nanmedian(rho[off_diagonal]), 2)}; within a condition group median "
        f"{md.fmt(_nanmedian(rho[same_group]), 2)}, across groups {md.fmt(_nanmedian(rho[other_group]), 2)}; "
        f"the strongest pair is {label_stats.short_name(i)} / {label_stats.short_name(j)} "
        f"(rho {md.fmt(rho[i, j], 2)}, n {counts[i, j]})."
    )
    sub = label_stats.left_right_table(labels, "subarticular")
    foram = label_stats.left_right_table(labels, "foraminal")
    rows = [[lv, md.fmt(sub.loc[lv, "rho"]), int(sub.loc[lv, "n"]), _p_value(sub.loc[lv, "p_value"]),
             md.fmt(foram.loc[lv, "rho"]), int(foram.loc[lv, "n"]), _p_value(foram.loc[lv, "p_value"])]
            for lv in sub.index]
    return [
        "## Correlation between targets\n",
        md.image("target correlation", png, out_dir, caption),
        "### Left vs right at each level\n",
        _left_right_answer(sub, "subarticular stenosis") + "\n",
        "For comparison: " + _left_right_answer(foram, "neural foraminal narrowing") + "\n",
        md.table(["level", "subarticular rho", "n", "p", "foraminal rho", "n", "p"], rows) + "\n",
    ]


def _oof_section(study_ids, labels, probs, folds, summary: dict, out_dir: str, workdir: str) -> list[str]:
    """The section of the OOF scores of a run, per fold, calibration, confusion and the worst-predicted studies."""
    return [f"## Out-of-fold predictions of `{workdir}`\n",
            *_oof_score_table(study_ids, labels, probs, folds, summary),
            *_fold_score_plot(summary, out_dir),
            *_calibration_plot(labels, probs, out_dir),
            *_confusion_plot(labels, probs, out_dir),
            *_worst_study_table(study_ids, labels, probs, folds)]


def _oof_score_table(study_ids, labels, probs, folds, summary: dict) -> list[str]:
    """The OOF losses and score of cv_summary.json beside the baselines, and recomputed from the CSV."""
    result = summary["oof"]
    recomputed = metrics.competition_score(labels, probs)
    rows = [[key, md.fmt(result.get(key, np.nan), 4), md.fmt(result.get("baseline", {}).get(key, np.nan), 4),
             md.fmt(result.get("weighted_prior", {}).get(key, np.nan), 4), md.fmt(recomputed[key], 4)]
            for key in (*metrics.LOSS_KEYS, "score")]
    return [
        f"{len(study_ids)} studies in {len(np.unique(folds))} folds. OOF score {md.fmt(result.get('score'), 4)} vs "
        f"class-prior baseline {md.fmt(result.get('baseline', {}).get('score', np.nan), 4)} and best constant "
        f"{md.fmt(result.get('weighted_prior', {}).get('score', np.nan), 4)} (lower is better; from "
        f"cv_summary.json, the last column recomputed here from oof_predictions.csv).\n",
        md.table(["loss", "model (OOF)", "class-prior baseline", "best constant", "recomputed from CSV"], rows) + "\n",
    ]


def _fold_score_plot(summary: dict, out_dir: str) -> list[str]:
    scores = oof.fold_scores(summary)
    png = plots.fold_scores(scores, os.path.join(out_dir, "fold_scores.png"))
    folds_only = scores.drop(index="OOF")
    beaten = int((folds_only["model"] < folds_only["baseline"]).sum())
    caption = (
        f"Validation score of each fold's best checkpoint (blue) beside the class-prior baseline and the best "
        f"constant scored on the same rows (from cv_summary.json). Fold scores range "
        f"{md.fmt(folds_only['model'].min())} to {md.fmt(folds_only['model'].max())} (std "
        f"{md.fmt(folds_only['model'].std(ddof=0))}); the model beats the baseline in {beaten} of "
        f"{len(folds_only)} folds and the best constant in "
        f"{int((folds_only['model'] < folds_only['weighted_prior']).sum())}."
    )
    return ["### Score per fold\n", md.image("fold scores", png, out_dir, caption)]


def _calibration_plot(labels: np.ndarray, probs: np.ndarray, out_dir: str) -> list[str]:
    bins = {g: oof.calibration_bins(labels, probs, g) for g in labels_lib.CONDITION_GROUPS}
    png = plots.reliability_diagrams(bins, os.path.join(out_dir, "calibration.png"))
    parts = []
    for group, data in bins.items():
        ece = oof.calibration_error(data)
        total = np.maximum(data["count"].sum(axis=1), 1)
        mean_pred = np.nansum(data["mean_pred"] * data["count"], axis=1) / total
        observed = np.nansum(data["observed"] * data["count"], axis=1) / total
        parts.append(f"{group}: " + ", ".join(
            f"{name} mean p {mean_pred[k]:.3f} vs observed {observed[k]:.3f} (ECE {ece[k]:.3f})"
            for k, name in enumerate(labels_lib.SEVERITY_NAMES)))
    caption = (
        "Reliability diagrams of the OOF probabilities per condition group: for each severity class "
        "(one-vs-rest) the labelled rows are put in 10 equal-width bins of predicted probability; the curve "
        "joins (mean predicted, observed frequency) per bin, marker size ~ bin count, and the lower panel shows "
        f"the counts (log scale). Bins with fewer than {plots.MIN_BIN_ROWS} rows are too noisy to read: they are "
        "left out of the curve and drawn as small grey hollow markers (grey bars below). On the dashed diagonal "
        "the probabilities are calibrated; below it the class is predicted more often than it occurs "
        "(over-predicted), above it under-predicted. Note the metric weights Moderate x2 and Severe x4, so a "
        "model tuned for it is expected to over-predict those classes relative to their frequency. "
        + "; ".join(parts) + "."
    )
    return ["### Calibration\n", md.image("calibration", png, out_dir, caption)]


def _confusion_plot(labels: np.ndarray, probs: np.ndarray, out_dir: str) -> list[str]:
    matrices = {g: oof.confusion_matrix(labels, probs, g) for g in labels_lib.CONDITION_GROUPS}
    normalised = {g: oof.row_normalise(m) for g, m in matrices.items()}
    recalls = "; ".join(f"{g}: " + "/".join(md.fmt(normalised[g][k, k], 2) for k in range(labels_lib.NUM_SEVERITIES))
                        for g in labels_lib.CONDITION_GROUPS)
    caption = (
        "Confusion matrices of the argmax OOF prediction against the true class per condition group: counts "
        "(top) and row-normalised (bottom, the diagonal is each class's recall). The metric scores probabilities, "
        "not argmax, so these show which classes the model separates, not the score. Recall Normal/Mild / "
        f"Moderate / Severe: {recalls}."
    )
    png = plots.confusion_matrices(matrices, normalised, os.path.join(out_dir, "confusion.png"))
    return ["### Confusion matrices\n", md.image("confusion matrices", png, out_dir, caption)]


def _worst_study_table(study_ids, labels: np.ndarray, probs: np.ndarray, folds) -> list[str]:
    worst = oof.worst_studies(study_ids, labels, probs, folds, top=NUM_WORST)
    losses = metrics.per_study_loss(labels, probs)
    rows = [[r.study_id, r.fold, f"{r.loss:.3f}", r.labelled, r.worst_targets] for r in worst.itertuples()]
    return [
        "### Worst-predicted studies\n",
        f"The {len(worst)} studies with the highest per-study loss (`metrics.per_study_loss`: the metric's "
        f"1/2/4-weighted log loss over the study's labelled targets; median over all studies "
        f"{md.fmt(_nanmedian(losses))}), with their three worst targets (true class, predicted probability of "
        "it). Worth opening in a viewer: label noise, a failed series, or a real miss.\n",
        md.table(["study_id", "fold", "loss", "labelled", "worst targets"], rows) + "\n",
    ]


def _montage_section(kaggle_dir: str, out_dir: str, num_montages: int, volume_shape) -> list[str]:
    lines = ["## Canonical volumes with label coordinates\n"]
    examples = montage.load_examples(kaggle_dir, num_montages, volume_shape)
    if not examples:
        return lines + ["No study with label coordinates was found: no montage.\n"]
    lines.append(
        f"Each study as the dataset builder stores it ({'x'.join(map(str, volume_shape))}, canonical orientation, "
        f"docs/conventions.md section 3: sagittal rows superior->inferior and columns anterior->posterior, so the "
        f"spine runs vertically with the discs stacked and the patient facing left; axial a cross-section seen "
        f"from the feet, anterior up and the patient's left on the image right; the words at the panel edges say "
        f"which end is which). One row per series type, one panel per slice through annotated points (at most "
        f"{montage.MAX_SLICES}), markers coloured by the severity label, hollow for a point annotated on the "
        f"neighbouring slice; a point is drawn at most once.\n")
    for example in examples:
        png = montage.plot_study(example, os.path.join(out_dir, f"montage_{example['study_id']}.png"))
        series = []
        for kind, name in enumerate(labels_lib.SERIES_TYPES):
            if not example["present"][kind]:
                series.append(f"{name} absent")
                continue
            shown = montage.slices_to_show(example, kind)
            points = int((example["coords_series"] == kind).sum())
            drawn = sum(len(t) for _, t in shown)
            series.append(f"{name}: {points} points, {drawn} drawn on slices {[s for s, _ in shown]}")
        caption = (f"Study {example['study_id']}: {int((example['coords_series'] >= 0).sum())} of 25 targets have a "
                   f"coordinate; {'; '.join(series)}.")
        lines.append(md.image(f"study {example['study_id']}", png, out_dir, caption))
    return lines


def _crops_section(workdir: str, kaggle_dir: str, out_dir: str, num_studies: int, run) -> list[str]:
    """Two-stage runs: the crops of the worst-predicted held-out studies (`analysis.crop_figures`); [] otherwise."""
    oof_ids, labels, probs, folds, summary = run
    sections = crop_figures.crop_sections(workdir, kaggle_dir, out_dir, (oof_ids, labels, probs, folds), num_studies)
    if not sections:
        return []
    loc = summary.get("localiser") or {}
    figures = ""
    if loc.get("median_mm") is not None:
        figures = (f" Over every held-out study the localiser's error is median {md.fmt(loc['median_mm'], 2)} mm, "
                   f"p90 {md.fmt(loc.get('p90_mm'), 2)} mm, correct level {md.fmt(100 * loc['level_accuracy'], 1)} % "
                   "(cv_summary.json).")
    lines = ["## Crops of the worst-predicted held-out studies\n", crop_figures.CROPS_INTRO + figures + "\n"]
    for title, png, caption in sections:
        lines += [f"### {title}\n", md.image(title, png, out_dir, caption)]
    return lines


def training_folder_hint(workdir: str | None) -> str:
    """Where the Kaggle-layout folder a run trained on is: the run's dataset.json ('source' 'manual_dir') when
    `workdir` has one, else where to look for it and where the embedded synthetic set is generated."""
    record = rundir.read_dataset_record(workdir) if workdir and os.path.isdir(workdir) else None
    folder = (record or {}).get("source", {}).get("manual_dir")
    if folder:
        return f"the run {workdir} trained on {folder} (its {rundir.DATASET_FILE}): --data_dir {folder}"
    defaults = config_lib.default_config().data
    synthetic = dataset.synthetic_folder(defaults.cache_dir, defaults.synthetic_studies, defaults.synthetic_seed)
    return (f"a run's {rundir.DATASET_FILE} names the folder it trained on (\"source\": \"manual_dir\"); the embedded "
            f"synthetic set of the default config is generated into {synthetic}")


@dataclasses.dataclass(frozen=True)
class Drawn:
    """How many studies each drawn section of the report shows; 0 leaves the section out."""

    montages: int = 3  # studies drawn with their label coordinates (the first that have them)
    attention: int = 1  # with a target-query run: held-out studies with the model's per-target attention
    crops: int = 3  # with a two-stage run: the worst-predicted held-out studies with the crops the classifier read
    costly: int = 20  # with a run: the costliest held-out rows listed with their causes (restores every fold)


def write_report(kaggle_dir: str, out_dir: str, workdir: str | None = None, drawn: Drawn = Drawn(),
                 volume_shape: tuple[int, int, int] = (16, 64, 64)) -> str:
    """Write the analysis PNGs and `report.md` into out_dir; return the path of report.md.

    Args:
      kaggle_dir: a Kaggle-layout folder (train.csv, train_label_coordinates.csv,
        train_series_descriptions.csv, train_images/).
      out_dir: created if needed; PNGs and report.md go there.
      workdir: optional finished cross-validation run directory (docs/conventions.md section 5): adds the OOF
        sections (scores, calibration, confusion, worst studies).
      drawn: how many studies the montages, the attention overlays (restores fold 0's best checkpoint) and
        the crops (with the localiser's and the annotated points) show.
      volume_shape: the [D, H, W] volumes are resampled to for the montages (the dataset config's).
    Raises:
      FileNotFoundError naming a missing train.csv, run directory or file of it; ValueError for OOF
      predictions of studies that train.csv does not hold (naming some), or malformed files.
    """
    train_csv = os.path.join(kaggle_dir, "train.csv")
    if not os.path.isfile(train_csv):
        raise FileNotFoundError(f"{train_csv} not found (expected a Kaggle-layout folder); "
                                + training_folder_hint(workdir))
    label_ids, labels = label_stats.read_label_matrix(kaggle_dir)
    run = None
    if workdir is not None:  # validate the run before the slow parts
        oof_path, summary_path = oof.check_run_dir(workdir)
        oof_ids, probs, folds = oof.read_oof(oof_path)
        run = (oof_ids, oof.align_labels(oof_ids, label_ids, labels, source=oof_path), probs, folds,
               oof.read_summary(summary_path))
    os.makedirs(out_dir, exist_ok=True)

    log.info("label statistics of %d studies", len(label_ids))
    lines = ["# Analysis report\n",
             f"Data: `{kaggle_dir}` ({len(label_ids)} studies in train.csv)"
             + (f"; run: `{workdir}`." if workdir else "; no run directory given (no OOF sections).") + "\n"]
    lines += _labels_section(labels, out_dir)
    lines += _correlation_section(labels, out_dir)
    if run is not None:
        log.info("OOF diagnostics of %s", workdir)
        lines += _oof_section(*run, out_dir=out_dir, workdir=workdir)
    if drawn.montages > 0:
        log.info("montages of %d studies (reads DICOMs)", drawn.montages)
        lines += _montage_section(kaggle_dir, out_dir, drawn.montages, volume_shape)
    if run is not None and drawn.attention > 0:
        log.info("attention overlays of %d held-out studies (restores fold 0's model)", drawn.attention)
        overlays = attention.attention_sections(workdir, kaggle_dir, out_dir, drawn.attention)
        if overlays:
            lines += ["## Attention overlays of held-out studies\n", attention.ATTENTION_INTRO + "\n"]
            for title, png, caption in overlays:
                lines += [f"### {title}\n", md.image(title, png, out_dir, caption)]
    if run is not None and drawn.costly > 0:
        log.info("the %d costliest held-out rows and their causes (two-stage: restores each fold)", drawn.costly)
        lines += costly.markdown_section(workdir, kaggle_dir, out_dir, drawn.costly, run[:4])
    if run is not None and drawn.crops > 0:
        log.info("crops of the %d worst-predicted held-out studies (two-stage runs; reads DICOMs)", drawn.crops)
        lines += _crops_section(workdir, kaggle_dir, out_dir, drawn.crops, run)
    lines = number_headings(lines)
    path = os.path.join(out_dir, REPORT_FILE)
    with open(path, "w") as f:
        f.write("\n".join(lines))
    log.info("wrote %s", path)
    return path
