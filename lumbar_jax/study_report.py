"""One study's prediction as a report its reader can judge: what was predicted, by what run, how good that run
is, and what about this study should not be trusted.

`study_report` builds the JSON-able report, `format_study_report` the text `predict.py --study_dir` prints.
Besides every target's three probabilities, the report holds (docs/conventions.md section 7):

- per target one `grade` and `flagged`, both from one rule (`severity_grades`): the grade is the median
  severity, and a target is flagged when that grade is Moderate or Severe, i.e. when P(Normal/Mild) < 0.5;
- `run_quality` (`run_quality`): the run's out-of-fold score (competition log loss, lower is better) beside the
  class prior and the best constant, whether it beats the best constant, and for a run that localises, its
  localiser's held-out median and p90 error in mm, all from the run's cv_summary.json (`summary_quality`: for a
  seed ensemble, from its ensemble_summary.json, lumbar_jax/ensemble_prediction.py);
- `warnings`: one line each, when the run does not beat the best constant (or its score is unknown), and when
  this study's localised points are implausible (`point_plausibility.implausible_points`);
- the provenance (`predict.Predictor.provenance`), the series used and not used, and the research-use note.
"""

from __future__ import annotations

import os

import numpy as np

from lumbar_jax import labels, rundir

RESEARCH_USE_NOTE = ("Research use only: not a medical device, not validated for clinical use; do not base "
                     "diagnosis or treatment on it.")
# The grade is the median severity: the lowest severity whose cumulative probability reaches this.
GRADE_CUMULATIVE = 0.5


def severity_grades(probs: np.ndarray) -> np.ndarray:
    """int [...]: the grade (severity code, labels.SEVERITY_NAMES) of each row of `probs` [..., 3], the median
    severity: the lowest k with P(severity <= k) >= 0.5. So a grade is Moderate or Severe (what `flagged`
    means) exactly when P(Normal/Mild) < 0.5, and Severe exactly when P(Severe) > 0.5."""
    return np.argmax(np.cumsum(probs, axis=-1) >= GRADE_CUMULATIVE, axis=-1)


def run_quality(workdir: str) -> dict:
    """How good the run behind a prediction is: `summary_quality` of its cv_summary.json (its localiser figures
    for a run that localises); {'source': None, 'reason': why} when there is none."""
    path = rundir.summary_path(workdir)
    if not os.path.exists(path):
        return {"source": None, "reason": f"{path} not found: the run has not finished every fold"}
    summary = rundir.read_summary(workdir)
    localiser = summary.get("localiser")
    return summary_quality(summary, path, None if localiser is None else {key: localiser[key]
                                                                            for key in ("median_mm", "p90_mm")})


def summary_quality(summary: dict, source: str, localiser: dict | None = None, scored: str | None = None) -> dict:
    """How good the model behind a prediction is, from its CV summary (`cross_validation.oof_summary`: a run's
    cv_summary.json, or a seed ensemble's ensemble_summary.json 'ensemble'): {'oof_score', 'class_prior_score',
    'best_constant_score' (competition log loss, lower is better, over every labelled study out of fold),
    'beats_best_constant', 'localiser' (`localiser`: {'median_mm', 'p90_mm'} over every held-out study and
    optionally 'of', whose figures they are; None for a model that does not localise), 'source' (`source`, the
    file, absolute)}, and 'scored' (what the score is of, e.g. a seed ensemble's average) when given."""
    oof = summary["oof"]
    score, best_constant = float(oof["score"]), float(oof["weighted_prior"]["score"])
    quality = {"oof_score": score, "class_prior_score": float(oof["baseline"]["score"]),
               "best_constant_score": best_constant, "beats_best_constant": bool(score < best_constant),
               "localiser": localiser, "source": os.path.abspath(source)}
    return quality if scored is None else {**quality, "scored": scored}


def quality_warnings(quality: dict) -> list[str]:
    """The warning lines of a `run_quality`: its score is unknown, or it does not beat the best constant."""
    if quality["source"] is None:
        return [f"the run's out-of-fold score is unknown ({quality['reason']}): nothing says how far to trust "
                "this prediction"]
    if not quality["beats_best_constant"]:
        return [f"the run does not beat the best constant: out-of-fold score {quality['oof_score']:.4f} against "
                f"{quality['best_constant_score']:.4f} for predicting every study the same class frequencies, so "
                "these probabilities say no more about this study than that constant"]
    return []


def quality_text(quality: dict) -> str:
    """'run quality: out-of-fold score ... vs best constant ... and class prior ...; localiser ...' (one line)."""
    if quality["source"] is None:
        return f"run quality: unknown ({quality['reason']})"
    verdict = "beats" if quality["beats_best_constant"] else "does NOT beat"
    scored = f" ({quality['scored']})" if quality.get("scored") else ""
    text = (f"run quality{scored}: out-of-fold score {quality['oof_score']:.4f} (competition log loss, lower is "
            f"better) vs best constant {quality['best_constant_score']:.4f} and class prior "
            f"{quality['class_prior_score']:.4f}: {verdict} the best constant")
    localiser = quality.get("localiser")
    if localiser and localiser["median_mm"] is not None:
        text += (f"; localiser error on held-out studies median {localiser['median_mm']:.2f} mm, p90 "
                 f"{localiser['p90_mm']:.2f} mm" + (f" ({localiser['of']})" if localiser.get("of") else ""))
    return text


def calibration_text(calibration_record: dict) -> str:
    """'calibrated per condition group: spinal T=1.10, foraminal uncalibrated (no gain), ...' or 'uncalibrated
    (why)' for logs and the study report."""
    if calibration_record.get("applied"):
        temperatures = calibration_record["temperatures"]
        return "calibrated per condition group: " + ", ".join(
            f"{g} T={temperatures[g]:.2f}" if g in temperatures else f"{g} uncalibrated (no gain)"
            for g in calibration_record.get("groups", temperatures))
    return f"uncalibrated ({calibration_record.get('reason', 'unknown')})"


def study_report(study_id: int, present: np.ndarray, probs: np.ndarray, unused: dict[str, str] | None = None,
                 provenance: dict | None = None, localiser: dict[str, dict] | None = None,
                 quality: dict | None = None, point_warnings: list[str] | None = None) -> dict:
    """A study's prediction as a JSON-able dict (module docstring): the research-use note, `warnings`, the run's
    quality (`quality`, from `run_quality`), where the prediction comes from (`provenance`), the series used,
    the series folders not used and why (`unused`, from `predict.read_study_dir`) and, per target, the three
    probabilities, P(Moderate or Severe), `grade` and `flagged` (`severity_grades`), `series_absent` (its
    condition's series was not there) and, for a two-stage run, `localiser`: where its crop was cut
    (`localiser[target]`, from `localiser_metrics.point_report`). probs float [25, 3]; point_warnings: the
    lines of `point_plausibility.implausible_points` for this study's points."""
    present = np.asarray(present, bool)
    grades = severity_grades(probs)
    targets = {}
    for i, t in enumerate(labels.TARGETS):
        targets[t] = {**{c: float(probs[i, k]) for k, c in enumerate(labels.SEVERITY_COLUMNS)},
                      "p_moderate_or_severe": float(probs[i, 1] + probs[i, 2]),
                      "grade": labels.SEVERITY_NAMES[int(grades[i])],
                      "flagged": bool(grades[i] > 0),
                      "series_absent": not bool(present[labels.TARGET_SERIES[i]])}
        if localiser is not None:
            targets[t]["localiser"] = localiser[t]
    warnings = [] if quality is None else quality_warnings(quality)
    warnings += [f"localised points implausible, so the crops may not show the discs they name: {line}"
                 for line in point_warnings or []]
    return {
        "notice": RESEARCH_USE_NOTE,
        "study_id": int(study_id),
        "warnings": warnings,
        "run_quality": dict(quality or {}),
        "provenance": dict(provenance or {}),
        "series_present": {name: bool(p) for name, p in zip(labels.SERIES_TYPES, present)},
        "series_not_used": dict(unused or {}),
        "targets": targets,
    }


_REPORT_COLUMNS = ("spinal canal", "L foraminal", "R foraminal", "L subarticular", "R subarticular")
_CELL = 18


def format_study_report(report: dict) -> str:
    """The warnings first, then per level (rows) and condition (columns): P(Normal/Mild) P(Moderate) P(Severe);
    `!` marks a flagged target (grade Moderate or Severe) and `~` a condition whose series was absent; a legend,
    the run's quality, the provenance and the research-use note below the table."""
    present = ", ".join(f"{n} {'yes' if p else 'ABSENT'}" for n, p in report["series_present"].items())
    lines = [f"study {report['study_id']}  (series: {present})"]
    lines += [f"WARNING: {w}" for w in report.get("warnings", [])]
    lines += [f"  series folder {folder} not used: {why}" for folder, why in report.get("series_not_used", {}).items()]
    lines.append(f"{'level':7s}" + "".join(f"{c:>{_CELL}s}" for c in _REPORT_COLUMNS))
    for level, level_name in zip(labels.LEVELS, labels.LEVEL_CSV_NAMES):
        cells = []
        for condition in labels.CONDITIONS:
            t = report["targets"][f"{condition}_{level}"]
            mark = ("!" if t["flagged"] else " ") + ("~" if t.get("series_absent") else " ")
            cells.append(" ".join(f"{t[c]:.2f}" for c in labels.SEVERITY_COLUMNS) + mark)
        lines.append(f"{level_name:7s}" + "".join(f"{c:>{_CELL}s}" for c in cells))
    flagged = sum(bool(t["flagged"]) for t in report["targets"].values())
    normal, moderate, severe = labels.SEVERITY_NAMES
    lines += [
        "",
        f"each cell: P({normal}) P({moderate}) P({severe}), summing to 1",
        f"  !  grade {moderate} or {severe} (flagged): P({normal}) < {GRADE_CUMULATIVE}, so {moderate} or {severe} "
        f"is more likely than not ({flagged} of {len(report['targets'])} cells; the grade in the JSON report is the "
        f"median severity, {severe} when P({severe}) > {GRADE_CUMULATIVE})",
        "  ~  predicted without the series this condition is read on (it was absent)",
    ]
    if report.get("run_quality"):
        lines.append(quality_text(report["run_quality"]))
    prov = report.get("provenance") or {}
    if prov:
        ensemble = prov.get("seed_ensemble")
        lines.append(f"model {prov.get('model')} ({prov.get('package')}), {'seed ensemble' if ensemble else 'run'} "
                     f"{prov.get('workdir')}: folds {prov.get('folds')}{' of each member' if ensemble else ''}, "
                     f"{prov.get('checkpoint')} checkpoints at steps {prov.get('checkpoint_steps')}, flip TTA "
                     f"{'on' if prov.get('tta') else 'off'}")
        if ensemble:
            lines.append(f"seed ensemble of {len(ensemble['members'])} members ({ensemble['averaged']}): " + "; ".join(
                f"seed {m['seed']} {m['workdir']} (steps {m['checkpoint_steps']})" for m in ensemble["members"]))
        if "localiser_steps" in prov:
            lines.append(f"two-stage: each fold's localiser (steps {prov.get('localiser_steps')}, flip TTA) placed "
                         "the crops its classifier read; the points are in the JSON report (--json)")
        if "calibration" in prov:
            lines.append(f"probabilities {calibration_text(prov['calibration'])}"
                         + (f" with {ensemble['calibrated_with']}" if ensemble and prov["calibration"].get("applied")
                            else ""))
    lines.append(report.get("notice", RESEARCH_USE_NOTE))
    return "\n".join(lines)
