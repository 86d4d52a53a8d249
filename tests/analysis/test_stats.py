"""Pure statistics of the analysis package, against hand computations and scipy."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lumbar_jax import labels as labels_lib
from lumbar_jax.analysis import label_stats, montage, oof

M = labels_lib.MISSING


def test_spearman_excludes_missing_pairwise_like_scipy_on_the_complete_pairs():
    labels = np.array([
        [0, 0, 1, 0],
        [1, M, 2, 0],
        [2, 2, M, 0],
        [0, 1, 0, 0],
        [M, 2, 2, 0],
        [1, 1, 1, 0],
        [2, 1, M, 0],
        [0, M, 0, 0],
    ])
    rho, n = label_stats.pairwise_spearman(labels)
    for i in range(3):
        for j in range(3):
            both = (labels[:, i] != M) & (labels[:, j] != M)
            assert n[i, j] == both.sum()
            expected = stats.spearmanr(labels[both, i], labels[both, j]).statistic
            assert rho[i, j] == pytest.approx(expected), (i, j)
    assert n[0, 1] == 5 and n[1, 2] == 4
    # -1 coded as a severity (no exclusion) gives another answer: the exclusion matters here.
    assert rho[0, 1] != pytest.approx(stats.spearmanr(labels[:, 0], labels[:, 1]).statistic)
    # A constant target has no rank correlation: NaN, not 0 and no warning.
    assert np.all(np.isnan(rho[3])) and n[3, 3] == 8
    np.testing.assert_allclose(rho, rho.T, equal_nan=True)


def test_label_distribution_and_missing_summary():
    labels = np.zeros((4, labels_lib.NUM_TARGETS), dtype=int)
    labels[0, 0], labels[1, 0], labels[2, 0], labels[3, 0] = 2, 2, 1, M
    labels[3, 24] = M
    labels[1, 7] = 1
    table = label_stats.label_distribution(labels)
    assert list(table.index) == list(labels_lib.TARGETS)
    assert table.loc[labels_lib.TARGETS[0], ["normal_mild", "moderate", "severe", "missing", "labelled"]].tolist() == \
        [0, 1, 2, 1, 3]
    assert table.loc[labels_lib.TARGETS[7], ["normal_mild", "moderate"]].tolist() == [3, 1]
    assert table.loc[labels_lib.TARGETS[24], "level"] == "L5/S1"
    assert table[["normal_mild", "moderate", "severe", "missing"]].to_numpy().sum(1).tolist() == [4] * 25
    assert label_stats.missing_summary(labels) == {
        "studies": 4, "studies_with_missing": 1, "studies_all_missing": 0, "missing_cells": 2, "cells": 100}


def test_left_right_table_pairs_the_two_sides_of_each_level():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(30, labels_lib.NUM_TARGETS))
    left, right = labels_lib.CONDITION_GROUPS["subarticular"]
    labels[:, labels_lib.target_index(right, 1)] = labels[:, labels_lib.target_index(left, 1)]  # L2/L3: identical sides
    labels[:3, labels_lib.target_index(left, 1)] = M
    table = label_stats.left_right_table(labels, "subarticular")
    assert list(table.index) == list(labels_lib.LEVEL_CSV_NAMES)
    assert table.loc["L2/L3", "rho"] == pytest.approx(1.0) and table.loc["L2/L3", "n"] == 27
    rho, _ = label_stats.pairwise_spearman(labels)
    expected = rho[labels_lib.target_index(left, 3), labels_lib.target_index(right, 3)]
    assert table.loc["L4/L5", "rho"] == pytest.approx(expected)
    assert label_stats.describe_strength(0.35) == "moderate positive"
    assert label_stats.describe_strength(float("nan")) == "undefined"


def test_short_names():
    assert label_stats.short_name(3) == "L4/L5 spinal"
    target = labels_lib.TARGETS.index("left_neural_foraminal_narrowing_l4_l5")
    assert label_stats.short_name(target) == "L L4/L5 foraminal"
    assert label_stats.short_name(24) == "R L5/S1 subarticular"


def _one_group_case():
    """4 studies, only the spinal L1/L2 target labelled: true 0, 0, 1, 2."""
    labels = np.full((4, labels_lib.NUM_TARGETS), M)
    labels[:, 0] = [0, 0, 1, 2]
    probs = np.full((4, labels_lib.NUM_TARGETS, 3), 1 / 3)
    probs[:, 0] = [[0.95, 0.04, 0.01], [0.55, 0.40, 0.05], [0.30, 0.60, 0.10], [0.05, 0.15, 0.80]]
    return labels, probs


def test_calibration_bins_by_hand():
    labels, probs = _one_group_case()
    bins = oof.calibration_bins(labels, probs, "spinal", num_bins=4)
    np.testing.assert_allclose(bins["edges"], [0, 0.25, 0.5, 0.75, 1.0])
    # Normal/Mild: p = .95 (bin 3, true), .55 (bin 2, true), .30 (bin 1, false), .05 (bin 0, false).
    assert bins["count"][0].tolist() == [1, 1, 1, 1]
    np.testing.assert_allclose(bins["mean_pred"][0], [0.05, 0.30, 0.55, 0.95])
    np.testing.assert_allclose(bins["observed"][0], [0, 0, 1, 1])
    # Moderate: .04, .15 in bin 0 (neither true), .40 bin 1 (false), .60 bin 2 (true); bin 3 empty.
    assert bins["count"][1].tolist() == [2, 1, 1, 0]
    np.testing.assert_allclose(bins["mean_pred"][1, :3], [0.095, 0.40, 0.60])
    np.testing.assert_allclose(bins["observed"][1, :3], [0, 0, 1])
    assert np.isnan(bins["mean_pred"][1, 3]) and np.isnan(bins["observed"][1, 3])
    # Severe: p = 1.0 falls in the last (closed) bin. Expected calibration error of Normal/Mild by hand.
    probs[3, 0] = [0.0, 0.0, 1.0]
    assert oof.calibration_bins(labels, probs, "spinal", num_bins=4)["count"][2].tolist() == [3, 0, 0, 1]
    ece = oof.calibration_error(bins)
    assert ece[0] == pytest.approx((0.05 + 0.30 + 0.45 + 0.05) / 4)
    # Other groups have no labelled row: empty bins, not an error.
    assert oof.calibration_bins(labels, probs, "foraminal")["count"].sum() == 0


def test_confusion_matrix_and_row_normalisation():
    labels, probs = _one_group_case()
    matrix = oof.confusion_matrix(labels, probs, "spinal")
    assert matrix.tolist() == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]
    probs[2, 0] = [0.7, 0.2, 0.1]  # the Moderate study now predicted Normal/Mild
    matrix = oof.confusion_matrix(labels, probs, "spinal")
    assert matrix.tolist() == [[2, 0, 0], [1, 0, 0], [0, 0, 1]]
    normalised = oof.row_normalise(np.array([[2, 2, 0], [0, 0, 0], [1, 0, 3]]))
    np.testing.assert_allclose(normalised[0], [0.5, 0.5, 0])
    assert np.isnan(normalised[1]).all()
    np.testing.assert_allclose(normalised[2], [0.25, 0, 0.75])


def test_worst_studies_ranked_by_per_study_loss_with_ties_by_id():
    labels = np.zeros((5, labels_lib.NUM_TARGETS), dtype=int)
    labels[4] = M  # no label: left out
    probs = np.zeros((5, labels_lib.NUM_TARGETS, 3))
    probs[..., 0] = [[0.9], [0.2], [0.5], [0.2], [0.01]]
    probs[..., 1] = 1 - probs[..., 0]
    probs[1, 5] = [0.01, 0.99, 0.0]  # study 1's worst target
    ids = np.array([50, 40, 30, 20, 10])
    worst = oof.worst_studies(ids, labels, probs, folds=np.array([0, 1, 0, 1, 0]), top=3)
    assert worst["study_id"].tolist() == [40, 20, 30]  # 40 is worse than 20 through target 5
    assert worst["fold"].tolist() == [1, 1, 0]
    assert worst["loss"].is_monotonic_decreasing
    assert worst["worst_targets"][0].startswith("L L1/L2 foraminal: Normal/Mild (p=0.01)")
    assert worst["labelled"].tolist() == [25, 25, 25]
    equal = oof.worst_studies(ids[[3, 1]], labels[[1, 1]], probs[[1, 1]], top=5)
    assert equal["study_id"].tolist() == [20, 40] and "fold" not in equal


def test_fold_scores_table():
    summary = {"oof": {"score": 0.8, "baseline": {"score": 1.1}, "weighted_prior": {"score": 0.9}},
               "folds": [{"fold": k, "best_step": 10 * k, "val": {"score": 0.7 + k / 10, "baseline": {"score": 1.0},
                                                                   "weighted_prior": {"score": 0.9}}}
                         for k in range(2)]}
    table = oof.fold_scores(summary)
    assert list(table.index) == ["fold 0", "fold 1", "OOF"]
    np.testing.assert_allclose(table["model"], [0.7, 0.8, 0.8])
    assert table.loc["OOF", "baseline"] == 1.1 and np.isnan(table.loc["OOF", "best_step"])


def _write_oof(path, study_ids, probs, folds):
    rows = [[labels_lib.row_id(s, t), *probs[i, k], folds[i]] for i, s in enumerate(study_ids)
            for k, t in enumerate(labels_lib.TARGETS)]
    pd.DataFrame(rows, columns=["row_id", *labels_lib.SEVERITY_COLUMNS, "fold"]).to_csv(path, index=False)


def test_read_oof_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.array([7, 3, 11])
    probs = rng.dirichlet(np.ones(3), size=(3, labels_lib.NUM_TARGETS))
    path = str(tmp_path / "oof_predictions.csv")
    _write_oof(path, ids, probs, [2, 0, 1])
    got_ids, got_probs, folds = oof.read_oof(path)
    order = np.argsort(ids)
    assert got_ids.tolist() == [3, 7, 11] and folds.tolist() == [0, 2, 1]
    np.testing.assert_allclose(got_probs, probs[order])
    labels = np.zeros((2, labels_lib.NUM_TARGETS), dtype=int)
    with pytest.raises(ValueError, match=r"not in train.csv, e.g. \[11\]"):
        oof.align_labels(got_ids, np.array([3, 7]), labels)
    assert oof.align_labels(got_ids[:2], np.array([7, 3]), np.arange(2)[:, None] + labels).tolist()[0][0] == 1
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        oof.read_oof(str(tmp_path / "nowhere.csv"))
    pd.read_csv(path).iloc[:-1].to_csv(path, index=False)
    with pytest.raises(ValueError, match="1 rows missing"):
        oof.read_oof(path)
    with pytest.raises(FileNotFoundError, match="cv_summary.json"):
        oof.check_run_dir(str(tmp_path))


def _fake_example(axial_depths):
    """A record-like dict: only the axial series present, left/right subarticular at the given depths."""
    coords = np.full((labels_lib.NUM_TARGETS, 3), -1.0)
    coords_series = np.full(labels_lib.NUM_TARGETS, -1)
    for level, depth in enumerate(axial_depths):
        for condition in (3, 4):
            t = labels_lib.target_index(condition, level)
            coords[t], coords_series[t] = (depth, 0.5, 0.4 if condition == 4 else 0.6), 2
    volume = np.zeros((16, 8, 8), np.uint8)
    return {"present": np.array([False, True, True]), "coords": coords, "coords_series": coords_series,
            "labels": np.zeros(labels_lib.NUM_TARGETS, int), "sagittal_t1": volume, "sagittal_t2": volume,
            "axial_t2": volume}


def test_slices_to_show_spreads_levels_and_uses_neighbouring_slices():
    # Five levels on slices 1, 4, 8, 11, 14: three panels = first, last and middle level.
    example = _fake_example([1 / 15, 4 / 15, 8 / 15, 11 / 15, 14 / 15])
    shown = montage.slices_to_show(example, 2)
    assert [s for s, _ in shown] == [1, 8, 14]
    assert shown[1][1] == [labels_lib.target_index(3, 2), labels_lib.target_index(4, 2)]
    # A level split over two neighbouring slices is drawn in one panel.
    example["coords"][labels_lib.target_index(4, 0), 0] = 2 / 15
    expected = [labels_lib.target_index(3, 0), labels_lib.target_index(4, 0)]
    assert montage.slices_to_show(example, 2, max_slices=5)[0][1] == expected
    assert montage.slices_to_show(example, 0) == []  # absent series
    assert montage.slices_to_show(example, 1) == [(8, [])]  # present, nothing annotated: middle slice


def test_plot_study_draws_an_absent_series_without_dicoms(tmp_path):
    example = _fake_example([1 / 15, 4 / 15, 8 / 15, 11 / 15, 14 / 15])
    example["study_id"] = 1
    path = montage.plot_study(example, str(tmp_path / "m.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
