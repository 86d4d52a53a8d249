"""A run directory describes its checkpoints: a re-run that changes a field that changes results is refused
before any work and leaves the directory as it was, the unchanged command (or one that changes only
RESULT_NEUTRAL_FIELDS) resumes; a refused run leaves no files; a folder too small for the batch is refused
before the build; a kill while the summaries are written leaves no half-written file; the summary ends with its
verdict. One tiny finished one-stage run (1 step per fold) serves every test."""

import json
import os

import numpy as np
import pytest

from lumbar_jax import cross_validation, rundir
from lumbar_jax.train import config as config_lib
from tests.train.test_train import tiny_config


def _files(directory: str) -> dict[str, bytes]:
    """Every file under `directory` with its bytes: what a refused run must not change."""
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """(config, workdir, summary) of a finished 2-fold run."""
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    config = tiny_config(data_dir, steps=1, eval_every=1, checkpoint_every=1)
    return config, workdir, cross_validation.cross_validate(config, workdir)


def test_a_rerun_that_changes_results_is_refused_naming_each_field_and_changes_nothing(finished):
    config, workdir, _ = finished
    before = _files(workdir)
    changed = tiny_config(config.data.data_dir, steps=8, eval_every=1, checkpoint_every=1)
    changed.model.head_hidden = 16
    with pytest.raises(config_lib.ConfigError) as refused:
        cross_validation.cross_validate(changed, workdir)
    message = str(refused.value)
    assert "\n" not in message
    assert "(stored -> given): model.head_hidden 32 -> 16, train.steps 1 -> 8;" in message
    assert "new --workdir" in message and rundir.config_path(workdir) in message
    assert _files(workdir) == before


def test_the_unchanged_command_and_result_neutral_changes_resume_the_run(finished, capsys):
    config, workdir, summary = finished
    neutral = tiny_config(config.data.data_dir, steps=1, eval_every=1, checkpoint_every=1, log_every=5,
                          eval_batch_size=8)
    neutral.update_from_flattened_dict({"data.worker_count": 1, "compilation_cache": False})
    for same in (config, neutral):
        again = cross_validation.cross_validate(same, workdir)  # every fold finished: skipped, then summarised
        assert again["oof"]["score"] == summary["oof"]["score"]
    assert not config_lib.changed_fields(json.load(open(rundir.config_path(workdir))), config)
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("verdict: OOF score")


def test_result_neutral_fields_are_the_ones_the_conventions_list():
    conventions = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "conventions.md")).read()
    listed = conventions.split("Fields a re-run may change")[1].split("\n\n")[0]
    for field in config_lib.RESULT_NEUTRAL_FIELDS:
        assert f"`{field}`" in listed, field
    schema = config_lib.default_config()
    for field in config_lib.RESULT_NEUTRAL_FIELDS:  # every one is a field of the schema
        section, _, name = field.rpartition(".")
        assert name in (schema[section] if section else schema), field


def test_a_kill_while_the_summaries_are_written_leaves_no_partial_file(finished, monkeypatch):
    config, workdir, summary = finished
    os.remove(rundir.summary_path(workdir))
    os.remove(rundir.oof_path(workdir))
    real = rundir.write_text

    def dies_half_way(path, text):
        if path == rundir.summary_path(workdir):
            with open(os.path.join(os.path.dirname(path), f".partial.{os.path.basename(path)}"), "w") as f:
                f.write(text[: len(text) // 2])
            raise KeyboardInterrupt("killed while writing")
        real(path, text)

    monkeypatch.setattr(rundir, "write_text", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        cross_validation.cross_validate(config, workdir)
    assert not os.path.exists(rundir.summary_path(workdir))  # a half-written summary is never under its name
    monkeypatch.setattr(rundir, "write_text", real)
    again = cross_validation.cross_validate(config, workdir)
    assert rundir.read_summary(workdir)["oof"]["score"] == again["oof"]["score"] == summary["oof"]["score"]
    assert not [n for n in os.listdir(workdir) if n.startswith(".partial.")]


def test_a_refused_run_leaves_no_files(data_dir, tmp_path):
    config = tiny_config(data_dir, batch_size=8)  # 12 studies in 2 folds: 6 training studies per fold
    with pytest.raises(config_lib.ConfigError, match=r"^config.train.batch_size: 8, but the dataset .* leaves "
                                                     r"6, 6 training studies per fold \(2 folds\); use a batch of "
                                                     r"at most 6, or fewer folds$"):
        cross_validation.cross_validate(config, str(tmp_path / "new"))
    assert not os.path.exists(tmp_path / "new")


def test_a_folder_too_small_for_the_batch_is_refused_before_the_build(kaggle_dir, tmp_path):
    config = config_lib.apply_two_stage_variant(config_lib.two_stage_config(), "smoke")
    config.data.update(manual_dir=kaggle_dir, data_dir=str(tmp_path / "tfds"))
    config.localiser.batch_size = 8
    with pytest.raises(config_lib.ConfigError, match=r"^config.localiser.batch_size: 8, but .*train.csv \(12 "
                                                     r"labelled studies\) leaves 6, 6 training studies per fold"):
        cross_validation.cross_validate(config, str(tmp_path / "new"))
    assert not os.path.exists(tmp_path / "tfds") and not os.path.exists(tmp_path / "new")  # nothing built


def test_the_verdict_line_says_whether_the_model_beats_the_best_constant():
    oof = {"score": 1.0131, "baseline": {"score": 1.0418}, "weighted_prior": {"score": 0.9534}}
    line = cross_validation.verdict(oof)
    assert line == ("verdict: OOF score 1.0131 (competition log loss, lower is better) against the class prior "
                    "1.0418 and the best constant 0.9534: the model does NOT beat the best constant (worse by "
                    "0.0597); its predictions carry no more than the label frequencies")
    assert cross_validation.verdict({**oof, "score": 0.9}).endswith("beats the best constant by 0.0534")


def test_the_summary_records_per_group_calibration_and_the_verdict(finished):
    _, workdir, _ = finished
    stored = rundir.read_summary(workdir)
    groups = stored["calibration"]["groups"]
    assert stored["calibration"]["calibrated"] == [g for g, v in groups.items() if v["calibrated"]]
    assert set(stored["calibration"]["temperatures"]) == set(stored["calibration"]["calibrated"])
    assert stored["oof"]["beats_best_constant"] == (stored["oof"]["score"] < stored["oof"]["weighted_prior"]["score"])
    assert np.isfinite(stored["oof"]["score"])
