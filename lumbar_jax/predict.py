"""Prediction on new studies, straight from DICOM: the Kaggle `submission.csv` and a per-study report.

Studies are read with the builder's own reader (`data.study.study_example`: same series choice, canonical
orientation, resampling and intensity normalisation as the training records), predicted by the ensemble of
the run's folds (each fold's best checkpoint; probabilities averaged) and, with `tta`, also on the
left/right-mirrored study. No prebuilt dataset is needed. A study folder (`read_study_dir`) says which of its
series folders it did not use and why (empty, no readable DICOM file, unreadable, type unknown), and one with
no usable series is refused, naming each folder's reason.

Two steps, so that a wrong argument costs seconds, not a compilation: `PredictionRun` checks the run (its
config, the folds and every checkpoint they would restore, without building a model) and reads studies;
`Predictor` then builds the models, restores every fold and compiles the eval steps once, showing progress.
A command checks its own paths (study folder, Kaggle folder, output folders) between the two.

A seed-ensemble directory of scripts/ensemble.py predicts like a run (`ensemble_prediction`): every member's
folds restored, all averaged with equal weights, calibrated with the ensemble's temperatures.

The ensemble's probabilities are calibrated with the run's per-group temperatures (cv_summary.json
'calibration', fitted on its out-of-fold predictions) for the condition groups whose cross-fitted OOF score
calibration improved, unless switched off; the provenance says per group which are calibrated. The run's
pipeline (pipelines/) restores and predicts: two-stage runs read the studies with their native series, and
each fold's localiser places the crops that fold's classifier reads; each study's points are checked for
plausibility (`point_plausibility`), and an implausible study is warned about.

The study report is `study_report` (the grade rule, the run's quality, the warnings, the provenance);
`structured_report` writes the same report as a DICOM Comprehensive 3D SR (TID 1500) that goes back to the
study's PACS.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pandas as pd
import tqdm

from lumbar_jax import calibration, ensemble_prediction, inference, localiser_metrics, point_plausibility, rundir
from lumbar_jax import structured_report, study_report
from lumbar_jax import labels
from lumbar_jax.data import problems
from lumbar_jax.data import study as study_lib
from lumbar_jax.dataset_configs import GRID_DATASETS, NATIVE_AFFINE, NATIVE_VOLUMES
from lumbar_jax.train import mesh as mesh_lib

log = logging.getLogger(__name__)

SUBMISSION_COLUMNS = ("row_id", *labels.SEVERITY_COLUMNS)


class PredictionRun:
    """A run, or a seed ensemble of runs (`ensemble_prediction`), to predict with, every argument checked before
    any model is built: its config and pipeline (a seed ensemble's first member's), `folds` (default: every
    trained fold; of every member), `checkpoint` (each fold's, and for a two-stage run its localiser's best,
    found on disk), `tta` (refused where the pipeline refuses it), the calibration (cv_summary.json, or a seed
    ensemble's ensemble_summary.json, 'calibration' unless `calibrate` is False) and the run's quality
    (`study_report.run_quality`, `ensemble_prediction.ensemble_quality`). Reads studies as the run's records
    (`read`). Errors name the file, member, fold or checkpoint."""

    def __init__(self, workdir: str, folds: list[int] | None = None, checkpoint: str | int = "best",
                 tta: bool = False, calibrate: bool = True):
        is_ensemble = ensemble_prediction.is_seed_ensemble(workdir)
        self.ensemble = ensemble_prediction.read_seed_ensemble(workdir) if is_ensemble else None
        self.members = list(self.ensemble.members) if is_ensemble else [workdir]  # the runs whose folds predict
        self.config, self.pipeline = inference.load_run(self.members[0])
        refusal = self.pipeline.tta_refusal(workdir, self.config)
        if tta and refusal:
            raise ValueError(f"flip TTA: {refusal}; predict without --tta")
        num_folds = self.config.cv.num_folds
        folds = rundir.trained_folds(self.members[0], num_folds) if folds is None else list(folds)
        if not folds:
            raise FileNotFoundError(f"{self.members[0]} has no trained fold (no fold_k/checkpoints)")
        bad = [k for k in folds if not 0 <= k < num_folds]
        if bad:
            raise ValueError(f"--fold {bad[0]} not in 0..{num_folds - 1} ({'each member of ' if is_ensemble else ''}"
                             f"the run has {num_folds} folds)")
        for member in self.members:  # every member restores the same folds: equal weights
            inference.check_run_checkpoints(member, self.pipeline, folds, checkpoint)
        self.workdir, self.folds, self.checkpoint, self.tta = workdir, [int(k) for k in folds], str(checkpoint), tta
        if is_ensemble:
            self.calibration = run_calibration(self.ensemble.summary, calibrate, rundir.ENSEMBLE_SUMMARY_FILE)
            self.quality = ensemble_prediction.ensemble_quality(self.ensemble)
        else:
            has_summary = os.path.exists(rundir.summary_path(workdir))
            self.calibration = run_calibration(rundir.read_summary(workdir) if has_summary else None, calibrate)
            self.quality = study_report.run_quality(workdir)
        self.grid = self.config.data.config in GRID_DATASETS  # records in one shared patient grid (data/grid.py)
        self.native_max_size = self.pipeline.native_max_size(self.config)
        self.volume_shape = tuple(self.config.model.volume_shape)

    def read(self, entries: list[study_lib.StudyEntry]) -> list[dict]:
        """Each study's record (docs/conventions.md section 4; with the native series for a pipeline that reads
        them), read from its DICOM series, with a progress bar; each data problem is one log line naming its
        file (`problems.warnings_in_one_line`)."""
        with problems.warnings_in_one_line():
            return [study_lib.study_example(e, self.volume_shape, grid=self.grid,
                                            native_max_size=self.native_max_size)
                    for e in tqdm.tqdm(entries, desc="reading studies", unit="study", disable=len(entries) < 2)]


class Predictor:
    """The ensemble of a checked `PredictionRun`'s folds (of every member of a seed ensemble) at its checkpoint,
    on the devices present, calibrated as the run says. Building it restores every fold (a progress bar) and
    compiles the eval steps once (a status line before, the time after); `timings` holds the seconds of each
    ('build_s', 'restore_s', 'compile_s').

    The run's pipeline restores the folds and predicts (`pipelines.base.Restorer`). One-stage runs: each fold's
    study model, optionally with flip TTA. Two-stage runs: each fold's localiser (flip TTA, as in training)
    places the crops its classifier reads; `tta` is refused (left crops are already mirrored, so a flipped
    study gives the classifier the same crops)."""

    def __init__(self, run: PredictionRun):
        self.run = run
        self.mesh = mesh_lib.make_mesh()
        t0 = time.perf_counter()
        log.info("building the %s models of %s (a status line follows when they are built)", run.pipeline.name,
                 run.workdir)
        # one restorer for every member: they differ only in seed (Restorer.restore); models member after member
        self.restorer = run.pipeline.restorer(run.members[0], run.config, self.mesh)
        t1 = time.perf_counter()
        member_folds = [(member, k) for member in run.members for k in run.folds]
        self.models = [self.restorer.restore(k, run.checkpoint, member) for member, k in
                       tqdm.tqdm(member_folds, desc=f"restoring folds ({run.checkpoint})", unit="fold")]
        t2 = time.perf_counter()
        log.info("built in %.1f s, restored in %.1f s; compiling the eval steps (once for every fold; a minute or "
                 "two on a CPU for the default run)", t1 - t0, t2 - t1)
        self.predict([self.restorer.blank_record()])
        self.timings = {"build_s": t1 - t0, "restore_s": t2 - t1, "compile_s": time.perf_counter() - t2}
        log.info("ensemble of %sfolds %s (%s checkpoints, steps %s)%s%s; %s; compiled in %.1f s",
                 f"{len(run.members)} seed-ensemble members' " if run.ensemble else "", run.folds, run.checkpoint,
                 [int(m.step) for m in self.models], " with flip TTA" if run.tta else "",
                 ", crops at each fold's localiser's points" if run.pipeline.localises else "",
                 study_report.calibration_text(run.calibration), self.timings["compile_s"])

    def provenance(self) -> dict:
        """Where a prediction comes from: the run, its folds and checkpoint steps, TTA, the calibration, the
        model and the package version (JSON-able), the pipeline's own part (two-stage: the pipeline and
        localiser steps) and, for a seed ensemble, 'seed_ensemble' (`ensemble_prediction.ensemble_provenance`:
        the members, their seeds, folds and steps); steps are then every member's, member after member."""
        run = self.run
        out = {"workdir": os.path.abspath(run.workdir), "folds": list(run.folds), "checkpoint": run.checkpoint,
               "checkpoint_steps": [int(m.step) for m in self.models], "tta": bool(run.tta),
               "calibration": dict(run.calibration), "model": str(run.config.model.name),
               "dataset_config": str(run.config.data.config), "package": f"lumbar_jax {package_version()}"}
        out.update(self.restorer.provenance(self.models))
        if run.ensemble:
            out["seed_ensemble"] = ensemble_prediction.ensemble_provenance(run.ensemble, run.folds, self.models,
                                                                           self.restorer)
        return out

    def predict(self, records: list[dict]) -> np.ndarray:
        """Probabilities float64 [N, 25, 3] of `records`, rows summing to 1."""
        return self.predict_with_points(records)[0]

    def predict_with_points(self, records: list[dict]) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities float64 [N, 25, 3], rows summing to 1, calibrated when the run's calibration says so;
        each fold's points float [F, N, 25, 3] for a pipeline that localises, else None; F = members x folds for
        a seed ensemble)."""
        probs, points = self.restorer.predict(self.models, records, self.run.tta)
        probs = probs.astype(np.float64)
        probs /= probs.sum(axis=-1, keepdims=True)
        if self.run.calibration["applied"]:
            probs = calibration.apply_selected(probs, self.run.calibration["temperatures"])
        return probs, points


def run_calibration(summary: dict | None, calibrate: bool = True, summary_file: str = rundir.SUMMARY_FILE) -> dict:
    """Whether predictions are calibrated, and how, by `summary`, the CV summary of what predicts (a run's
    cv_summary.json, None when it has none; a seed ensemble's ensemble_summary.json 'ensemble', named by
    `summary_file`): {'applied': True, 'temperatures': {group: T} of the calibrated groups only, 'groups':
    {group: True/False} for every group} (its 'calibration': a group is calibrated only where its cross-fitted
    OOF score improved), or {'applied': False, 'reason': why not, 'groups': ...} (switched off, no summary, or
    no group improved)."""
    uncalibrated = dict.fromkeys(labels.CONDITION_GROUPS, False)
    if not calibrate:
        return {"applied": False, "reason": "switched off (--no_calibration)", "groups": uncalibrated}
    if summary is None:
        return {"applied": False, "reason": f"no {rundir.SUMMARY_FILE} (the run has not finished every fold)",
                "groups": uncalibrated}
    record = summary.get("calibration", {})
    temperatures = calibration.applied_temperatures(record)
    groups = {g: g in temperatures for g in labels.CONDITION_GROUPS}
    if not temperatures:
        why = ("calibration improved no group's cross-fitted OOF score" if "groups" in record else
               f"{summary_file} has no per-group calibration verdict")
        return {"applied": False, "reason": why, "groups": groups}
    return {"applied": True, "temperatures": temperatures, "groups": groups}


def point_warnings(record: dict, fold_points: np.ndarray) -> list[str]:
    """`point_plausibility.implausible_points` of one `*_native` record's points, each fold's float [F, 25, 3]."""
    shapes = np.array([np.shape(record[name]) for name in NATIVE_VOLUMES])
    return point_plausibility.implausible_points(fold_points, record[NATIVE_AFFINE], shapes, record["present"])


def timing_text(timings: dict, total_s: float) -> str:
    """'28.1 s wall: start-up 8.2 s (imports, checks), build 2.0 s, restore 1.1 s, compile 4.2 s, read 0.7 s,
    predict 1.4 s' from `timings` (seconds of each phase: 'build_s', 'restore_s', 'compile_s', 'read_s',
    'predict_s') and the command's wall time so far; the start-up is what the phases leave of it."""
    phases = [(name.removesuffix("_s"), timings[name])
              for name in ("build_s", "restore_s", "compile_s", "read_s", "predict_s") if name in timings]
    start_up = total_s - sum(seconds for _, seconds in phases)
    return (f"{total_s:.1f} s wall: start-up {start_up:.1f} s (imports, checks), "
            + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases))


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


def split_entries(data_dir: str, split: str = "test") -> list[study_lib.StudyEntry]:
    """The studies of `{data_dir}/{split}_series_descriptions.csv` (no DICOM read); FileNotFoundError or
    ValueError naming the folder or file when there is none."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir} not found (or not a directory)")
    if not study_lib.has_split(data_dir, split):
        raise FileNotFoundError(f"{data_dir}/{split}_series_descriptions.csv not found (expected the Kaggle "
                                "competition layout)")
    with problems.warnings_in_one_line():
        entries = study_lib.list_studies(data_dir, split)
    if not entries:
        raise ValueError(f"{data_dir}/{split}_series_descriptions.csv lists no study")
    return entries


def predict_split(predictor: Predictor, entries: list[study_lib.StudyEntry], sr_dir: str | None = None
                  ) -> tuple[pd.DataFrame, dict]:
    """Submission table of `entries` (`split_entries`) and what happened: {'studies', 'absent_series',
    'implausible_studies' (those whose localised points are implausible, each warned about; 0 for a pipeline
    that does not localise), 'read_s', 'predict_s', 'studies_per_s' (reading and predicting, after the one-off
    restore and compilation)}. With `sr_dir`, also each study's DICOM SR (`structured_report`) as
    `{sr_dir}/{study_id}.dcm` (the folder is created), and 'structured_reports_s'."""
    t0 = time.perf_counter()
    records = predictor.run.read(entries)
    t1 = time.perf_counter()
    probs, points = predictor.predict_with_points(records)
    t2 = time.perf_counter()
    implausible = 0
    for n, record in enumerate(records if points is not None else []):
        lines = point_warnings(record, points[:, n])
        for line in lines:
            log.warning("study %d: localised points implausible: %s", int(record["study_id"]), line)
        implausible += bool(lines)
    absent = sum(int((~r["present"]).sum()) for r in records)
    timing = {"studies": len(entries), "absent_series": absent, "implausible_studies": implausible,
              "read_s": t1 - t0, "predict_s": t2 - t1, "studies_per_s": len(entries) / (t2 - t0)}
    if sr_dir is not None:
        os.makedirs(sr_dir, exist_ok=True)
        for i, (entry, record) in enumerate(zip(entries, records)):
            report = report_of(predictor, entry, record, probs[i], None if points is None else points[:, i])
            write_structured_report(report, entry, record, os.path.join(sr_dir, f"{entry.study_id}.dcm"))
        timing["structured_reports_s"] = time.perf_counter() - t2
    return submission_frame(np.array([e.study_id for e in entries]), probs), timing


def read_study_dir(run: PredictionRun, study_dir: str, descriptions_csv: str | None = None
                   ) -> tuple[study_lib.StudyEntry, dict, dict[str, str]]:
    """One study folder -> (its StudyEntry, its record, {series folder: why it was not used}), read as the run's
    records (no model needed). ValueError naming the folder and each series folder's reason when no series of
    it can be used (a prediction without any image would be the class prior, not a prediction of this study)."""
    if descriptions_csv is not None and not os.path.isfile(descriptions_csv):
        raise FileNotFoundError(f"--descriptions {descriptions_csv} not found (or not a file)")
    t0 = time.perf_counter()
    with problems.collect() as found, problems.warnings_in_one_line():
        entry = study_lib.study_from_directory(study_dir, descriptions_csv)
        record = run.read([entry])[0]
    unused = unused_series_folders(study_dir, record["series_ids"], found)
    log.info("study %s: read %d of %d series in %.1f s (%s)", entry.study_id, int(np.sum(record["present"])),
             len(labels.SERIES_TYPES), time.perf_counter() - t0,
             ", ".join(n for n, p in zip(labels.SERIES_TYPES, record["present"]) if p) or "none")
    if not np.any(record["present"]):
        reasons = "; ".join(f"{os.path.basename(d)}: {why}" for d, why in unused.items()) or "it has no subfolder"
        raise ValueError(f"study folder {study_dir} has no usable series ({reasons})")
    return entry, record, unused


def predict_study(predictor: Predictor, entry: study_lib.StudyEntry, record: dict, unused: dict[str, str]
                  ) -> tuple[dict, float]:
    """A study read by `read_study_dir` -> (its `study_report.study_report`: the run's quality, the provenance,
    the series not used and, for a two-stage run, where each target's crop was cut and whether those points
    are plausible; the seconds predicting it took)."""
    t0 = time.perf_counter()
    probs, points = predictor.predict_with_points([record])
    predict_s = time.perf_counter() - t0
    return report_of(predictor, entry, record, probs[0], None if points is None else points[:, 0], unused), predict_s


def report_of(predictor: Predictor, entry: study_lib.StudyEntry, record: dict, probs: np.ndarray,
              fold_points: np.ndarray | None, unused: dict[str, str] | None = None) -> dict:
    """The `study_report.study_report` of one predicted study: probs float [25, 3], each fold's points float
    [F, 25, 3] (None for a pipeline that does not localise)."""
    localiser = None if fold_points is None else localiser_metrics.point_report(record, fold_points)
    implausible = [] if fold_points is None else point_warnings(record, fold_points)
    return study_report.study_report(entry.study_id, record["present"], probs, unused, predictor.provenance(),
                                     localiser, predictor.run.quality, implausible)


def write_structured_report(report: dict, entry: study_lib.StudyEntry, record: dict, path: str) -> None:
    """Write a study's report as a DICOM SR to `path`, referencing the series its record was read from."""
    structured_report.write(report, study_lib.chosen_series_dirs(entry, record["series_ids"]), path)
    log.info("study %s: wrote its DICOM SR %s", entry.study_id, path)


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
