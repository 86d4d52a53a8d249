"""Evaluation, prediction and analysis of a two-stage run: checkpoint evaluation reproduces training, predict.py
writes a submission and a study report (with the localised points) from DICOM, equal to predicting the TFDS
records, calibration is applied as `calibration.apply_temperatures` says, analyze.py draws the crops.

One tiny two-stage run (2 folds, a few steps of each stage, ViT-only crop classifier, 4 fake CPU devices) is
trained once per module on a synthetic Kaggle folder that also holds unlabelled test studies.
"""

import json
import os

import numpy as np
import pandas as pd
import pytest

from lumbar_jax import calibration, cross_validation, evaluate, localiser_metrics, predict, rundir
from lumbar_jax import labels as labels_lib
from lumbar_jax.analysis import Drawn, crop_figures, label_stats, oof, write_report
from lumbar_jax.data import build, crops, dataset, study, synthetic
from lumbar_jax.dataset_configs import NATIVE_AFFINE, NATIVE_VOLUMES
from lumbar_jax.train import config as config_lib
from tests.test_evaluate_predict import run_script


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(kaggle dir with train + test studies, its r64_native dataset dir, trained two-stage run dir)."""
    root = tmp_path_factory.mktemp("two_stage_run")
    kaggle, tfds_dir = str(root / "kaggle"), str(root / "tfds")
    synthetic.write_synthetic_dataset(kaggle, synthetic.DatasetSpec(12, seed=5, num_test_studies=3), progress=False)
    build.build_dataset(kaggle, tfds_dir, "r64_native", workers=1)
    c = config_lib.apply_variant(config_lib.two_stage_config(), "smoke")
    c.data.data_dir = tfds_dir
    c.model.update(name="vit", head_hidden=32, head_depth=1, drop_path=0.0, slice_patch=(8, 8))
    c.crops.update(slices=3, pixels=16)
    c.localiser.update(variant="loc_tiny_test", batch_size=4, steps=2, warmup_steps=1, eval_every=2)
    c.train.update(batch_size=4, eval_batch_size=4, steps=2, warmup_steps=1, eval_every=2, checkpoint_every=2,
                   log_every=1)
    workdir = str(root / "run")
    cross_validation.cross_validate(c, workdir)
    return kaggle, tfds_dir, workdir


@pytest.fixture(scope="module")
def predictor(run):
    """The calibrated two-stage ensemble of both folds."""
    return predict.Predictor(run[2])


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
    out = str(tmp_path / "submission.csv")
    assert run_script("predict.py", "--workdir", workdir, "--data_dir", kaggle, "--output", out) == 0
    assert "studies/s" in capsys.readouterr().out
    submission = pd.read_csv(out)
    expected_rows = pd.read_csv(os.path.join(kaggle, "sample_submission.csv"))["row_id"].tolist()
    assert submission["row_id"].tolist() == expected_rows
    source = dataset.load_split(tfds_dir, "r64_native", "test")
    records = [source[i] for i in range(len(source))]
    probs, points = predictor.restorer.predict(predictor.models, records)
    assert points.shape == (2, len(records), 25, 3)
    expected = (calibration.apply_selected(probs, predictor.calibration["temperatures"])
                if predictor.calibration["applied"] else probs)
    by_study = {int(r["study_id"]): p for r, p in zip(records, expected)}
    values = submission[list(labels_lib.SEVERITY_COLUMNS)].to_numpy().reshape(-1, 25, 3)
    study_ids = [labels_lib.parse_row_id(r)[0] for r in submission["row_id"][::25]]
    np.testing.assert_allclose(values, np.stack([by_study[s] for s in study_ids]), rtol=1e-4, atol=1e-6)


def test_held_out_studies_read_from_dicom_get_the_probabilities_training_scored(run):
    kaggle, _, workdir = run
    result = rundir.read_fold_result(workdir, 0)
    fold0 = predict.Predictor(workdir, folds=[0], calibrate=False)
    split_ids = [int(s) for s in np.load(rundir.localiser_predictions_path(workdir, 0))["study_id"]]
    held_out = [split_ids[i] for i in result["val_indices"]]
    entries = {e.study_id: e for e in study.list_studies(kaggle, "train")}
    probs = fold0.predict(fold0.read([entries[s] for s in held_out]))
    np.testing.assert_allclose(probs, np.asarray(result["val_probs"]), atol=2e-5)


def test_calibration_is_applied_as_apply_temperatures_says_and_recorded(run, predictor):
    kaggle, _, workdir = run
    plain = predict.Predictor(workdir, calibrate=False)
    record = plain.read(study.list_studies(kaggle, "test")[:1])
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
    report = json.load(open(out))
    prov = report["provenance"]
    assert f"probabilities {predict.calibration_text(prov['calibration'])}" in printed
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


def test_flip_tta_is_refused_for_a_two_stage_run(run):
    with pytest.raises(ValueError, match="two-stage run: its localiser already averages with the flip"):
        predict.Predictor(run[2], tta=True)


@pytest.mark.filterwarnings("ignore::lumbar_jax.data.dicom.DicomSkipWarning")  # synthetic quirks, expected
def test_report_draws_the_crops_of_the_worst_predicted_held_out_studies(run, tmp_path):
    kaggle, _, workdir = run
    path = write_report(kaggle, str(tmp_path / "report"), workdir=workdir, drawn=Drawn(montages=0, crops=2))
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
