"""Checkpoint evaluation and prediction on a tiny trained run: reproduces the CV summary, restores on fewer
devices, writes a valid submission from DICOM, per-study reports, left/right-aware TTA, clear errors.

One tiny run (2 folds x 2 steps, tiny ViT with the target-query head, 4 fake CPU devices) is trained once per
module on a synthetic Kaggle folder that also holds unlabelled test studies.
"""

import json
import logging
import os
import runpy
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

from lumbar_jax import calibration, cross_validation, evaluate, predict, rundir, study_report
from lumbar_jax.analysis import attention as attention_lib
from lumbar_jax.analysis import Drawn, write_report
from lumbar_jax.models.heads import token_centres
from lumbar_jax import labels
from lumbar_jax.data import augment, build, dataset, study, synthetic
from lumbar_jax.train import config as config_lib
from lumbar_jax.train import mesh as mesh_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(kaggle dir with train + test studies, trained run dir)."""
    root = tmp_path_factory.mktemp("eval_run")
    kaggle = str(root / "kaggle")
    synthetic.write_synthetic_dataset(kaggle, synthetic.DatasetSpec(12, seed=5, num_test_studies=3), progress=False)
    build.build_dataset(kaggle, str(root / "tfds"), "r64", workers=1)
    c = config_lib.apply_variant(config_lib.default_config(), "smoke")
    c.data.data_dir = str(root / "tfds")
    c.model.update(name="vit", head_hidden=32, drop_path=0.0)
    c.train.update(batch_size=4, eval_batch_size=4, steps=2, warmup_steps=1, eval_every=1, checkpoint_every=1,
                   log_every=1)
    workdir = str(root / "run")
    cross_validation.cross_validate(c, workdir)
    return kaggle, workdir


def run_script(name: str, *argv: str) -> int:
    """Run scripts/{name} in-process with `argv`; its exit code. The root logger's handlers are put back after
    it (its `cli.setup_logging` points them at this test's captured stderr, closed once the test ends)."""
    old, handlers, level = sys.argv, logging.root.handlers[:], logging.root.level
    sys.argv = [name, *argv]
    try:
        runpy.run_path(os.path.join(REPO, "scripts", name), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = old
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
    return 0


def test_evaluating_best_checkpoints_reproduces_the_cv_summary(run):
    _, workdir = run
    report = evaluate.evaluate_run(workdir)
    trained = json.load(open(os.path.join(workdir, "cv_summary.json")))
    assert report["reproduces_cv_summary"]
    assert report["oof"]["score"] == pytest.approx(trained["oof"]["score"], abs=1e-5)
    assert report["oof"]["baseline"]["score"] == pytest.approx(trained["oof"]["baseline"]["score"])
    for got, want in zip(report["folds"], trained["folds"]):
        assert got["step"] == want["best_step"]
        assert got["val"]["score"] == pytest.approx(want["val"]["score"], abs=1e-5)
        assert got["val"]["peak_distance"] == pytest.approx(want["val"]["peak_distance"], abs=1e-3)
        assert {"recall_normal_mild", "any_severe_spinal", "balanced_accuracy"} <= set(got["val"])
    table = evaluate.format_report(report)
    assert "OOF" in table and "reproduced" in table and "any_severe_spinal" in table


def test_checkpoint_written_on_four_devices_restores_on_one(run):
    _, workdir = run
    four = evaluate.evaluate_run(workdir, folds=[1])
    one = evaluate.evaluate_run(workdir, folds=[1], mesh=mesh_lib.make_mesh(1))
    assert (four["devices"], one["devices"]) == (4, 1)
    assert one["folds"][0]["val"]["score"] == pytest.approx(four["folds"][0]["val"]["score"], abs=1e-5)
    assert "oof" not in one  # one fold is not an out-of-fold score


def test_checkpoint_choice_latest_and_step_and_bad_requests(run):
    _, workdir = run
    latest = evaluate.evaluate_run(workdir, folds=[0], checkpoint="latest")
    assert latest["folds"][0]["step"] == 2
    assert evaluate.evaluate_run(workdir, folds=[0], checkpoint="2")["folds"][0]["val"]["score"] == pytest.approx(
        latest["folds"][0]["val"]["score"])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7 .*steps kept: \[.*2\]"):
        evaluate.evaluate_run(workdir, folds=[0], checkpoint="7")
    with pytest.raises(ValueError, match="'best', 'latest' or a step"):
        evaluate.evaluate_run(workdir, folds=[0], checkpoint="newest")
    with pytest.raises(ValueError, match="--fold 5 not in 0..1"):
        evaluate.evaluate_run(workdir, folds=[5])


def test_evaluate_script_prints_and_writes_json(run, tmp_path, capsys):
    _, workdir = run
    out = str(tmp_path / "eval.json")
    assert run_script("evaluate.py", "--workdir", workdir, "--fold", "0", "--output", out) == 0
    assert "fold 0" in capsys.readouterr().out
    assert json.load(open(out))["folds"][0]["fold"] == 0
    assert run_script("evaluate.py", "--workdir", str(tmp_path / "nowhere")) == 2
    assert "nowhere/config.json not found" in capsys.readouterr().err


def test_submission_has_exactly_the_expected_rows_and_valid_probabilities(run, tmp_path, capsys):
    kaggle, workdir = run
    out = str(tmp_path / "submission.csv")
    assert run_script("predict.py", "--workdir", workdir, "--data_dir", kaggle, "--output", out) == 0
    assert "studies/s" in capsys.readouterr().out
    submission = pd.read_csv(out)
    expected = pd.read_csv(os.path.join(kaggle, "sample_submission.csv"))
    assert list(submission.columns) == ["row_id", "normal_mild", "moderate", "severe"]
    assert submission["row_id"].tolist() == expected["row_id"].tolist()  # row by row, 25 per test study
    values = submission[list(labels.SEVERITY_COLUMNS)].to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all()
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-5)


def test_study_with_a_missing_series_still_gets_all_its_rows(run, tmp_path):
    kaggle, workdir = run
    copy = str(tmp_path / "kaggle")
    shutil.copytree(kaggle, copy, ignore=shutil.ignore_patterns("train_images", "tfds"))
    first = study.list_studies(copy, "test")[0]
    sid, series_dir = first.series_dirs[2][0]  # drop its axial series
    shutil.rmtree(series_dir)
    predictor = predict.Predictor(predict.PredictionRun(workdir))
    table, timing = predict.predict_split(predictor, predict.split_entries(copy))
    assert timing["absent_series"] >= 1 and len(table) == 25 * timing["studies"]
    rows = table[table["row_id"].str.startswith(f"{first.study_id}_")]
    assert len(rows) == 25 and np.isfinite(rows[list(labels.SEVERITY_COLUMNS)].to_numpy()).all()


def test_flip_tta_is_left_right_equivariant(run):
    kaggle, workdir = run
    predictor = predict.Predictor(predict.PredictionRun(workdir, tta=True))
    record = predictor.run.read(study.list_studies(kaggle, "test")[:1])[0]
    mirrored = {**augment.flip_left_right(record), "study_id": record["study_id"] + 1}
    probs = predictor.predict([record, mirrored])
    np.testing.assert_allclose(probs[1], augment.unflip_predictions(probs[0]), atol=1e-5)
    plain = predict.Predictor(predict.PredictionRun(workdir)).predict([record])
    assert not np.allclose(plain[0], probs[0], atol=1e-6)  # the flip pass changed something


def with_spinal_calibrated(summary: dict) -> dict:
    """`summary` whose calibration verdict keeps only the spinal temperature (2.0), as cross_fitted writes it."""
    groups = {g: {"before": 1.0, "after": 0.9 if g == "spinal" else 1.1, "calibrated": g == "spinal",
                  "temperature": 2.0} for g in labels.CONDITION_GROUPS}
    summary["calibration"].update(groups=groups, calibrated=["spinal"], temperatures={"spinal": 2.0})
    return summary


def test_one_stage_predictions_are_calibrated_only_in_the_groups_it_helped_unless_switched_off(run, monkeypatch):
    kaggle, workdir = run
    summary = with_spinal_calibrated(rundir.read_summary(workdir))
    monkeypatch.setattr(rundir, "read_summary", lambda _: summary)
    calibrated = predict.Predictor(predict.PredictionRun(workdir))
    plain = predict.Predictor(predict.PredictionRun(workdir, calibrate=False))
    records = plain.run.read(study.list_studies(kaggle, "test")[:2])
    full = dict.fromkeys(labels.CONDITION_GROUPS, 1.0) | {"spinal": 2.0}
    np.testing.assert_allclose(calibrated.predict(records),
                               calibration.apply_temperatures(plain.predict(records), full), atol=1e-9)
    assert calibrated.provenance()["calibration"] == {
        "applied": True, "temperatures": {"spinal": 2.0},
        "groups": {"spinal": True, "foraminal": False, "subarticular": False}}
    assert plain.provenance()["calibration"]["applied"] is False
    assert ("probabilities calibrated per condition group: spinal T=2.00, foraminal uncalibrated (no gain), "
            "subarticular uncalibrated (no gain)") in study_report.format_study_report(
        study_report.study_report(1, np.ones(3, bool), calibrated.predict(records)[0],
                                  provenance=calibrated.provenance()))


def test_study_dir_report_from_dicom_descriptions_and_from_csv(run, tmp_path, capsys):
    kaggle, workdir = run
    entry = study.list_studies(kaggle, "test")[0]
    study_dir = os.path.dirname(entry.series_dirs[1][0][1])
    out = str(tmp_path / "report.json")
    assert run_script("predict.py", "--workdir", workdir, "--study_dir", study_dir, "--json", out) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert all(name in printed for name in labels.LEVEL_CSV_NAMES) and "R subarticular" in printed
    assert "each cell: P(Normal/Mild) P(Moderate) P(Severe)" in printed and "Research use only" in printed
    assert f"run {os.path.abspath(workdir)}: folds [0, 1], best checkpoints at steps" in printed
    assert "INFO lumbar_jax.predict: ensemble of folds [0, 1]" in captured.err  # not swallowed by absl
    assert f"INFO lumbar_jax.predict: study {entry.study_id}: read 3 of 3 series" in captured.err
    report = json.load(open(out))
    assert report["study_id"] == entry.study_id and len(report["targets"]) == 25
    assert all(report["series_present"].values())
    assert "not a medical device" in report["notice"]
    prov = report["provenance"]
    assert prov["workdir"] == os.path.abspath(workdir) and prov["folds"] == [0, 1] and prov["tta"] is False
    assert prov["checkpoint"] == "best" and len(prov["checkpoint_steps"]) == 2
    assert prov["model"] == "vit" and prov["package"] == f"lumbar_jax {predict.package_version()}"
    target = report["targets"][labels.TARGETS[0]]
    assert target["p_moderate_or_severe"] == pytest.approx(target["moderate"] + target["severe"])
    assert target["flagged"] == (target["normal_mild"] < 0.5) and target["series_absent"] is False
    from_csv = study.study_from_directory(study_dir, os.path.join(kaggle, "test_series_descriptions.csv"))
    assert from_csv.series_dirs == study.study_from_directory(study_dir).series_dirs
    assert [[sid for sid, _ in c] for c in from_csv.series_dirs] == [[sid for sid, _ in c] for c in entry.series_dirs]


def test_study_report_shows_all_three_probabilities_and_flags_normal_mild_below_half():
    probs = np.tile([0.8, 0.15, 0.05], (25, 1))
    probs[labels.TARGETS.index("spinal_canal_stenosis_l4_l5")] = [0.40, 0.35, 0.25]  # Normal/Mild likeliest, 60 % worse
    present = np.array([True, True, False])  # no axial T2: the subarticular columns are predicted without it
    prov = {"workdir": "/runs/x", "folds": [0, 1], "checkpoint": "best", "checkpoint_steps": [7, 9], "tta": True,
            "model": "vit_effnet", "package": "lumbar_jax 0.1.0"}
    report = study_report.study_report(123, present, probs, provenance=prov)
    assert report["targets"]["spinal_canal_stenosis_l4_l5"]["flagged"]
    assert report["targets"]["spinal_canal_stenosis_l4_l5"]["grade"] == "Moderate"  # the median severity
    assert report["targets"]["spinal_canal_stenosis_l4_l5"]["p_moderate_or_severe"] == pytest.approx(0.6)
    assert sum(t["flagged"] for t in report["targets"].values()) == 1
    assert [t["series_absent"] for t in report["targets"].values()] == [False] * 15 + [True] * 10
    text = study_report.format_study_report(report)
    rows = {line.split()[0]: line for line in text.splitlines() if line[:5] in {"L1/L2", "L4/L5"}}
    assert "0.40 0.35 0.25!" in rows["L4/L5"] and "0.40" not in rows["L1/L2"]
    assert rows["L4/L5"].count("!") == 1 and rows["L1/L2"].count("~") == 2 and "!" not in rows["L1/L2"]
    assert "  !  grade Moderate or Severe (flagged): P(Normal/Mild) < 0.5, so Moderate or Severe is more likely " \
           "than not (1 of 25 cells;" in text
    assert "  ~  predicted without the series this condition is read on" in text
    assert "model vit_effnet (lumbar_jax 0.1.0), run /runs/x: folds [0, 1], best checkpoints at steps [7, 9], " \
           "flip TTA on" in text
    assert text.splitlines()[-1] == study_report.RESEARCH_USE_NOTE
    assert "not a medical device" in study_report.RESEARCH_USE_NOTE


@pytest.mark.parametrize("probs, grade", [
    ([0.407, 0.350, 0.243], "Moderate"),  # the case: P(Moderate or Severe) 0.593, Normal/Mild likeliest
    ([0.500, 0.300, 0.200], "Normal/Mild"),  # exactly half: not more likely than not
    ([0.300, 0.100, 0.600], "Severe"),
    ([0.450, 0.100, 0.450], "Moderate"),  # Moderate is the median although the least likely
    ([0.900, 0.050, 0.050], "Normal/Mild")])
def test_grade_and_flagged_follow_one_rule(probs, grade):
    rows = np.tile(probs, (25, 1))
    report = study_report.study_report(1, np.ones(3, bool), rows)
    target = report["targets"][labels.TARGETS[0]]
    assert target["grade"] == grade
    assert target["flagged"] == (grade != "Normal/Mild") == (target["normal_mild"] < 0.5)


def test_grade_and_flagged_agree_on_any_probabilities():
    probs = np.random.default_rng(0).dirichlet([1, 1, 1], size=(4, 25))
    for rows in probs:
        for t in study_report.study_report(1, np.ones(3, bool), rows)["targets"].values():
            assert t["flagged"] == (t["grade"] != "Normal/Mild") == (t["normal_mild"] < 0.5)
            assert (t["grade"] == "Severe") == (t["severe"] > 0.5)


def test_run_records_the_dataset_it_trained_on(run):
    kaggle, workdir = run
    record = rundir.read_dataset_record(workdir)
    assert record == dataset.dataset_record(os.path.join(os.path.dirname(kaggle), "tfds"), "r64")
    assert record["source"]["manual_dir"] == os.path.abspath(kaggle) and record["studies"]["train"] == 12


def test_study_dir_names_an_empty_series_folder_and_writes_no_json_unasked(run, tmp_path, capsys, monkeypatch):
    kaggle, workdir = run
    entry = study.list_studies(kaggle, "test")[0]
    study_dir = str(tmp_path / str(entry.study_id))
    shutil.copytree(os.path.dirname(entry.series_dirs[1][0][1]), study_dir)
    empty = os.path.join(study_dir, "12345")
    os.mkdir(empty)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert run_script("predict.py", "--workdir", workdir, "--study_dir", study_dir) == 0  # no --json
    printed = capsys.readouterr().out
    assert f"series folder {empty} not used: empty series folder (no .dcm file)" in printed
    assert "ABSENT" not in printed and "wrote" not in printed
    assert os.listdir(cwd) == [] and sorted(os.listdir(tmp_path)) == sorted(["cwd", str(entry.study_id)])
    assert not [f for _, _, files in os.walk(tmp_path) for f in files if f.endswith(".json")]  # no JSON anywhere


def test_study_dir_without_a_usable_series_is_an_error_naming_each_folder(run, tmp_path, capsys):
    _, workdir = run
    study_dir = tmp_path / "4242"
    (study_dir / "1").mkdir(parents=True)
    (study_dir / "2").mkdir()
    (study_dir / "2" / "1.dcm").write_bytes(b"not a DICOM file")
    assert run_script("predict.py", "--workdir", workdir, "--study_dir", str(study_dir)) == 2
    err = capsys.readouterr().err
    assert f"error: study folder {study_dir} has no usable series (1: empty series folder (no .dcm file); 2: " in err
    assert not os.path.exists("4242_report.json")


@pytest.mark.parametrize("description, kind", [
    ("Sagittal T1", 0), ("Sagittal T2/STIR", 1), ("Axial T2", 2), ("SAG T1 FSE", 0), ("sag_stir", 1),
    ("AX T2 FRFSE", 2), ("COR T2", None), ("Localizer", None)])
def test_series_type_of_description(description, kind):
    assert study.series_type_of_description(description) == kind


def test_prediction_errors_name_what_is_wrong(run, tmp_path, capsys):
    kaggle, workdir = run
    assert run_script("predict.py", "--workdir", str(tmp_path), "--data_dir", kaggle) == 2
    assert "config.json not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_script("predict.py", "--workdir", workdir, "--data_dir", str(empty)) == 2
    assert "test_series_descriptions.csv not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not finite or do not sum to 1"):
        predict.submission_frame(np.array([1]), np.full((1, 25, 3), np.nan))
    shutil.copy(os.path.join(workdir, "config.json"), tmp_path / "config.json")
    assert rundir.trained_folds(str(tmp_path), 2) == []
    with pytest.raises(FileNotFoundError, match="has no trained fold"):
        predict.PredictionRun(str(tmp_path))


def test_attention_density_puts_each_key_on_its_cell():
    layout = {"volume_shape": (4, 8, 8), "grids": ((2, 2, 2), (1, 1, 1)),
              "series": np.r_[np.repeat(np.arange(3), 8), np.arange(3)],
              "centres": np.r_[np.tile(token_centres((2, 2, 2), (4, 8, 8)), (3, 1)), np.full((3, 3), 0.5)]}
    attention = np.zeros(3 * 8 + 3)
    attention[8 + 7] = 0.75  # series 1, ViT cell (1, 1, 1): voxels [2:4, 4:8, 4:8]
    attention[24 + 2] = 0.25  # series 2, the one EfficientNet cell: the whole volume
    heat = attention_lib.attention_volumes(attention, layout, 3)
    assert heat.shape == (3, 4, 8, 8) and heat.sum() == pytest.approx(1.0)
    assert heat[1, 2:, 4:, 4:].sum() == pytest.approx(0.75) and heat[1].sum() == pytest.approx(0.75)
    np.testing.assert_allclose(attention_lib.attention_peak(attention, layout, 1), [2.5, 5.5, 5.5])  # cell centre
    np.testing.assert_allclose(heat[2], 0.25 / 256)


@pytest.mark.filterwarnings("ignore::lumbar_jax.data.dicom.DicomSkipWarning")  # synthetic quirks, expected
def test_report_draws_attention_of_a_held_out_study(run, tmp_path):
    kaggle, workdir = run
    path = write_report(kaggle, str(tmp_path / "report"), workdir=workdir, drawn=Drawn(montages=0, attention=1))
    text = open(path).read()
    pngs = [p for p in os.listdir(tmp_path / "report") if p.startswith("attention_")]
    assert len(pngs) == 1 and "Attention overlays of held-out studies" in text
    assert "Attention peak to annotated point" in text
    study_id = int(pngs[0].removeprefix("attention_").removesuffix(".png"))
    oof = pd.read_csv(os.path.join(workdir, "oof_predictions.csv"))
    assert set(oof.loc[oof["row_id"].str.startswith(f"{study_id}_"), "fold"]) == {0}  # held out by fold 0
