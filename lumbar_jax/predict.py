"""Prediction on new studies, straight from DICOM: the Kaggle `submission.csv` and a per-study report.

Studies are read with the builder's own reader (`data.study.study_example`: same series choice, canonical
orientation, resampling and intensity normalisation as the training records), predicted by the ensemble of
the run's folds (each fold's best checkpoint; probabilities averaged) and, with `tta`, also on the
left/right-mirrored study. No prebuilt dataset is needed. A study folder (`read_study_dir`) says which of its
series folders it did not use and why (empty, unreadable, type unknown), and one with no usable series is
refused, naming each folder's reason.

The ensemble's probabilities are calibrated with the run's per-group temperatures (cv_summary.json
'calibration', fitted on its out-of-fold predictions) for the condition groups whose cross-fitted OOF score
calibration improved, unless switched off; the provenance says per group which are calibrated. The run's
pipeline (pipelines/) restores and predicts: two-stage runs read the studies with their native series, and
each fold's localiser places the crops that fold's classifier reads.

A study report (`study_report`, `format_study_report`) shows every target's three probabilities, flags the
cells where Normal/Mild is below 0.5, explains its markers, records where the prediction came from (run,
folds, checkpoint steps, TTA, calibration, model and package version; two-stage: each target's localised
point) and says that it is for research use only.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pandas as pd
import tqdm

from lumbar_jax import calibration, inference, localiser_metrics, rundir
from lumbar_jax import labels
from lumbar_jax.data import problems
from lumbar_jax.data import study as study_lib
from lumbar_jax.dataset_configs import GRID_DATASETS
from lumbar_jax.train import mesh as mesh_lib

log = logging.getLogger(__name__)

RESEARCH_USE_NOTE = ("Research use only: not a medical device, not validated for clinical use; do not base "
                     "diagnosis or treatment on it.")
FLAG_BELOW = 0.5  # a cell is flagged when P(Normal/Mild) < FLAG_BELOW: Moderate or Severe is more likely than not

SUBMISSION_COLUMNS = ("row_id", *labels.SEVERITY_COLUMNS)


class Predictor:
    """The ensemble of a run's folds at one checkpoint, on the devices present, calibrated with the run's
    temperatures (cv_summary.json 'calibration') unless `calibrate` is False.

    The run's pipeline restores the folds and predicts (`pipelines.base.Restorer`). One-stage runs: each fold's
    study model, optionally with flip TTA. Two-stage runs: each fold's localiser (flip TTA, as in training)
    places the crops its classifier reads; `tta` is refused (left crops are already mirrored, so a flipped
    study gives the classifier the same crops)."""

    def __init__(self, workdir: str, folds: list[int] | None = None, checkpoint: str | int = "best",
                 tta: bool = False, calibrate: bool = True):
        self.mesh = mesh_lib.make_mesh()
        self.config, pipeline = inference.load_run(workdir)
        self.grid = self.config.data.config in GRID_DATASETS  # records in one shared patient grid (data/grid.py)
        self.native_max_size = pipeline.native_max_size(self.config)
        refusal = pipeline.tta_refusal(workdir, self.config)
        if tta and refusal:
            raise ValueError(f"flip TTA: {refusal}; predict without --tta")
        folds = rundir.trained_folds(workdir, self.config.cv.num_folds) if folds is None else folds
        if not folds:
            raise FileNotFoundError(f"{workdir} has no trained fold (no fold_k/checkpoints)")
        self.restorer = pipeline.restorer(workdir, self.config, self.mesh)
        self.models = [self.restorer.restore(k, checkpoint) for k in folds]
        self.workdir, self.folds, self.checkpoint, self.tta = workdir, list(folds), str(checkpoint), tta
        self.calibration = run_calibration(workdir, calibrate)
        self.volume_shape = tuple(self.config.model.volume_shape)
        t0 = time.perf_counter()
        self.predict([self.restorer.blank_record()])  # compiles every fold's eval step, so timings below are steady
        self.compile_s = time.perf_counter() - t0
        log.info("ensemble of folds %s (%s checkpoints, steps %s)%s%s; %s; compiled in %.1f s", folds, checkpoint,
                 [m.step for m in self.models], " with flip TTA" if tta else "",
                 ", crops at each fold's localiser's points" if pipeline.localises else "",
                 calibration_text(self.calibration), self.compile_s)

    def provenance(self) -> dict:
        """Where a prediction comes from: the run, its folds and checkpoint steps, TTA, the calibration, the
        model and the package version (JSON-able), and the pipeline's own part (two-stage: the pipeline and
        localiser steps)."""
        out = {"workdir": os.path.abspath(self.workdir), "folds": [int(k) for k in self.folds],
               "checkpoint": self.checkpoint, "checkpoint_steps": [int(m.step) for m in self.models],
               "tta": bool(self.tta), "calibration": dict(self.calibration), "model": str(self.config.model.name),
               "dataset_config": str(self.config.data.config), "package": f"lumbar_jax {package_version()}"}
        out.update(self.restorer.provenance(self.models))
        return out

    def read(self, entries: list[study_lib.StudyEntry]) -> list[dict]:
        """Each study's record (docs/conventions.md section 4; with the native series for a pipeline that reads
        them), read from its DICOM series, with a progress bar."""
        return [study_lib.study_example(e, self.volume_shape, grid=self.grid,
                                        native_max_size=self.native_max_size)
                for e in tqdm.tqdm(entries, desc="reading studies", unit="study", disable=len(entries) < 2)]

    def predict(self, records: list[dict]) -> np.ndarray:
        """Probabilities float64 [N, 25, 3] of `records`, rows summing to 1."""
        return self.predict_with_points(records)[0]

    def predict_with_points(self, records: list[dict]) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities float64 [N, 25, 3], rows summing to 1, calibrated when `self.calibration` says so;
        each fold's points float [F, N, 25, 3] for a pipeline that localises, else None)."""
        probs, points = self.restorer.predict(self.models, records, self.tta)
        probs = probs.astype(np.float64)
        probs /= probs.sum(axis=-1, keepdims=True)
        if self.calibration["applied"]:
            probs = calibration.apply_selected(probs, self.calibration["temperatures"])
        return probs, points


def run_calibration(workdir: str, calibrate: bool = True) -> dict:
    """Whether predictions of `workdir` are calibrated, and how: {'applied': True, 'temperatures': {group: T}
    of the calibrated groups only, 'groups': {group: True/False} for every group} (cv_summary.json
    'calibration': a group is calibrated only where its cross-fitted OOF score improved), or {'applied':
    False, 'reason': why not, 'groups': ...} (switched off, no summary, or no group improved)."""
    uncalibrated = dict.fromkeys(labels.CONDITION_GROUPS, False)
    if not calibrate:
        return {"applied": False, "reason": "switched off (--no_calibration)", "groups": uncalibrated}
    if not os.path.exists(rundir.summary_path(workdir)):
        return {"applied": False, "reason": f"no {rundir.SUMMARY_FILE} (the run has not finished every fold)",
                "groups": uncalibrated}
    record = rundir.read_summary(workdir).get("calibration", {})
    temperatures = calibration.applied_temperatures(record)
    groups = {g: g in temperatures for g in labels.CONDITION_GROUPS}
    if not temperatures:
        why = ("calibration improved no group's cross-fitted OOF score" if "groups" in record else
               f"{rundir.SUMMARY_FILE} has no per-group calibration verdict")
        return {"applied": False, "reason": why, "groups": groups}
    return {"applied": True, "temperatures": temperatures, "groups": groups}


def calibration_text(calibration_record: dict) -> str:
    """'calibrated: spinal T=1.10, foraminal uncalibrated, ...' or 'uncalibrated (why)' for logs and the study
    report."""
    if calibration_record.get("applied"):
        temperatures = calibration_record["temperatures"]
        return "calibrated per condition group: " + ", ".join(
            f"{g} T={temperatures[g]:.2f}" if g in temperatures else f"{g} uncalibrated (no gain)"
            for g in calibration_record.get("groups", temperatures))
    return f"uncalibrated ({calibration_record.get('reason', 'unknown')})"


def package_version() -> str:
    """The installed lumbar_jax version (setup.py's `version`), or 'unknown' when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("lumbar_jax")
    except metadata.PackageNotFoundError:
        return "unknown"


def submission_frame(study_ids: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """The competition's submission table: row_id, normal_mild, moderate, severe; 25 rows per study, in
    study then target order. ValueError if a probability is not finite or a row does not sum to 1."""
    if probs.shape != (len(study_ids), labels.NUM_TARGETS, labels.NUM_SEVERITIES):
        raise ValueError(f"probabilities of shape {probs.shape} for {len(study_ids)} studies")
    if not np.isfinite(probs).all() or not np.allclose(probs.sum(-1), 1.0, atol=1e-6):
        raise ValueError("predicted probabilities are not finite or do not sum to 1")
    return pd.DataFrame({
        "row_id": [rid for s in study_ids for rid in labels.study_row_ids(s)],
        **{c: probs[:, :, k].reshape(-1) for k, c in enumerate(labels.SEVERITY_COLUMNS)},
    }, columns=list(SUBMISSION_COLUMNS))


def predict_split(predictor: Predictor, data_dir: str, split: str = "test") -> tuple[pd.DataFrame, dict]:
    """Submission table for every study of `{split}_series_descriptions.csv` and timing numbers (studies/s:
    reading DICOM and predicting, after the one-off restore and compilation)."""
    if not study_lib.has_split(data_dir, split):
        raise FileNotFoundError(f"{data_dir}/{split}_series_descriptions.csv not found (expected the Kaggle "
                                "competition layout)")
    entries = study_lib.list_studies(data_dir, split)
    if not entries:
        raise ValueError(f"{data_dir}/{split}_series_descriptions.csv lists no study")
    t0 = time.perf_counter()
    records = predictor.read(entries)
    t1 = time.perf_counter()
    probs = predictor.predict(records)
    t2 = time.perf_counter()
    absent = sum(int((~r["present"]).sum()) for r in records)
    timing = {"studies": len(entries), "absent_series": absent, "compile_s": predictor.compile_s,
              "read_s": t1 - t0, "predict_s": t2 - t1, "studies_per_s": len(entries) / (t2 - t0)}
    return submission_frame(np.array([e.study_id for e in entries]), probs), timing


def read_study_dir(predictor: Predictor, study_dir: str, descriptions_csv: str | None = None
                   ) -> tuple[study_lib.StudyEntry, dict, dict[str, str]]:
    """One study folder -> (its StudyEntry, its record, {series folder: why it was not used}). ValueError naming
    the folder and each series folder's reason when no series of it can be used (a prediction without any
    image would be the class prior, not a prediction of this study)."""
    t0 = time.perf_counter()
    with problems.collect() as found:
        entry = study_lib.study_from_directory(study_dir, descriptions_csv)
        record = predictor.read([entry])[0]
    unused = unused_series_folders(study_dir, record["series_ids"], found)
    log.info("study %s: read %d of %d series in %.1f s (%s)", entry.study_id, int(np.sum(record["present"])),
             len(labels.SERIES_TYPES), time.perf_counter() - t0,
             ", ".join(n for n, p in zip(labels.SERIES_TYPES, record["present"]) if p) or "none")
    if not np.any(record["present"]):
        reasons = "; ".join(f"{os.path.basename(d)}: {why}" for d, why in unused.items()) or "it has no subfolder"
        raise ValueError(f"study folder {study_dir} has no usable series ({reasons})")
    return entry, record, unused


def predict_study(predictor: Predictor, study_dir: str, descriptions_csv: str | None = None) -> dict:
    """One study folder -> its `study_report` (provenance, series not used, and for a two-stage run where each
    target's crop was cut); errors as `read_study_dir`."""
    entry, record, unused = read_study_dir(predictor, study_dir, descriptions_csv)
    probs, points = predictor.predict_with_points([record])
    localiser = None if points is None else localiser_metrics.point_report(record, points[:, 0])
    return study_report(entry.study_id, record["present"], probs[0], unused, predictor.provenance(), localiser)


def unused_series_folders(study_dir: str, series_ids: np.ndarray, found: list[problems.Problem]) -> dict[str, str]:
    """{folder: why} for every subfolder of a study folder that gave no volume: not a series id, empty (no
    .dcm file), or the reasons reported while reading it (`found`); a readable series not chosen for its type
    is "not used (another series of its type was chosen)"."""
    used = {str(int(s)) for s in series_ids if s >= 0}
    out = {}
    for name in sorted(os.listdir(study_dir)):
        folder = os.path.join(study_dir, name)
        if not os.path.isdir(folder) or name in used:
            continue
        if not name.isdigit():
            out[folder] = "not a series folder (its name is not a series id)"
        elif not any(f.endswith(".dcm") for f in os.listdir(folder)):
            out[folder] = "empty series folder (no .dcm file)"
        else:
            reasons = list(dict.fromkeys(p.reason + (f" ({p.detail})" if p.detail else "") for p in found
                                         if p.where == folder or p.where.startswith(folder + os.sep)))
            out[folder] = "; ".join(reasons[:3]) or "not used (another series of its type was chosen)"
    return out


def study_report(study_id: int, present: np.ndarray, probs: np.ndarray, unused: dict[str, str] | None = None,
                 provenance: dict | None = None, localiser: dict[str, dict] | None = None) -> dict:
    """A study's prediction as a JSON-able dict: the research-use note, where it comes from (`provenance`, from
    `Predictor.provenance`), the series used, the series folders not used and why (`unused`, from
    `read_study_dir`) and, per target, the three probabilities, P(Moderate or Severe), the most likely grade,
    `flagged` (P(Normal/Mild) < 0.5), `series_absent` (its condition's series was not there) and, for a
    two-stage run, `localiser`: where its crop was cut (`localiser[target]`, from
    `localiser_metrics.point_report`). probs float [25, 3]."""
    present = np.asarray(present, bool)
    targets = {}
    for i, t in enumerate(labels.TARGETS):
        targets[t] = {**{c: float(probs[i, k]) for k, c in enumerate(labels.SEVERITY_COLUMNS)},
                      "p_moderate_or_severe": float(probs[i, 1] + probs[i, 2]),
                      "grade": labels.SEVERITY_NAMES[int(np.argmax(probs[i]))],
                      "flagged": bool(probs[i, 0] < FLAG_BELOW),
                      "series_absent": not bool(present[labels.TARGET_SERIES[i]])}
        if localiser is not None:
            targets[t]["localiser"] = localiser[t]
    return {
        "notice": RESEARCH_USE_NOTE,
        "study_id": int(study_id),
        "provenance": dict(provenance or {}),
        "series_present": {name: bool(p) for name, p in zip(labels.SERIES_TYPES, present)},
        "series_not_used": dict(unused or {}),
        "targets": targets,
    }


_REPORT_COLUMNS = ("spinal canal", "L foraminal", "R foraminal", "L subarticular", "R subarticular")
_CELL = 18


def format_study_report(report: dict) -> str:
    """Per level (rows) and condition (columns): P(Normal/Mild) P(Moderate) P(Severe); `!` marks
    P(Normal/Mild) < 0.5 and `~` a condition whose series was absent; a legend, the provenance and the
    research-use note below the table."""
    present = ", ".join(f"{n} {'yes' if p else 'ABSENT'}" for n, p in report["series_present"].items())
    lines = [f"study {report['study_id']}  (series: {present})"]
    lines += [f"  series folder {folder} not used: {why}" for folder, why in report.get("series_not_used", {}).items()]
    lines.append(f"{'level':7s}" + "".join(f"{c:>{_CELL}s}" for c in _REPORT_COLUMNS))
    for level, level_name in zip(labels.LEVELS, labels.LEVEL_CSV_NAMES):
        cells = []
        for condition in labels.CONDITIONS:
            t = report["targets"][f"{condition}_{level}"]
            mark = ("!" if t.get("flagged", t[labels.SEVERITY_COLUMNS[0]] < FLAG_BELOW) else " ") + \
                   ("~" if t.get("series_absent") else " ")
            cells.append(" ".join(f"{t[c]:.2f}" for c in labels.SEVERITY_COLUMNS) + mark)
        lines.append(f"{level_name:7s}" + "".join(f"{c:>{_CELL}s}" for c in cells))
    flagged = sum(bool(t.get("flagged")) for t in report["targets"].values())
    normal, moderate, severe = labels.SEVERITY_NAMES
    lines += [
        "",
        f"each cell: P({normal}) P({moderate}) P({severe}), summing to 1",
        f"  !  P({normal}) < {FLAG_BELOW}: {moderate} or {severe} is more "
        f"likely than not ({flagged} of {len(report['targets'])} cells)",
        "  ~  predicted without the series this condition is read on (it was absent)",
    ]
    prov = report.get("provenance") or {}
    if prov:
        lines.append(f"model {prov.get('model')} ({prov.get('package')}), run {prov.get('workdir')}: folds "
                     f"{prov.get('folds')}, {prov.get('checkpoint')} checkpoints at steps "
                     f"{prov.get('checkpoint_steps')}, flip TTA {'on' if prov.get('tta') else 'off'}")
        if "localiser_steps" in prov:
            lines.append(f"two-stage: each fold's localiser (steps {prov.get('localiser_steps')}, flip TTA) placed "
                         "the crops its classifier read; the points are in the JSON report (--json)")
        if "calibration" in prov:
            lines.append(f"probabilities {calibration_text(prov['calibration'])}")
    lines.append(report.get("notice", RESEARCH_USE_NOTE))
    return "\n".join(lines)
