"""Target order, row ids, the flip mirror, and the score CLI on a hand-made submission."""

import numpy as np
import pandas as pd
import pytest

from lumbar_jax import labels as L
from lumbar_jax import cli, metrics, score


def test_target_order_is_the_conventions_order():
    assert len(L.TARGETS) == 25
    assert L.TARGETS[0] == "spinal_canal_stenosis_l1_l2"
    assert L.TARGETS[5] == "left_neural_foraminal_narrowing_l1_l2"
    assert L.TARGETS[24] == "right_subarticular_stenosis_l5_s1"
    assert L.row_id(4003253, L.TARGETS[0]) == "4003253_spinal_canal_stenosis_l1_l2"
    assert L.parse_row_id("4003253_right_subarticular_stenosis_l5_s1") == (4003253, 24)
    with pytest.raises(ValueError, match="malformed row_id"):
        L.parse_row_id("4003253_spinal_canal_stenosis_l9")


def test_mirror_swaps_left_and_right_at_the_same_level():
    mirror = L.MIRROR_TARGET_INDEX
    assert np.array_equal(mirror[mirror], np.arange(25))
    for t, name in enumerate(L.TARGETS):
        swapped = name.replace("left", "@").replace("right", "left").replace("@", "right")
        assert L.TARGETS[mirror[t]] == swapped


def test_per_target_group_side_and_level():
    for g, group in enumerate(L.CONDITION_GROUPS):
        np.testing.assert_array_equal(np.flatnonzero(L.TARGET_GROUP == g), L.group_target_indices(group))
    for t, name in enumerate(L.TARGETS):
        assert name.endswith(L.LEVELS[L.TARGET_LEVEL[t]])
        assert L.TARGET_SIDE[t] == (1 if name.startswith("left") else 2 if name.startswith("right") else 0)
    mirrored = L.TARGET_SIDE[L.MIRROR_TARGET_INDEX]
    np.testing.assert_array_equal(mirrored, np.array([0, 2, 1])[L.TARGET_SIDE])  # a flip swaps the sides


def test_each_condition_is_read_on_its_competition_series():
    series = {c: L.SERIES_DESCRIPTIONS[k] for c, k in zip(L.CONDITION_CSV_NAMES, L.CONDITION_SERIES)}
    assert series == {"Spinal Canal Stenosis": "Sagittal T2/STIR",
                      "Left Neural Foraminal Narrowing": "Sagittal T1",
                      "Right Neural Foraminal Narrowing": "Sagittal T1",
                      "Left Subarticular Stenosis": "Axial T2",
                      "Right Subarticular Stenosis": "Axial T2"}
    target_series = np.repeat(L.CONDITION_SERIES, L.NUM_LEVELS)
    np.testing.assert_array_equal(target_series[L.MIRROR_TARGET_INDEX], target_series)  # a flip keeps the series


def test_severity_codes():
    assert [L.severity_code(s) for s in ("Normal/Mild", "Moderate", "Severe", float("nan"), "")] == [0, 1, 2, -1, -1]
    with pytest.raises(ValueError, match="Mild"):
        L.severity_code("Mild")


def _write_case(tmp_path, rng, n=6):
    labels = rng.choice(3, size=(n, 25))
    labels[0, 3] = -1
    study_ids = rng.choice(10**7, size=n, replace=False) + 10**6
    table = pd.DataFrame({"study_id": study_ids})
    for t, target in enumerate(L.TARGETS):
        table[target] = [L.SEVERITY_NAMES[c] if c >= 0 else None for c in labels[:, t]]
    table.to_csv(tmp_path / "train.csv", index=False)
    probs = rng.dirichlet([1, 1, 1], size=(n, 25))
    rows = [(L.row_id(s, t), *probs[i, j]) for i, s in enumerate(study_ids) for j, t in enumerate(L.TARGETS)]
    pd.DataFrame(rows, columns=["row_id", *L.SEVERITY_COLUMNS]).sample(frac=1, random_state=0).to_csv(
        tmp_path / "submission.csv", index=False)
    return labels, probs


def test_score_cli_matches_library(tmp_path, capsys):
    labels, probs = _write_case(tmp_path, np.random.default_rng(0))
    assert score.main(["--solution", str(tmp_path / "train.csv"), "--submission", str(tmp_path / "submission.csv"),
                       "--json", str(tmp_path / "r.json")]) == 0
    result = score.score_submission(str(tmp_path / "train.csv"), str(tmp_path / "submission.csv"))
    assert result["score"] == pytest.approx(metrics.competition_score(labels, probs)["score"])
    out = capsys.readouterr().out
    assert "baseline" in out and f"{result['score']:.4f}" in out


def test_score_cli_names_missing_rows(tmp_path, capsys):
    _write_case(tmp_path, np.random.default_rng(1))
    sub = pd.read_csv(tmp_path / "submission.csv").iloc[1:]
    sub.to_csv(tmp_path / "submission.csv", index=False)
    argv = ["--solution", str(tmp_path / "train.csv"), "--submission", str(tmp_path / "submission.csv")]
    assert cli.run(score.main, argv) == 2
    assert "rows missing" in capsys.readouterr().err
