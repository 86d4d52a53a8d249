"""Evaluation, prediction and analysis of a two-stage run: checkpoint evaluation reproduces training, predict.py
writes a submission and a study report (with the localised points) from DICOM, equal to predicting the TFDS
records, calibration is applied as `calibration.apply_temperatures` says, analyze.py draws the crops.

One tiny two-stage run (2 folds, a few steps of each stage, ViT-only crop classifier, 4 fake CPU devices) is
trained once per module on a synthetic Kaggle folder that also holds unlabelled test studies.
"""

import json
import logging
import os
import re
import shutil
import struct

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest

from lumbar_jax import calibration, cross_validation, evaluate, inference, localiser_metrics, metrics, predict, rundir
from lumbar_jax import study_report
from lumbar_jax import labels as labels_lib
from lumbar_jax.analysis import Drawn, costly, crop_figures, label_stats, oof, write_report
from lumbar_jax.data import build, crops, dataset, study, synthetic
from lumbar_jax.dataset_configs import NATIVE_AFFINE, NATIVE_VOLUMES
from lumbar_jax.pipelines import two_stage as two_stage_pipeline
from lumbar_jax.train import config as config_lib
from tests.test_evaluate_predict import run_script
from tests.test_structured_report import assert_sr_holds_the_report, groups_by_target, severity_and_probabilities


def synthetic_kaggle_and_records(root, num_test_studies: int = 3) -> tuple[str, str]:
    """(a synthetic Kaggle folder of 12 labelled and `num_test_studies` test studies under `root`, its
    r64_native dataset dir)."""
    kaggle, tfds_dir = str(root / "kaggle"), str(root / "tfds")
    synthetic.write_synthetic_dataset(kaggle, synthetic.DatasetSpec(12, seed=5, num_test_studies=num_test_studies),
                                      progress=False)
    build.build_dataset(kaggle, tfds_dir, "r64_native", workers=1)
    return kaggle, tfds_dir


def tiny_two_stage_config(tfds_dir: str, steps: int = 2):
    """The smoke two-stage config cut to a tiny run on `tfds_dir`: a small localiser, a ViT-only crop classifier
    on 3 slices of 16 pixels, `steps` steps of each stage (evaluated and checkpointed at the last)."""
    c = config_lib.apply_variant(config_lib.two_stage_config(), "smoke")
    c.data.data_dir = tfds_dir
    c.model.update(name="vit", head_hidden=32, head_depth=1, drop_path=0.0, slice_patch=(8, 8))
    c.crops.update(slices=3, pixels=16)
    c.localiser.update(variant="loc_tiny_test", batch_size=4, steps=steps, warmup_steps=1, eval_every=steps)
    c.train.update(batch_size=4, eval_batch_size=4, steps=steps, warmup_steps=1, eval_every=steps,
                   checkpoint_every=steps, log_every=1)
    return c


def predict_first_test_study(kaggle: str, workdir: str, tmp_path) -> tuple:
    """predict.py --study_dir on the folder's first test study with --json and --sr into tmp_path (asserted to
    succeed): (its StudyEntry, its folder, the JSON path, the SR path)."""
    entry = study.list_studies(kaggle, "test")[0]
    study_dir = os.path.dirname(entry.series_dirs[2][0][1])
    out, sr = tmp_path / "report.json", tmp_path / "report.dcm"
    assert run_script("predict.py", "--workdir", workdir, "--study_dir", study_dir, "--json", str(out),
                      "--sr", str(sr)) == 0
    return entry, study_dir, out, sr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(kaggle dir with train + test studies, its r64_native dataset dir, trained two-stage run dir)."""
    root = tmp_path_factory.mktemp("two_stage_run")
    kaggle, tfds_dir = synthetic_kaggle_and_records(root)
    workdir = str(root / "run")
    cross_validation.cross_validate(tiny_two_stage_config(tfds_dir), workdir)
    return kaggle, tfds_dir, workdir


@pytest.fixture(scope="module")
def predictor(run):
    """The calibrated two-stage ensemble of both folds."""
    return predict.Predictor(predict.PredictionRun(run[2]))


def test_evaluation_reproduces_every_fold_and_the_cv_summary(run):
    _, _, workdir = run
    report = evaluate.evaluate_run(workdir)
    summary = rundir.read_summary(workdir)
    assert report["reproduces_cv_summary"]
    for fold in report["folds"]:
        trained = rundir.read_fold_result(workdir, fold["fold"])
        assert fold["reproduces_result"] and fold["step"] == trained["best_step"]
        assert fold["val"]["score"] == pytest.approx(trained["val"]["score"], abs=1e-5)
        assert fold["saved_points_max_diff"] < 1e-5  # the localiser restored = the one that placed the crops
        for key in ("median_mm", "p90_mm", "level_accuracy"):
            assert fold["localiser"][key] == pytest.approx(trained["localiser"][key], abs=1e-4)
    assert report["oof_localiser"]["median_mm"] == pytest.approx(summary["localiser"]["median_mm"], abs=1e-4)
    text = evaluate.format_report(report)
    assert "localiser fold 1: median" in text and "result.json: fold 0" in text and "(reproduced)" in text


def test_submission_from_dicom_equals_the_ensemble_on_the_tfds_test_records(run, predictor, tmp_path, capsys):
    kaggle, tfds_dir, workdir = run
    out, sr_dir = str(tmp_path / "submission.csv"), tmp_path / "sr"
    assert run_script("predict.py", "--workdir", workdir, "--data_dir", kaggle, "--output", out,
                      "--sr_dir", str(sr_dir)) == 0
    printed = capsys.readouterr().out
    assert "studies/s after compiling" in printed and "run quality: out-of-fold score" in printed
    assert f"wrote 3 DICOM SRs to {sr_dir}" in printed
    assert re.search(r"^time: [\d.]+ s wall: start-up [\d.]+ s \(imports, checks\), build [\d.]+ s, restore [\d.]+ s, "
                     r"compile [\d.]+ s, read [\d.]+ s, predict [\d.]+ s$", printed, re.M)
    submission = pd.read_csv(out)
    expected_rows = pd.read_csv(os.path.join(kaggle, "sample_submission.csv"))["row_id"].tolist()
    assert submission["row_id"].tolist() == expected_rows
    source = dataset.load_split(tfds_dir, "r64_native", "test")
    records = [source[i] for i in range(len(source))]
    probs, points = predictor.restorer.predict(predictor.models, records)
    assert points.shape == (2, len(records), 25, 3)
    expected = (calibration.apply_selected(probs, predictor.run.calibration["temperatures"])
                if predictor.run.calibration["applied"] else probs)
    by_study = {int(r["study_id"]): p for r, p in zip(records, expected)}
    values = submission[list(labels_lib.SEVERITY_COLUMNS)].to_numpy().reshape(-1, 25, 3)
    study_ids = [labels_lib.parse_row_id(r)[0] for r in submission["row_id"][::25]]
    np.testing.assert_allclose(values, np.stack([by_study[s] for s in study_ids]), rtol=1e-4, atol=1e-6)
    assert sorted(os.listdir(sr_dir)) == sorted(f"{s}.dcm" for s in study_ids)  # one SR per study, by its id
    for study_id in study_ids:
        groups = groups_by_target(hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(sr_dir / f"{study_id}.dcm")))
        probs = [severity_and_probabilities(g)[1] for g in groups.values()]
        np.testing.assert_allclose(probs, by_study[study_id], rtol=1e-4, atol=1e-6)


def test_held_out_studies_read_from_dicom_get_the_probabilities_training_scored(run):
    kaggle, _, workdir = run
    result = rundir.read_fold_result(workdir, 0)
    fold0 = predict.Predictor(predict.PredictionRun(workdir, folds=[0], calibrate=False))
    split_ids = [int(s) for s in np.load(rundir.localiser_predictions_path(workdir, 0))["study_id"]]
    held_out = [split_ids[i] for i in result["val_indices"]]
    entries = {e.study_id: e for e in study.list_studies(kaggle, "train")}
    probs = fold0.predict(fold0.run.read([entries[s] for s in held_out]))
    np.testing.assert_allclose(probs, np.asarray(result["val_probs"]), atol=2e-5)


def test_calibration_is_applied_as_apply_temperatures_says_and_recorded(run, predictor):
    kaggle, _, workdir = run
    plain = predict.Predictor(predict.PredictionRun(workdir, calibrate=False))
    record = plain.run.read(study.list_studies(kaggle, "test")[:1])
    temperatures = calibration.applied_temperatures(rundir.read_summary(workdir)["calibration"])
    groups = {g: g in temperatures for g in labels_lib.CONDITION_GROUPS}
    assert predictor.provenance()["calibration"]["groups"] == groups
    assert predictor.provenance()["calibration"].get("temperatures", {}) == temperatures
    assert plain.provenance()["calibration"] == {"applied": False, "reason": "switched off (--no_calibration)",
                                                 "groups": dict.fromkeys(labels_lib.CONDITION_GROUPS, False)}
    uncalibrated, calibrated = plain.predict(record), predictor.predict(record)
    np.testing.assert_allclose(calibrated, calibration.apply_selected(uncalibrated, temperatures), atol=1e-9)


def test_study_dir_report_has_each_targets_localised_point(run, tmp_path, capsys):
    kaggle, _, workdir = run
    entry = study.list_studies(kaggle, "test")[0]
    study_dir = os.path.dirname(entry.series_dirs[2][0][1])
    out = str(tmp_path / "report.json")
    assert run_script("predict.py", "--workdir", workdir, "--study_dir", study_dir, "--json", out) == 0
    printed = capsys.readouterr().out
    assert "two-stage: each fold's localiser (steps [2, 2], flip TTA)" in printed
    assert "run quality: out-of-fold score" in printed and "localiser error on held-out studies median" in printed
    assert re.search(r"^time: [\d.]+ s wall: start-up [\d.]+ s \(imports, checks\), build [\d.]+ s, restore [\d.]+ s, "
                     r"compile [\d.]+ s, read [\d.]+ s, predict [\d.]+ s$", printed, re.M)
    report = json.load(open(out))
    assert report["run_quality"] == study_report.run_quality(workdir) and isinstance(report["warnings"], list)
    prov = report["provenance"]
    assert f"probabilities {study_report.calibration_text(prov['calibration'])}" in printed
    assert prov["pipeline"] == "two_stage" and prov["localiser_flip_tta"]
    assert set(prov["calibration"]["groups"]) == set(labels_lib.CONDITION_GROUPS)
    record = study.study_example(entry, (16, 64, 64), native_max_size=256)
    shapes = np.array([np.shape(record[name]) for name in NATIVE_VOLUMES])
    for t, target in enumerate(labels_lib.TARGETS):
        where = report["targets"][target]["localiser"]
        series = int(labels_lib.CONDITION_SERIES[t // labels_lib.NUM_LEVELS])
        assert where["series"] == labels_lib.SERIES_TYPES[series] and where["series_present"]
        point = np.array(where["point"])
        assert np.all((point >= -0.05) & (point <= 1.05)) and where["fold_spread_mm"] >= 0
        affine = np.asarray(record[NATIVE_AFFINE], np.float64)[series]
        expected_mm = affine[:3, :3] @ (point * (shapes[series] - 1)) + affine[:3, 3]
        np.testing.assert_allclose(where["patient_mm"], expected_mm, atol=0.05)  # the point is rounded to 1e-4


def test_study_dir_sr_holds_the_json_reports_points_grades_and_probabilities(run, predictor, tmp_path, capsys):
    """predict.py --sr beside --json: the SR's groups are the JSON report's targets; then the same study without
    its axial T2 folder: the subarticular groups have no point."""
    kaggle, _, workdir = run
    entry, study_dir, out, sr = predict_first_test_study(kaggle, workdir, tmp_path)
    assert f"wrote {sr} (DICOM SR)" in capsys.readouterr().out
    series_dirs = study.chosen_series_dirs(entry, predictor.run.read([entry])[0]["series_ids"])
    _, groups = assert_sr_holds_the_report(sr, json.load(open(out)), series_dirs)
    assert all(g.roi is not None for g in groups.values())
    copy = tmp_path / str(entry.study_id)
    shutil.copytree(study_dir, copy)
    shutil.rmtree(copy / os.path.basename(series_dirs[2]))
    entry, record, unused = predict.read_study_dir(predictor.run, str(copy))
    report, _ = predict.predict_study(predictor, entry, record, unused)
    predict.write_structured_report(report, entry, record, str(tmp_path / "absent.dcm"))
    assert not report["series_present"]["axial_t2"]
    kept = [str(copy / os.path.basename(d)) for d in series_dirs[:2]] + [None]
    _, groups = assert_sr_holds_the_report(tmp_path / "absent.dcm", report, kept)
    subarticular = [g for t, g in enumerate(groups.values()) if labels_lib.TARGET_SERIES[t] == 2]
    assert len(subarticular) == 10 and all(isinstance(g, hd.sr.MeasurementsAndQualitativeEvaluations)
                                           for g in subarticular)


def test_flip_tta_is_refused_for_a_two_stage_run(run):
    with pytest.raises(ValueError, match="two-stage run: its localiser already averages with the flip"):
        predict.PredictionRun(run[2], tta=True)


@pytest.mark.filterwarnings("ignore::lumbar_jax.data.dicom.DicomSkipWarning")  # synthetic quirks, expected
def test_report_draws_the_crops_of_the_worst_predicted_held_out_studies(run, tmp_path):
    kaggle, _, workdir = run
    path = write_report(kaggle, str(tmp_path / "report"), workdir=workdir, drawn=Drawn(montages=0, crops=2, costly=0))
    text = open(path).read()
    oof_ids, probs, folds = oof.read_oof(rundir.oof_path(workdir))
    labels = oof.align_labels(oof_ids, *label_stats.read_label_matrix(kaggle))
    worst = oof.worst_studies(oof_ids, labels, probs, folds, top=2)["study_id"].tolist()
    assert sorted(p for p in os.listdir(tmp_path / "report") if p.startswith("crops_")) == sorted(
        f"crops_{s}.png" for s in worst)
    assert "Crops of the worst-predicted held-out studies" in text and "Attention overlays" not in text
    assert f"Study {worst[0]} (fold " in text and "Localiser error over its" in text


def _record_with_a_bright_voxel(series: int, voxel: tuple[int, int, int]) -> dict:
    """A *_native record whose only present series `series` is 7 x 41 x 41 voxels of 3 x 1 x 1 mm, black but
    for one bright voxel."""
    volume = np.zeros((7, 41, 41), np.uint8)
    volume[voxel] = 255
    record = {"present": np.arange(3) == series, NATIVE_AFFINE: np.zeros((3, 4, 4), np.float32)}
    record.update({name: np.zeros((1, 1, 1), np.uint8) for name in NATIVE_VOLUMES})
    record[NATIVE_VOLUMES[series]] = volume
    record[NATIVE_AFFINE][series] = np.diag([3.0, 1.0, 1.0, 1.0])
    return record


@pytest.mark.parametrize("target", ["left_neural_foraminal_narrowing_l2_l3", "right_neural_foraminal_narrowing_l2_l3",
                                    "left_subarticular_stenosis_l4_l5", "right_subarticular_stenosis_l4_l5"])
def test_marks_land_on_the_pixel_the_point_was_cut_into(target):
    t = labels_lib.TARGETS.index(target)
    series = int(localiser_metrics.TARGET_SERIES[t])
    extent = np.array([6.0, 40.0, 40.0])
    centre = np.array([3, 20, 20]) / extent
    for voxel in [(3, 24, 13), (4, 17, 26)]:  # on the centre slice, then one slice deeper
        record = _record_with_a_bright_voxel(series, voxel)
        points = np.tile(centre, (25, 1))
        # 1 px = 1 mm = 1 voxel
        cut, _ = crops.study_crops(record, points, crops.CropSpec(slices=3, size_mm=15.0, pixels=15))
        row, col, off = crop_figures.mark_in_crop(record, t, centre, np.array(voxel) / extent, size_mm=15.0,
                                                  pixels=15)
        assert off == voxel[0] - 3
        drawn = crop_figures.centre_slice(t, 3)
        mirrored_slices = labels_lib.TARGET_SIDE[t] == 1 and series < 2
        index = drawn - off if mirrored_slices else drawn + off
        bright = np.unravel_index(np.argmax(cut[t, index]), (15, 15))
        assert (row, col) == pytest.approx(bright)


def test_analysis_lists_the_costliest_held_out_rows_with_their_causes(run, tmp_path):
    kaggle, _, workdir = run
    out = tmp_path / "report"
    text = open(write_report(kaggle, str(out), workdir=workdir, drawn=Drawn(montages=0, crops=0, costly=5))).read()
    assert "Most costly held-out predictions" in text and "perfect reader's part" in text  # a synthetic folder
    assert "OOF score by fold" in text and "perfect reader's score" in text
    assert (out / "costly_crops.png").stat().st_size > 0
    with open(out / "costly.json") as f:
        saved = json.load(f)
    top = saved["costly_rows"]
    assert len(top) == 5 and all(r["cause"] in costly.CAUSES for r in top)
    assert [r["score_share"] for r in top] == sorted((r["score_share"] for r in top), reverse=True)
    oof_ids, probs, folds = oof.read_oof(rundir.oof_path(workdir))
    assert [f["fold"] for f in saved["score_by_fold"]] == sorted(set(folds.tolist()))
    labels = oof.align_labels(oof_ids, *label_stats.read_label_matrix(kaggle))
    n, t = int(np.flatnonzero(oof_ids == top[0]["study_id"])[0]), labels_lib.TARGETS.index(top[0]["target"])
    assert top[0]["p_true"] == pytest.approx(probs[n, t, labels[n, t]]) and top[0]["fold"] == folds[n]
    latent = synthetic.latent_severities(kaggle)
    for r in top:
        grade = latent[r["study_id"]][labels_lib.TARGETS.index(r["target"])]
        assert r["image_grade"] == labels_lib.SEVERITY_NAMES[grade]
        assert (r["cause"] == "label noise") == (r["image_grade"] != r["label"])
    by_cause = {r["cause"]: r for r in saved["loss_by_cause"]}
    score = metrics.competition_score(labels, probs)
    assert by_cause["all"]["score_share"] == pytest.approx(score["score"] - score["any_severe_spinal"] / 4)


def test_run_quality_is_the_runs_cv_summary(run):
    _, _, workdir = run
    summary = rundir.read_summary(workdir)
    quality = study_report.run_quality(workdir)
    assert quality["oof_score"] == summary["oof"]["score"]
    assert quality["best_constant_score"] == summary["oof"]["weighted_prior"]["score"]
    assert quality["class_prior_score"] == summary["oof"]["baseline"]["score"]
    assert quality["beats_best_constant"] == (summary["oof"]["score"] < summary["oof"]["weighted_prior"]["score"])
    assert quality["localiser"] == {"median_mm": summary["localiser"]["median_mm"],
                                    "p90_mm": summary["localiser"]["p90_mm"]}


def test_a_run_that_does_not_beat_the_best_constant_is_warned_about(run, tmp_path):
    _, _, workdir = run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    summary = rundir.read_summary(copy)
    summary["oof"]["score"] = summary["oof"]["weighted_prior"]["score"] + 0.05
    rundir.write_summary(copy, summary)
    quality = predict.PredictionRun(copy).quality  # checks the run, builds no model
    assert quality["beats_best_constant"] is False
    report = study_report.study_report(1, np.ones(3, bool), np.full((25, 3), 1 / 3), quality=quality)
    assert report["run_quality"] == quality and len(report["warnings"]) == 1
    text = study_report.format_study_report(report)
    assert text.splitlines()[1].startswith(
        f"WARNING: the run does not beat the best constant: out-of-fold score {summary['oof']['score']:.4f} against "
        f"{summary['oof']['weighted_prior']['score']:.4f}")
    assert "does NOT beat the best constant; localiser error on held-out studies median" in text
    assert "run quality: out-of-fold score" in text and "(competition log loss, lower is better)" in text
    os.remove(rundir.summary_path(copy))
    unknown = study_report.run_quality(copy)
    assert study_report.quality_warnings(unknown)[0].startswith("the run's out-of-fold score is unknown (")


def _points_down_each_series(record: dict) -> np.ndarray:
    """[25, 3] plausible normalised points of a record: each condition's five levels 0.15 apart down its series'
    superior -> inferior axis (sagittal rows, axial depth) through the middle of the volume."""
    points = np.full((labels_lib.NUM_TARGETS, 3), 0.5)
    for t in range(labels_lib.NUM_TARGETS):
        points[t, 0 if labels_lib.TARGET_SERIES[t] == 2 else 1] = 0.2 + 0.15 * labels_lib.TARGET_LEVEL[t]
    return points


@pytest.mark.parametrize("move, expected", [
    (None, []),
    ("swap", ["levels out of superior-to-inferior order in 10 of 40 adjacent level pairs"]),
    ("collapse", ["levels out of superior-to-inferior order in 40 of 40",
                  "adjacent levels closer than 5 mm in 40 of 40"]),
    ("outside", ["points outside their series' volume in 2 of 50 points"])])
def test_study_report_warns_when_the_localised_points_are_moved(run, predictor, monkeypatch, move, expected):
    kaggle, _, _ = run
    entry = study.list_studies(kaggle, "test")[0]
    entry, record, unused = predict.read_study_dir(predictor.run, os.path.dirname(entry.series_dirs[2][0][1]))
    points = _points_down_each_series(record)
    if move == "swap":  # L1/L2 and L2/L3 of every condition exchanged
        points[::5], points[1::5] = points[1::5].copy(), points[::5].copy()
    elif move == "collapse":
        points[:] = 0.5
    elif move == "outside":
        points[labels_lib.TARGETS.index("spinal_canal_stenosis_l5_s1"), 2] = -0.2
    predict_records = predictor.restorer.predict

    def with_moved_points(models, records, tta=False):
        probs, found = predict_records(models, records, tta)
        return probs, np.broadcast_to(points, found.shape).copy()

    monkeypatch.setattr(predictor.restorer, "predict", with_moved_points)
    report, _ = predict.predict_study(predictor, entry, record, unused)
    implausible = [w for w in report["warnings"] if w.startswith("localised points implausible")]
    assert len(implausible) == len(expected)
    for warning, start in zip(implausible, expected):
        assert warning.startswith(f"localised points implausible, so the crops may not show the discs they name: "
                                  f"{start}")
    text = study_report.format_study_report(report)
    assert sum(line.startswith("WARNING: localised points implausible") for line in text.splitlines()) == len(expected)


@pytest.fixture
def nothing_is_built(monkeypatch):
    """Building the models or restoring a checkpoint fails the test: a refusal must come before either."""
    def fail(*args, **kwargs):
        raise AssertionError("a model was built or restored before the refusal")

    monkeypatch.setattr(two_stage_pipeline.TwoStagePipeline, "restorer", fail)
    monkeypatch.setattr(inference, "restore_checkpoint", fail)


@pytest.mark.parametrize("script, argv, message", [
    ("predict.py", ["--study_dir", "{tmp}/nowhere"], "error: --study_dir {tmp}/nowhere not found"),
    ("predict.py", ["--data_dir", "{tmp}/nowhere"], "error: --data_dir {tmp}/nowhere not found"),
    ("predict.py", ["--data_dir", "{tmp}"], "error: {tmp}/test_series_descriptions.csv not found"),
    ("predict.py", ["--data_dir", "{kaggle}", "--checkpoint", "99"], "no checkpoint of step 99 under"),
    ("predict.py", ["--data_dir", "{kaggle}", "--checkpoint", "newest"], "'best', 'latest' or a step number"),
    ("predict.py", ["--data_dir", "{kaggle}", "--fold", "7"], "error: --fold 7 not in 0..1"),
    ("predict.py", ["--data_dir", "{kaggle}", "--output", "{tmp}/no/sub.csv"], "--output {tmp}/no/sub.csv: folder"),
    ("predict.py", ["--study_dir", "{study}", "--json", "{tmp}/no/r.json"], "--json {tmp}/no/r.json: folder"),
    ("predict.py", ["--study_dir", "{study}", "--descriptions", "{tmp}/d.csv"],
     "--descriptions {tmp}/d.csv not found (or not a file)"),
    ("predict.py", ["--study_dir", "{junk}"], "has no usable series (1: no readable DICOM file (1 .dcm files, none "
                                              "readable by pydicom))"),
    ("evaluate.py", ["--checkpoint", "99"], "no checkpoint of step 99 under"),
    ("evaluate.py", ["--fold", "5"], "error: --fold 5 not in 0..1"),
    ("evaluate.py", ["--output", "{tmp}/no/e.json"], "--output {tmp}/no/e.json: folder"),
])
def test_bad_arguments_are_refused_before_any_model_is_built(run, tmp_path, capsys, nothing_is_built, script, argv,
                                                             message):
    kaggle, _, workdir = run
    junk = tmp_path / "junk_study" / "1"
    junk.mkdir(parents=True)
    (junk / "1.dcm").write_bytes(b"not a DICOM file")
    fill = {"tmp": str(tmp_path), "kaggle": kaggle, "junk": str(junk.parent),
            "study": os.path.dirname(study.list_studies(kaggle, "test")[0].series_dirs[2][0][1])}
    assert run_script(script, "--workdir", workdir, *[a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message.format(**fill) in err[-1] and err[-1].startswith("error: ")


def test_data_warnings_are_one_line_each_naming_the_file(run, predictor, tmp_path, caplog):
    """A file whose InstanceNumber is '2.5': pydicom says so (twice, in its log and as a warning), the reader
    skips the file; each is said once, in one log line naming the file."""
    kaggle, _, _ = run
    source = os.path.dirname(study.list_studies(kaggle, "test")[0].series_dirs[2][0][1])
    study_dir = tmp_path / os.path.basename(source)
    shutil.copytree(source, study_dir)
    series = sorted(p for p in study_dir.iterdir())[0]
    path = sorted(series.glob("*.dcm"), key=lambda p: int(p.stem))[1]
    raw = path.read_bytes()
    at = raw.find(struct.pack("<HH", 0x0020, 0x0013) + b"IS")
    length = struct.unpack("<H", raw[at + 6:at + 8])[0]
    path.write_bytes(raw[:at + 6] + struct.pack("<H", 4) + b"2.5 " + raw[at + 8 + length:])
    (study_dir / "999").mkdir()
    (study_dir / "999" / "1.dcm").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING):
        _, _, unused = predict.read_study_dir(predictor.run, str(study_dir))
    assert not [r for r in caplog.records if r.name == "pydicom"]
    said = [r.getMessage() for r in caplog.records if r.name == "lumbar_jax.warnings"]
    assert all("\n" not in line for line in said)
    about_file = [line for line in said if f"{path}:" in line]
    assert [line.split(":")[0] for line in about_file] == ["PydicomWarning", "DataProblemWarning"]
    assert "pydicom: Invalid value for VR IS: '2.5'" in about_file[0]
    assert "InstanceNumber not an integer in range (InstanceNumber = 2.5)" in about_file[1]
    assert unused[str(study_dir / "999")] == "no readable DICOM file (1 .dcm files, none readable by pydicom)"


def test_analysis_of_a_run_without_its_training_folder_says_where_that_folder_is(run, tmp_path):
    kaggle, _, workdir = run
    with pytest.raises(FileNotFoundError, match=rf"the run {re.escape(workdir)} trained on {re.escape(kaggle)} "
                                                rf"\(its dataset.json\): --data_dir {re.escape(kaggle)}"):
        write_report(str(tmp_path), str(tmp_path / "report"), workdir=workdir)
    with pytest.raises(FileNotFoundError, match=r"the embedded synthetic set of the default config is generated "
                                                r"into ~/.cache/lumbar_jax/synthetic_300_seed0"):
        write_report(str(tmp_path), str(tmp_path / "report"))
