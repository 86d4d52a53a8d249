"""scripts/ensemble.py / lumbar_jax.seed_ensemble: two seeds of a tiny one-stage run (2 folds x 1 step, 12
synthetic studies) trained once per module through the command; the average is the hand average of the
members' OOF CSVs, scored by the metric on the dataset's labels; a re-run resumes, a drifted config, another
setting, another dataset, an unfinished member and a bad seed list are refused in one line."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from lumbar_jax import cli, inference, metrics, rundir, seed_ensemble
from lumbar_jax import labels as labels_lib
from lumbar_jax.data import build, synthetic
from lumbar_jax.train import folds as folds_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "ensemble.py")
CONFIG = os.path.join(REPO, "configs", "vit_effnet_one_stage.py") + ":smoke"
_spec = importlib.util.spec_from_file_location("ensemble_script", SCRIPT)
ensemble_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ensemble_script)


def tiny_overrides(data_dir: str) -> list[str]:
    """The smoke config cut to tests/train/test_train.py's tiny run: a small ViT, 1 step per fold."""
    return [f"--config.data.data_dir={data_dir}", "--config.model.name=vit", "--config.model.head_hidden=32",
            "--config.model.drop_path=0.0", "--config.train.batch_size=4", "--config.train.eval_batch_size=4",
            "--config.train.steps=1", "--config.train.warmup_steps=1", "--config.train.eval_every=1",
            "--config.train.checkpoint_every=1", "--config.train.log_every=1"]


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """(the command line that trained it, the ensemble's workdir): seeds 0 and 1 of the tiny run."""
    root = tmp_path_factory.mktemp("seed_ensemble")
    synthetic.write_synthetic_dataset(str(root / "kaggle"), synthetic.DatasetSpec(12, seed=5), progress=False)
    build.build_dataset(str(root / "kaggle"), str(root / "tfds"), "r64", workers=1)
    workdir = str(root / "ensemble")
    argv = ["--config", CONFIG, "--seeds", "0", "1", "--workdir", workdir, *tiny_overrides(str(root / "tfds"))]
    assert cli.run(ensemble_script.main, argv) == 0
    return argv, workdir


def _copy_member(workdir: str, tmp_path, name: str) -> str:
    """A copy of the ensemble's seed-1 member (its result files only) at tmp_path/name."""
    copy = str(tmp_path / name)
    shutil.copytree(seed_ensemble.member_workdir(workdir, 1), copy, ignore=shutil.ignore_patterns("checkpoints"))
    return copy


def _edit_json(path: str, edit) -> None:
    with open(path) as f:
        value = json.load(f)
    edit(value)
    with open(path, "w") as f:
        json.dump(value, f)


def test_the_average_is_the_hand_average_of_the_members_scored_by_the_metric(ensemble, capsys):
    _, workdir = ensemble
    members = [seed_ensemble.member_workdir(workdir, s) for s in (0, 1)]
    assert [rundir.read_config(m)["seed"] for m in members] == [0, 1]
    frames = [pd.read_csv(rundir.oof_path(m), index_col="row_id") for m in members]
    hand = (frames[0][list(labels_lib.SEVERITY_COLUMNS)] + frames[1][list(labels_lib.SEVERITY_COLUMNS)]) / 2

    result, predictions = seed_ensemble.average_runs(members)
    split = folds_lib.load_fold_split(inference.load_run_config(members[0]))
    scored = np.flatnonzero(split.folds >= 0)
    rows = [labels_lib.row_id(s, t) for s in split.study_ids[scored] for t in labels_lib.TARGETS]
    expected = hand.loc[rows].to_numpy().reshape(len(scored), labels_lib.NUM_TARGETS, 3)
    np.testing.assert_allclose(predictions.probs, expected, rtol=1e-12)
    oof = result["ensemble"]["oof"]
    assert oof["score"] == pytest.approx(metrics.competition_score(split.labels[scored], expected)["score"])
    np.testing.assert_array_equal(predictions.folds, split.folds[scored])  # the first member's folds
    assert [f["fold"] for f in result["ensemble"]["folds"]] == [0, 1]
    assert [m["score"] for m in result["members"]] == [rundir.read_summary(m)["oof"]["score"] for m in members]
    assert result["std_member_score"] == pytest.approx(np.std([m["score"] for m in result["members"]], ddof=1))

    written = pd.read_csv(os.path.join(workdir, rundir.ENSEMBLE_OOF_FILE), index_col="row_id")
    assert list(written.columns) == [*labels_lib.SEVERITY_COLUMNS, "fold"]
    np.testing.assert_allclose(written.loc[rows, list(labels_lib.SEVERITY_COLUMNS)], hand.loc[rows], rtol=1e-5)
    saved = json.load(open(os.path.join(workdir, rundir.ENSEMBLE_SUMMARY_FILE)))
    assert saved["ensemble"]["oof"]["score"] == pytest.approx(oof["score"])

    out_dir = os.path.join(os.path.dirname(workdir), "averaged")
    assert cli.run(ensemble_script.main, ["--workdirs", *members, "--out", out_dir]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:3]] == [["seed", "0"], ["seed", "1"]]
    assert lines[5].startswith("average") and f"{oof['score']:.4f}" in lines[5]
    assert any(line.startswith("worst fold of the average: fold ") for line in lines)
    assert lines[-2].startswith("verdict: OOF score") and lines[-1].startswith("wrote ")
    assert sorted(os.listdir(out_dir)) == sorted([rundir.ENSEMBLE_OOF_FILE, rundir.ENSEMBLE_SUMMARY_FILE])


def test_a_rerun_resumes_and_a_drifted_config_is_refused_before_any_work(ensemble, capsys):
    argv, workdir = ensemble
    results = [rundir.result_path(seed_ensemble.member_workdir(workdir, s), k) for s in (0, 1) for k in (0, 1)]
    before = [os.path.getmtime(p) for p in results]
    assert cli.run(ensemble_script.main, argv) == 0  # every member finished: nothing trained again
    assert [os.path.getmtime(p) for p in results] == before
    capsys.readouterr()
    assert cli.run(ensemble_script.main, [*argv, "--config.train.steps=2"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "train.steps 1 -> 2" in error and "seed_0" in error
    assert [os.path.getmtime(p) for p in results] == before


def test_members_of_another_setting_dataset_or_unfinished_are_refused_naming_them(ensemble, tmp_path, capsys):
    _, workdir = ensemble
    first = seed_ensemble.member_workdir(workdir, 0)
    other_setting = _copy_member(workdir, tmp_path, "other_setting")
    _edit_json(rundir.config_path(other_setting), lambda c: c["model"].update(head_hidden=16))
    other_data = _copy_member(workdir, tmp_path, "other_data")
    _edit_json(rundir.dataset_path(other_data), lambda d: d.update(content_hash="0" * 64))
    unfinished = _copy_member(workdir, tmp_path, "unfinished")
    os.remove(rundir.summary_path(unfinished))
    same_seed = _copy_member(workdir, tmp_path, "same_seed")
    _edit_json(rundir.config_path(same_seed), lambda c: c.update(seed=0))
    for member, named in ((other_setting, "model.head_hidden 32 -> 16"), (other_data, "content_hash"),
                          (unfinished, "unfinished"), (same_seed, "seed 0")):
        assert cli.run(ensemble_script.main, ["--workdirs", first, member]) == 2
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and member in error and named in error


@pytest.mark.parametrize("seeds, named", [(["3"], "at least 2"), (["3", "3"], "[3] given more than once"),
                                          (["3", str(2**32)], "not integers in [0, 2**32)")])
def test_a_bad_seed_list_is_refused_before_any_work(tmp_path, capsys, seeds, named):
    workdir = str(tmp_path / "ensemble")
    assert cli.run(ensemble_script.main, ["--config", CONFIG, "--seeds", *seeds, "--workdir", workdir]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("error: --seeds") and named in error
    assert not os.path.exists(workdir)


def test_help_answers_without_importing_jax():
    code = (f"import runpy, sys\nsys.argv = [{SCRIPT!r}, '--help']\n"
            f"try:\n    runpy.run_path({SCRIPT!r}, run_name='__main__')\n"
            "except SystemExit as exit_:\n    print('exit', exit_.code, 'jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": REPO}).stdout
    assert "--seeds" in out and "--workdirs" in out and out.strip().endswith("exit 0 False")
