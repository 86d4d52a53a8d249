"""scripts/compare.py / lumbar_jax.compare on fake run directories whose cv_summary.json is built with
lumbar_jax.metrics, and on missing / unfinished ones."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lumbar_jax import compare, metrics
from lumbar_jax import labels as labels_lib

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "compare.py")


def fake_run(workdir, name: str, probs_fn, seed: int, loss: str | None = None, folds: int = 2) -> dict:
    """A finished run directory: config.json + a cv_summary.json of `probs_fn(labels)` on random labels."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=(40, labels_lib.NUM_TARGETS), p=[0.7, 0.2, 0.1])
    probs = probs_fn(labels)
    oof = {**metrics.competition_score(labels, probs), **metrics.classification_stats(labels, probs),
           "baseline": metrics.competition_score(labels, metrics.class_prior_baseline(labels, len(labels))),
           "weighted_prior": metrics.competition_score(labels, metrics.weighted_prior_baseline(labels, len(labels)))}
    os.makedirs(workdir)
    train = {"steps": 320} if loss is None else {"steps": 320, "loss": loss}
    config = {"model": {"name": name}, "data": {"config": "r64"}, "train": train, "cv": {"num_folds": folds}}
    json.dump(config, open(os.path.join(workdir, "config.json"), "w"))
    summary = {"oof": oof, "folds": [], "num_studies": len(labels)}
    json.dump(summary, open(os.path.join(workdir, "cv_summary.json"), "w"))
    return oof


def confident_truth(labels):
    return np.where(np.eye(3, dtype=bool)[labels], 0.9, 0.05)


def uniform(labels):
    return np.full((*labels.shape, 3), 1 / 3)


@pytest.fixture
def two_runs(tmp_path):
    a, b = str(tmp_path / "good"), str(tmp_path / "uniform")
    return (a, fake_run(a, "vit_effnet", confident_truth, 0)), (b, fake_run(b, "vit2d", uniform, 1, "cross_entropy"))


def test_rows_hold_the_summary_numbers(two_runs):
    (a, oof_a), (b, oof_b) = two_runs
    rows = compare.compare_runs([a, b])
    assert [r["run"] for r in rows] == [a, b]
    assert [(r["model"], r["loss"]) for r in rows] == [("vit_effnet", "metric"), ("vit2d", "cross_entropy")]
    for row, oof in zip(rows, (oof_a, oof_b)):
        assert row["score"] == oof["score"] and row["accuracy"] == oof["accuracy"]
        assert row["balanced_accuracy"] == oof["balanced_accuracy"]
        assert row["baseline"] == oof["baseline"]["score"] and row["best_constant"] == oof["weighted_prior"]["score"]
        for key in metrics.LOSS_KEYS:
            assert row[key] == oof[key]
    assert rows[0]["balanced_accuracy"] == 1.0 and rows[0]["score"] < rows[0]["best_constant"]
    for key in ("spinal", "foraminal", "subarticular"):  # uniform predictions: each group's loss is log 3
        assert rows[1][key] == pytest.approx(np.log(3), rel=1e-6)


def test_script_prints_text_markdown_and_json(two_runs, tmp_path):
    (a, oof_a), (b, _) = two_runs
    out = subprocess.run([sys.executable, SCRIPT, "--workdirs", a, b], capture_output=True, text=True, check=True)
    header, first, second = out.stdout.splitlines()[:3]
    assert "OOF score" in header and "class prior" in header and "best const" in header
    assert first.startswith(a) and f"{oof_a['score']:.4f}" in first and "vit2d" in second
    path = str(tmp_path / "rows.json")
    out = subprocess.run([sys.executable, SCRIPT, "--workdirs", a, b, "--markdown", "--json", path],
                         capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("| run | pipeline | model |") and "class-prior baseline" in lines[0]
    assert lines[1].startswith("|---")
    assert lines[2].startswith(f"| {a} | one_stage | vit_effnet | r64 | metric | {oof_a['score']:.4f} |")
    saved = json.load(open(path))
    assert [r["run"] for r in saved["runs"]] == [a, b] and saved["runs"][0]["score"] == oof_a["score"]


def test_missing_and_unfinished_runs_are_named_with_exit_status_2(two_runs, tmp_path):
    (a, _), _ = two_runs
    unfinished = tmp_path / "unfinished"
    os.makedirs(unfinished / "fold_0")
    json.dump({"model": {"name": "vit"}, "cv": {"num_folds": 5}}, open(unfinished / "config.json", "w"))
    open(unfinished / "fold_0" / "result.json", "w").write("{}")
    missing = str(tmp_path / "nowhere")
    with pytest.raises(compare.RunNotComparable) as err:
        compare.compare_runs([a, str(unfinished), missing])
    message = str(err.value)
    assert f"{unfinished}: no cv_summary.json" in message and "1 of 5 folds done" in message
    assert f"{missing}: no such run directory" in message and a not in message
    out = subprocess.run([sys.executable, SCRIPT, "--workdirs", a, missing], capture_output=True, text=True)
    assert out.returncode == 2 and missing in out.stderr and out.stdout == ""


def test_rows_say_the_pipeline_and_the_calibrated_score(tmp_path):
    one = str(tmp_path / "one")
    fake_run(one, "vit_effnet", confident_truth, 0)
    rows = {}
    for name, points in (("two", "predicted"), ("oracle", "annotated")):
        workdir = str(tmp_path / name)
        fake_run(workdir, "vit_effnet", confident_truth, 0)
        config = json.load(open(os.path.join(workdir, "config.json")))
        config.update(pipeline="two_stage", crops={"points": points})
        json.dump(config, open(os.path.join(workdir, "config.json"), "w"))
        summary = json.load(open(os.path.join(workdir, "cv_summary.json")))
        summary["calibration"] = {"before": summary["oof"]["score"], "after": 0.1234}
        json.dump(summary, open(os.path.join(workdir, "cv_summary.json"), "w"))
        rows[name] = workdir
    table = compare.compare_runs([one, rows["two"], rows["oracle"]])
    assert [r["pipeline"] for r in table] == ["one_stage", "two_stage", "two_stage (annotated points)"]
    assert table[0]["calibrated"] is None and table[1]["calibrated"] == 0.1234
    markdown = compare.format_markdown(table)
    assert "| nan |" in markdown.splitlines()[2] and "0.1234" in markdown.splitlines()[3]


def test_a_pipeline_this_version_does_not_know_is_shown_by_its_name(tmp_path):
    workdir = str(tmp_path / "later")
    fake_run(workdir, "vit_effnet", confident_truth, 0)
    config = json.load(open(os.path.join(workdir, "config.json")))
    json.dump({**config, "pipeline": "three_stage"}, open(os.path.join(workdir, "config.json"), "w"))
    assert compare.compare_runs([workdir])[0]["pipeline"] == "three_stage"


def test_runs_that_differ_only_in_seed_are_summarised_over_their_seeds(tmp_path, capsys):
    runs = [str(tmp_path / name) for name in ("s0", "s1", "other")]
    for i, (run, fn) in enumerate(zip(runs, (confident_truth, uniform, uniform))):
        fake_run(run, "vit_effnet" if i < 2 else "vit2d", fn, seed=i)
        config = json.load(open(os.path.join(run, "config.json"))) | {"seed": i, "compilation_cache": i == 0}
        json.dump(config, open(os.path.join(run, "config.json"), "w"))
        summary = json.load(open(os.path.join(run, "cv_summary.json")))
        summary["folds"] = [{"fold": k, "val": {"score": 0.5 + 0.1 * i + 0.01 * k}} for k in range(2)]
        json.dump(summary, open(os.path.join(run, "cv_summary.json"), "w"))
    rows = compare.compare_runs(runs)
    assert [r["worst_fold"] for r in rows] == pytest.approx([0.51, 0.61, 0.71])
    (group,) = compare.seed_groups(rows)  # the third run is another setting; a result-neutral field may differ
    scores = [rows[0]["score"], rows[1]["score"]]
    assert group["runs"] == runs[:2] and group["seeds"] == [0, 1]
    assert group["mean"] == pytest.approx(np.mean(scores)) and group["std"] == pytest.approx(np.std(scores, ddof=1))
    assert (group["min"], group["max"]) == (min(scores), max(scores))
    assert group["worst_fold"] == pytest.approx(0.61)
    assert (group["worst_fold_run"], group["worst_fold_index"]) == (runs[1], 1)
    assert subprocess.run([sys.executable, SCRIPT, "--workdirs", *runs], capture_output=True, text=True,
                          check=True).stdout.splitlines()[-1].startswith("2 seeds [0, 1] of one setting")
