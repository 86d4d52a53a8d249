"""train/noisy_labels.py: which training labels a finished run's out-of-fold predictions contradict, and that
only those, only on training studies, reach training as missing."""

import json
import os

import numpy as np
import pytest

from lumbar_jax import labels as labels_lib
from lumbar_jax import rundir
from lumbar_jax.cross_validation import write_oof
from lumbar_jax.train import config as config_lib
from lumbar_jax.train import noisy_labels
from lumbar_jax.train.folds import Fold

M = labels_lib.MISSING


def test_contradicted_marks_labelled_targets_below_the_threshold_only():
    labels = np.full((2, labels_lib.NUM_TARGETS), M)
    labels[0, :3] = [0, 1, 2]
    labels[1, 0] = 2
    probs = np.full((2, labels_lib.NUM_TARGETS, 3), 1 / 3)
    probs[0, 0] = [0.1, 0.8, 0.1]  # P(label 0) = 0.1: contradicted
    probs[0, 1] = [0.7, 0.2, 0.1]  # P(label 1) = 0.2: not below 0.2
    probs[0, 2] = [0.5, 0.4, 0.1]  # P(label 2) = 0.1: contradicted
    probs[1, 0] = np.nan  # no prediction: kept
    got = noisy_labels.contradicted(labels, probs, below=0.2)
    expected = np.zeros_like(got)
    expected[0, [0, 2]] = True
    np.testing.assert_array_equal(got, expected)


def _run_with_oof(tmp_path, study_ids, probs, content_hash="abc"):
    workdir = str(tmp_path / "source_run")
    os.makedirs(workdir)
    write_oof(rundir.oof_path(workdir), study_ids, probs, np.zeros(len(study_ids), int))
    with open(rundir.dataset_path(workdir), "w") as f:
        json.dump({"name": "rsna_lumbar_spine/r64_native", "path": "/data", "content_hash": content_hash}, f)
    return workdir


def test_training_records_drop_contradicted_training_labels_and_leave_held_out_studies_alone(tmp_path):
    study_ids = np.array([11, 22, 33, 44])
    labels = np.zeros((4, labels_lib.NUM_TARGETS), int)
    records = [{"study_id": s, "labels": labels[i].copy(), "volumes": np.full(2, i)} for i, s in enumerate(study_ids)]
    probs = np.full((4, labels_lib.NUM_TARGETS, 3), 0.0)
    probs[..., 0] = 1.0
    probs[:, 7] = [0.05, 0.9, 0.05]  # target 7 of every study contradicted
    # The OOF file lists the studies in another order, and the view must still find each one's rows.
    workdir = _run_with_oof(tmp_path, study_ids[::-1], probs[::-1])
    config = config_lib.two_stage_config()
    fold = Fold(0, records, study_ids, labels, train_idx=np.array([0, 1, 2]), val_idx=np.array([3]))
    assert noisy_labels.training_records(config, fold) is records  # off by default
    config.train.drop_labels_from = workdir
    view = noisy_labels.training_records(config, fold)
    assert len(view) == 4
    for i in range(3):
        assert view[i]["labels"][7] == M and (np.delete(view[i]["labels"], 7) == 0).all()
        assert view[i]["volumes"] is records[i]["volumes"]
    assert view[3] is records[3]  # held out: as it was
    assert (records[0]["labels"] == 0).all() and (fold.labels == 0).all()  # nothing changed in place


def test_a_source_run_on_another_dataset_is_refused_naming_the_field(tmp_path):
    workdir = _run_with_oof(tmp_path, np.array([1]), np.full((1, labels_lib.NUM_TARGETS, 3), 1 / 3), "abc")
    config = config_lib.two_stage_config()
    config.train.drop_labels_from = workdir
    noisy_labels.check_source_run(config, {"path": "/data", "content_hash": "abc"})
    with pytest.raises(config_lib.ConfigError, match=r"^config.train.drop_labels_from: .* not trained on this"):
        noisy_labels.check_source_run(config, {"path": "/other", "content_hash": "def"})


def test_bad_fields_are_refused_before_any_work(tmp_path):
    config = config_lib.two_stage_config()
    config.train.drop_labels_from = str(tmp_path)
    with pytest.raises(config_lib.ConfigError, match=r"^config.train.drop_labels_from: .* has no oof_predictions.csv"):
        config_lib.validate(config)
    config.train.drop_labels_from = ""
    config.train.drop_labels_below = 1.0
    with pytest.raises(config_lib.ConfigError, match=r"^config.train.drop_labels_below: must be in \(0, 1\)"):
        config_lib.validate(config)


def test_a_source_run_whose_oof_file_is_not_one_is_refused_naming_the_field_and_file(tmp_path):
    workdir = _run_with_oof(tmp_path, np.array([1]), np.full((1, labels_lib.NUM_TARGETS, 3), 1 / 3))
    with open(rundir.oof_path(workdir), "w") as f:
        f.write("row_id,normal_mild\n1_x,1.0\n")
    with pytest.raises(config_lib.ConfigError, match=r"^config.train.drop_labels_from: .*oof_predictions.csv has no "
                                                     r"column 'moderate'"):
        noisy_labels.read_oof(workdir, np.array([1]))
