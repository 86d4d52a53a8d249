"""The two-stage main job on a tiny config: both stages per fold, the run directory's files, resume after a kill
in either stage, and the localiser's figures in cv_summary.json."""

import json
import os

import numpy as np
import pytest

from lumbar_jax import cross_validation, rundir
from lumbar_jax.train import config as config_lib
from lumbar_jax.train import step as step_lib


def tiny_two_stage_config(data_dir: str, **train):
    c = config_lib.apply_variant(config_lib.two_stage_config(), "smoke")
    c.data.data_dir = data_dir
    c.model.update(head_hidden=32, head_depth=1, drop_path=0.0, slice_patch=(8, 8))
    c.crops.update(slices=3, pixels=16)
    c.localiser.update(variant="loc_tiny_test", batch_size=4, steps=2, warmup_steps=1, eval_every=2)
    c.train.update(batch_size=4, eval_batch_size=4, steps=4, warmup_steps=1, eval_every=2, checkpoint_every=2,
                   log_every=1)
    c.train.update(train)
    return c


def test_both_stages_run_per_fold_and_write_the_run_directory(native_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    summary = cross_validation.cross_validate(tiny_two_stage_config(native_data_dir), workdir)
    assert np.isfinite(summary["oof"]["score"])
    for k in range(2):
        assert os.path.isdir(os.path.join(rundir.localiser_dir(workdir, k), "checkpoints", "best"))
        assert os.path.isdir(os.path.join(rundir.checkpoints_dir(workdir, k), "best"))
        saved = rundir.read_localiser_predictions(rundir.localiser_predictions_path(workdir, k))
        assert saved["points"].shape == (12, 25, 3) and np.isfinite(saved["points"]).all()
        result = rundir.read_fold_result(workdir, k)
        # the held-out studies of the predictions file are exactly the fold's held-out studies
        assert sorted(np.flatnonzero(saved["held_out"]).tolist()) == sorted(result["val_indices"])
        assert {"median_mm", "p90_mm", "level_accuracy"} <= set(result["localiser"])
    stored = json.load(open(rundir.summary_path(workdir)))
    assert {"median_mm", "p90_mm", "level_accuracy"} <= set(stored["localiser"])
    assert 0.0 <= stored["localiser"]["level_accuracy"] <= 1.0
    assert {"before", "after", "temperatures"} <= set(stored["calibration"])


def kill_test_config(data_dir: str):
    """The tiny config with a held-out evaluation (best checkpoint) at step 2 of each stage and the first latest
    checkpoint only at step 4, the end: a kill at step 2 or 3 finds a best checkpoint and no latest one."""
    config = tiny_two_stage_config(data_dir, checkpoint_every=4)
    config.localiser.update(steps=4, eval_every=2)
    config.cv.fold = 0
    return config


@pytest.fixture(scope="module")
def uninterrupted(native_data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    assert cross_validation.cross_validate(kill_test_config(native_data_dir), workdir) is None
    return rundir.read_fold_result(workdir, 0)


@pytest.mark.parametrize("stage, kill_at", [
    (1, 2),  # the localiser, after its first best checkpoint and before any latest one (issue 27's case)
    (2, 3),  # the crop classifier, after its best checkpoint at step 2
])
def test_killed_in_either_stage_and_resumed_ends_like_an_uninterrupted_run(native_data_dir, tmp_path, monkeypatch,
                                                                        uninterrupted, stage, kill_at):
    config, workdir = kill_test_config(native_data_dir), str(tmp_path / "resumed")
    original, made = step_lib.make_train_step, []

    def dies_in_the_stage(*args, **kwargs):
        step_fn = original(*args, **kwargs)
        made.append(step_fn)
        made_for = len(made)  # the localiser's train step is made first, the classifier's second

        def wrapped(state, batch, step):
            if made_for == stage and step == kill_at:
                raise KeyboardInterrupt("killed")
            return step_fn(state, batch, step)
        return wrapped

    monkeypatch.setattr(step_lib, "make_train_step", dies_in_the_stage)
    with pytest.raises(KeyboardInterrupt):
        cross_validation.cross_validate(config, workdir)
    monkeypatch.setattr(step_lib, "make_train_step", original)
    # a localiser that finished before the kill keeps its predictions and is not trained again
    assert os.path.exists(rundir.localiser_predictions_path(workdir, 0)) == (stage == 2)
    cross_validation.cross_validate(config, workdir)
    resumed = rundir.read_fold_result(workdir, 0)
    assert resumed["best_step"] == uninterrupted["best_step"]
    np.testing.assert_allclose(resumed["val_probs"], uninterrupted["val_probs"], rtol=1e-5, atol=1e-6)
    assert resumed["localiser"] == uninterrupted["localiser"]


def test_two_stage_config_needs_a_native_dataset():
    c = config_lib.two_stage_config()
    c.data.config = "r64"
    with pytest.raises(config_lib.ConfigError, match="config.data.config: 'r64': pipeline='two_stage'"):
        config_lib.validate(c)
