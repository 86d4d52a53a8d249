"""predict.py on a seed-ensemble directory (lumbar_jax/ensemble_prediction.py): the probabilities are the mean of
the members' uncalibrated ones, calibrated with the ensemble's temperatures; the report, JSON and DICOM SR name
the members and the ensemble's OOF score; a missing or unfinished member, one without the folds asked for, and
a fold out of range or flip TTA are refused in one line before any model is built.

Two seeds of the tiny two-stage run of tests/test_two_stage_prediction.py (1 step per stage) are trained once
per module through `seed_ensemble` on a synthetic Kaggle folder with 2 test studies.
"""

import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from lumbar_jax import calibration, predict, rundir, seed_ensemble, study_report
from lumbar_jax import labels as labels_lib
from lumbar_jax.data import study
from tests.test_evaluate_predict import run_script
from tests.test_structured_report import assert_sr_holds_the_report, sr_provenance
from tests.test_two_stage_prediction import (predict_first_test_study, synthetic_kaggle_and_records,
                                             tiny_two_stage_config)

TEMPERATURES = {"spinal": 2.0, "foraminal": 0.5}  # set on a copy of the ensemble: far from 1, so they show


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """(kaggle dir with 2 test studies, the seed-ensemble dir of seeds 0 and 1, their run dirs)."""
    root = tmp_path_factory.mktemp("ensemble_prediction")
    kaggle, tfds_dir = synthetic_kaggle_and_records(root, num_test_studies=2)
    workdir = str(root / "ensemble")
    members = seed_ensemble.train_seeds(tiny_two_stage_config(tfds_dir, steps=1), workdir, [0, 1])
    seed_ensemble.write_ensemble(workdir, *seed_ensemble.average_runs(members))
    return kaggle, workdir, members


def _ensemble_copy(workdir: str, path, edit) -> str:
    """A new ensemble directory at `path` holding only `workdir`'s ensemble_summary.json, edited by `edit`."""
    os.makedirs(path)
    with open(os.path.join(workdir, rundir.ENSEMBLE_SUMMARY_FILE)) as f:
        summary = json.load(f)
    edit(summary)
    with open(os.path.join(path, rundir.ENSEMBLE_SUMMARY_FILE), "w") as f:
        json.dump(summary, f)
    return str(path)


def _probabilities(table: pd.DataFrame) -> np.ndarray:
    return table[list(labels_lib.SEVERITY_COLUMNS)].to_numpy().reshape(-1, labels_lib.NUM_TARGETS, 3)


def test_the_ensemble_is_the_mean_of_its_members_calibrated_with_its_own_temperatures(ensemble, tmp_path, capsys):
    kaggle, workdir, members = ensemble
    entries = predict.split_entries(kaggle)

    def uncalibrated(source: str) -> np.ndarray:
        table, _ = predict.predict_split(predict.Predictor(predict.PredictionRun(source, calibrate=False)), entries)
        return _probabilities(table)

    mean = np.mean([uncalibrated(member) for member in members], axis=0)
    np.testing.assert_allclose(uncalibrated(workdir), mean, atol=1e-6)

    def calibrate(summary: dict) -> None:
        summary["ensemble"]["calibration"].update(groups=dict.fromkeys(labels_lib.CONDITION_GROUPS, {}),
                                                  temperatures=TEMPERATURES)

    moved = _ensemble_copy(workdir, tmp_path / "elsewhere", calibrate)  # finds the members by absolute path
    out = str(tmp_path / "submission.csv")
    assert run_script("predict.py", "--workdir", moved, "--data_dir", kaggle, "--output", out) == 0
    expected = calibration.apply_selected(mean, TEMPERATURES)  # the ensemble's temperatures, not the members'
    np.testing.assert_allclose(_probabilities(pd.read_csv(out)), expected, rtol=1e-4, atol=1e-6)
    printed = capsys.readouterr().out
    score = json.load(open(os.path.join(workdir, rundir.ENSEMBLE_SUMMARY_FILE)))["ensemble"]["oof"]["score"]
    assert f"run quality (seed ensemble of 2 members, their average): out-of-fold score {score:.4f}" in printed
    assert "(mean of the 2 members' figures)" in printed
    assert re.search(r"^time: [\d.]+ s wall: .* build [\d.]+ s, restore [\d.]+ s, compile [\d.]+ s", printed, re.M)


def test_study_report_json_and_sr_name_the_members_and_the_ensembles_score(ensemble, tmp_path, capsys):
    kaggle, workdir, members = ensemble
    entry, _, out, sr = predict_first_test_study(kaggle, workdir, tmp_path)
    printed = capsys.readouterr().out
    report = json.load(open(out))
    summary = json.load(open(os.path.join(workdir, rundir.ENSEMBLE_SUMMARY_FILE)))
    quality = report["run_quality"]
    assert quality["oof_score"] == summary["ensemble"]["oof"]["score"]
    assert quality["source"] == os.path.abspath(os.path.join(workdir, rundir.ENSEMBLE_SUMMARY_FILE))
    prov = report["provenance"]
    assert [(m["workdir"], m["seed"], m["folds"]) for m in prov["seed_ensemble"]["members"]] == [
        (os.path.abspath(members[0]), 0, [0, 1]), (os.path.abspath(members[1]), 1, [0, 1])]
    assert len(prov["checkpoint_steps"]) == len(prov["localiser_steps"]) == 4  # 2 members x 2 folds
    assert all(len(t["localiser"]["point"]) == 3 for t in report["targets"].values())
    assert f"seed ensemble {os.path.abspath(workdir)}: folds [0, 1] of each member" in printed
    assert f"seed 1 {os.path.abspath(members[1])} (steps [1, 1])" in printed
    assert study_report.quality_text(quality) in printed
    series_dirs = study.chosen_series_dirs(entry, predict.PredictionRun(workdir).read([entry])[0]["series_ids"])
    dataset, _ = assert_sr_holds_the_report(sr, report, series_dirs)
    assert sr_provenance(dataset)["seed_ensemble"] == prov["seed_ensemble"]


def test_a_missing_unfinished_or_foldless_member_and_a_bad_fold_are_refused_before_any_model(
        ensemble, tmp_path, capsys, monkeypatch):
    kaggle, workdir, members = ensemble
    monkeypatch.setattr(predict.Predictor, "__init__", lambda *_: pytest.fail("a model was built"))
    unfinished = str(tmp_path / "unfinished")
    shutil.copytree(members[1], unfinished, ignore=shutil.ignore_patterns(rundir.SUMMARY_FILE))
    foldless = str(tmp_path / "foldless")
    shutil.copytree(members[1], foldless, ignore=shutil.ignore_patterns(rundir.CHECKPOINTS_DIR))
    cases = []
    for name, member, named in (("missing", str(tmp_path / "gone"), "no such run directory"),
                                ("unfinished", unfinished, "the run is unfinished"),
                                ("foldless", foldless, "fold 0 of")):
        copy = _ensemble_copy(workdir, tmp_path / f"ensemble_{name}",
                              lambda summary, member=member: summary["members"][1].update(workdir=member))
        cases.append((copy, [], [member, named]))
    cases.append((workdir, ["--fold", "7"], ["--fold 7 not in 0..1 (each member of the run has 2 folds)"]))
    cases.append((workdir, ["--tta"], ["flip TTA: ", "is a two-stage run"]))
    for source, flags, named in cases:
        assert run_script("predict.py", "--workdir", source, "--data_dir", kaggle,
                          "--output", str(tmp_path / "s.csv"), *flags) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("error: ") and all(n in error for n in named), error
