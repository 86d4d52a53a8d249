"""Target order, row ids, the flip mirror, and the score CLI on a hand-made submission."""

import numpy as np
import pandas as pd
import pytest

from lumbar_jax import labels as labels_lib
from lumbar_jax import cli, metrics, score
from lumbar_jax.data import kaggle_csv, problems


def test_target_order_is_the_conventions_order():
    assert len(labels_lib.TARGETS) == 25
    assert labels_lib.TARGETS[0] == "spinal_canal_stenosis_l1_l2"
    assert labels_lib.TARGETS[5] == "left_neural_foraminal_narrowing_l1_l2"
    assert labels_lib.TARGETS[24] == "right_subarticular_stenosis_l5_s1"
    assert labels_lib.row_id(4003253, labels_lib.TARGETS[0]) == "4003253_spinal_canal_stenosis_l1_l2"
    assert labels_lib.parse_row_id("4003253_right_subarticular_stenosis_l5_s1") == (4003253, 24)
    with pytest.raises(ValueError, match="malformed row_id"):
        labels_lib.parse_row_id("4003253_spinal_canal_stenosis_l9")


def test_mirror_swaps_left_and_right_at_the_same_level():
    mirror = labels_lib.MIRROR_TARGET_INDEX
    assert np.array_equal(mirror[mirror], np.arange(25))
    for t, name in enumerate(labels_lib.TARGETS):
        swapped = name.replace("left", "@").replace("right", "left").replace("@", "right")
        assert labels_lib.TARGETS[mirror[t]] == swapped


def test_per_target_group_side_and_level():
    for g, group in enumerate(labels_lib.CONDITION_GROUPS):
        np.testing.assert_array_equal(np.flatnonzero(labels_lib.TARGET_GROUP == g),
                                      labels_lib.group_target_indices(group))
    for t, name in enumerate(labels_lib.TARGETS):
        assert name.endswith(labels_lib.LEVELS[labels_lib.TARGET_LEVEL[t]])
        assert labels_lib.TARGET_SIDE[t] == (1 if name.startswith("left") else 2 if name.startswith("right") else 0)
    mirrored = labels_lib.TARGET_SIDE[labels_lib.MIRROR_TARGET_INDEX]
    np.testing.assert_array_equal(mirrored, np.array([0, 2, 1])[labels_lib.TARGET_SIDE])  # a flip swaps the sides


def test_each_condition_is_read_on_its_competition_series():
    series = {c: labels_lib.SERIES_DESCRIPTIONS[k]
              for c, k in zip(labels_lib.CONDITION_CSV_NAMES, labels_lib.CONDITION_SERIES)}
    assert series == {"Spinal Canal Stenosis": "Sagittal T2/STIR",
                      "Left Neural Foraminal Narrowing": "Sagittal T1",
                      "Right Neural Foraminal Narrowing": "Sagittal T1",
                      "Left Subarticular Stenosis": "Axial T2",
                      "Right Subarticular Stenosis": "Axial T2"}
    for t, name in enumerate(labels_lib.TARGETS):
        assert name.startswith(labels_lib.CONDITIONS[labels_lib.TARGET_CONDITION[t]])
        assert labels_lib.TARGET_SERIES[t] == labels_lib.CONDITION_SERIES[labels_lib.TARGET_CONDITION[t]]
    # a flip keeps the series
    np.testing.assert_array_equal(labels_lib.TARGET_SERIES[labels_lib.MIRROR_TARGET_INDEX], labels_lib.TARGET_SERIES)


def test_severity_codes():
    spellings = ("Normal/Mild", "Moderate", "Severe", float("nan"), "")
    assert [labels_lib.severity_code(s) for s in spellings] == [0, 1, 2, -1, -1]
    with pytest.raises(ValueError, match="Mild"):
        labels_lib.severity_code("Mild")


def _write_case(tmp_path, rng, n=6):
    labels = rng.choice(3, size=(n, 25))
    labels[0, 3] = -1
    study_ids = rng.choice(10**7, size=n, replace=False) + 10**6
    table = pd.DataFrame({"study_id": study_ids})
    for t, target in enumerate(labels_lib.TARGETS):
        table[target] = [labels_lib.SEVERITY_NAMES[c] if c >= 0 else None for c in labels[:, t]]
    table.to_csv(tmp_path / "train.csv", index=False)
    probs = rng.dirichlet([1, 1, 1], size=(n, 25))
    rows = [(labels_lib.row_id(s, t), *probs[i, j])
            for i, s in enumerate(study_ids) for j, t in enumerate(labels_lib.TARGETS)]
    pd.DataFrame(rows, columns=["row_id", *labels_lib.SEVERITY_COLUMNS]).sample(frac=1, random_state=0).to_csv(
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


def test_score_names_a_study_the_solution_lacks_as_a_plain_number(tmp_path, capsys):
    _write_case(tmp_path, np.random.default_rng(1))
    solution = pd.read_csv(tmp_path / "train.csv")
    solution.iloc[1:].to_csv(tmp_path / "train.csv", index=False)
    argv = ["--solution", str(tmp_path / "train.csv"), "--submission", str(tmp_path / "submission.csv")]
    assert cli.run(score.main, argv) == 2
    err = capsys.readouterr().err
    assert f"1 studies not in {tmp_path / 'train.csv'}, e.g. [{int(solution['study_id'][0])}]" in err
    assert "np." not in err


def test_score_fits_the_references_on_the_train_csv_beside_the_solution(tmp_path, capsys):
    labels, probs = _write_case(tmp_path, np.random.default_rng(2), n=8)
    train = pd.read_csv(tmp_path / "train.csv")
    train.iloc[:3].to_csv(tmp_path / "solution.csv", index=False)  # 3 held-out studies, train.csv beside them
    sub = pd.read_csv(tmp_path / "submission.csv")
    sub[sub["row_id"].str.split("_").str[0].astype(int).isin(train["study_id"].iloc[:3])].to_csv(
        tmp_path / "sub3.csv", index=False)
    argv = ["--solution", str(tmp_path / "solution.csv"), "--submission", str(tmp_path / "sub3.csv")]
    assert score.main(argv) == 0
    captured = capsys.readouterr()
    assert f"fitted on the labels of {tmp_path / 'train.csv'}" in captured.out and "itself" not in captured.out
    result = score.score_submission(str(tmp_path / "solution.csv"), str(tmp_path / "sub3.csv"))
    assert result["prior_from"] == str(tmp_path / "train.csv") and not result["prior_is_solution"]
    order = np.argsort(train["study_id"].iloc[:3].to_numpy())  # the submission's studies, sorted
    want = metrics.evaluate_predictions(labels[:3][order], probs[:3][order], labels)
    assert result["baseline"]["score"] == pytest.approx(want["baseline"]["score"])
    assert result["weighted_prior"]["score"] == pytest.approx(want["weighted_prior"]["score"])
    on_itself = score.score_submission(str(tmp_path / "solution.csv"), str(tmp_path / "sub3.csv"),
                                       prior_from=str(tmp_path / "solution.csv"))
    assert on_itself["prior_is_solution"]
    assert on_itself["baseline"]["score"] != pytest.approx(result["baseline"]["score"])
    (tmp_path / "train.csv").unlink()  # no train.csv beside it: the solution itself, said so
    assert score.main(argv) == 0
    assert "(the solution itself" in capsys.readouterr().out


@pytest.mark.parametrize("n, warned", [(6, True), (20, False)])
def test_score_warns_in_one_line_below_20_studies(tmp_path, capsys, n, warned):
    _write_case(tmp_path, np.random.default_rng(3), n=n)
    argv = ["--solution", str(tmp_path / "train.csv"), "--submission", str(tmp_path / "submission.csv")]
    assert score.main(argv) == 0
    err = capsys.readouterr().err
    if warned:
        assert err == f"warning: only {n} studies scored (fewer than 20): the score and the references beside it " \
                      "are noisy\n"
    else:
        assert err == ""


def test_the_solution_is_read_leniently_every_row_kept_a_malformed_one_skipped(tmp_path):
    labels, _ = _write_case(tmp_path, np.random.default_rng(4), n=3)
    lines = (tmp_path / "train.csv").read_text().splitlines()
    (tmp_path / "train.csv").write_text("\n".join([*lines, lines[1], "123,Moderate"]) + "\n")
    with pytest.warns(problems.DataProblemWarning, match="line 6"):
        study_ids, codes = score.read_label_table(str(tmp_path / "train.csv"))
    assert len(study_ids) == 4 and study_ids[3] == study_ids[0]  # a repeated study is kept as it is
    np.testing.assert_array_equal(codes, np.concatenate([labels, labels[:1]]))
    with pytest.raises(ValueError, match="line 6"):  # the builder's strict mode refuses the row
        kaggle_csv.read_label_table(str(tmp_path / "train.csv"), strict=True)
