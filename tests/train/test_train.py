"""The main job on a tiny config: checkpoints and metrics written, CV outputs, resume, NaN stop, 4 devices.

Everything runs on a small synthetic dataset built once per module and a tiny ViT, on CPU; the conftest
fakes 4 CPU devices.
"""

import json
import os

import jax
import numpy as np
import pandas as pd
import pytest

from lumbar_jax import labels
from lumbar_jax import cross_validation, main as main_module
from lumbar_jax import rundir
from lumbar_jax.train import config as config_lib
from lumbar_jax.train import loop
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train import step as step_lib
from lumbar_jax.train.init import study_model_state


def tiny_config(data_dir: str, **train):
    c = config_lib.apply_variant(config_lib.default_config(), "smoke")
    c.data.data_dir = data_dir
    c.model.update(name="vit", head_hidden=32, drop_path=0.0)  # the default target-query head, coord loss on
    c.train.update(batch_size=4, eval_batch_size=4, steps=2, warmup_steps=1, eval_every=2, checkpoint_every=2,
                   log_every=1)
    c.train.update(train)
    return c


def test_one_step_per_fold_writes_checkpoints_metrics_and_cv_outputs(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny_config(data_dir, steps=1, eval_every=1, checkpoint_every=1)
    summary = cross_validation.cross_validate(config, workdir)
    for k in range(2):
        fold = os.path.join(workdir, f"fold_{k}")
        assert os.path.isdir(os.path.join(fold, "checkpoints", "latest", "1"))
        assert os.path.isdir(os.path.join(fold, "checkpoints", "best", "1"))
        lines = [json.loads(x) for x in open(os.path.join(fold, "metrics.jsonl"))]
        assert any("train/loss" in x for x in lines) and any("val/score" in x for x in lines)
    oof = pd.read_csv(os.path.join(workdir, "oof_predictions.csv"))
    assert list(oof.columns) == ["row_id", *labels.SEVERITY_COLUMNS, "fold"]
    assert len(oof) == 25 * summary["num_studies"] and oof["row_id"].is_unique
    np.testing.assert_allclose(oof[list(labels.SEVERITY_COLUMNS)].sum(axis=1), 1.0, atol=1e-4)
    saved = json.load(open(os.path.join(workdir, "cv_summary.json")))
    assert saved["oof"]["score"] == pytest.approx(summary["oof"]["score"])
    assert "baseline" in saved["oof"] and "weighted_prior" in saved["oof"] and len(saved["folds"]) == 2
    assert all(f["val"]["peak_distance"] >= 0 for f in saved["folds"])  # target-query head: localisation
    fold_peaks = [f["val"]["peak_distance"] for f in saved["folds"]]
    assert saved["oof"]["peak_distance"] == pytest.approx(np.mean(fold_peaks))
    assert json.load(open(os.path.join(workdir, "config.json")))["model"]["name"] == "vit"


def test_killed_and_resumed_fold_ends_like_an_uninterrupted_one(data_dir, tmp_path, monkeypatch):
    config = tiny_config(data_dir, steps=4, checkpoint_every=2, eval_every=2)
    config.cv.fold = 0
    assert cross_validation.cross_validate(config, str(tmp_path / "straight")) is None
    straight = rundir.read_fold_result(str(tmp_path / "straight"), 0)

    original = step_lib.make_train_step

    def dies_at_step_3(*args, **kwargs):
        step_fn = original(*args, **kwargs)

        def wrapped(state, batch, step):
            if step == 3:
                raise KeyboardInterrupt("killed")
            return step_fn(state, batch, step)
        return wrapped

    monkeypatch.setattr(step_lib, "make_train_step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        cross_validation.cross_validate(config, str(tmp_path / "resumed"))
    monkeypatch.setattr(step_lib, "make_train_step", original)
    cross_validation.cross_validate(config, str(tmp_path / "resumed"))
    resumed = rundir.read_fold_result(str(tmp_path / "resumed"), 0)
    assert resumed["best_step"] == straight["best_step"]
    np.testing.assert_allclose(resumed["val_probs"], straight["val_probs"], rtol=1e-6, atol=1e-7)
    assert resumed["val"]["score"] == pytest.approx(straight["val"]["score"], abs=1e-9)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(data_dir, tmp_path, monkeypatch):
    config = tiny_config(data_dir, steps=4, checkpoint_every=1, eval_every=4)
    config.cv.fold = 1
    original = step_lib.make_train_step

    def nan_from_step_2(*args, **kwargs):
        step_fn = original(*args, **kwargs)

        def wrapped(state, batch, step):
            state, metrics = step_fn(state, batch, step)
            return state, ({**metrics, "loss": metrics["loss"] * np.nan} if step >= 2 else metrics)
        return wrapped

    monkeypatch.setattr(step_lib, "make_train_step", nan_from_step_2)
    with pytest.raises(loop.NonFiniteLossError, match=r"step 3.*checkpoint \(step 2\)"):
        cross_validation.cross_validate(config, str(tmp_path / "nan"))
    assert os.path.isdir(tmp_path / "nan" / "fold_1" / "checkpoints" / "latest" / "2")


def test_train_step_on_four_devices_matches_one(data_dir):
    assert jax.device_count() >= 4
    config = tiny_config(data_dir)
    config.model.update(name="vit_effnet", effnet="effnet_cpu")  # BatchNorm: global statistics
    config.train.ema_decay = 0.5  # the EMA is donated with the parameters: it needs buffers of its own
    rng = np.random.default_rng(0)
    batch = {"volumes": rng.integers(0, 255, (4, 3, 16, 64, 64), dtype=np.uint8),
             "present": np.array([[1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 1, 1]], bool),
             "labels": rng.integers(-1, 3, (4, 25)).astype(np.int32)}
    results = []
    for devices in (1, 4):
        mesh = mesh_lib.make_mesh(devices)
        statics, state = study_model_state(config, mesh)
        train_step = step_lib.make_train_step(statics, mesh, seed=0, ema_decay=config.train.ema_decay)
        state, metrics = train_step(state, mesh_lib.shard_batch(batch, mesh), 0)
        results.append((jax.device_get((state["model"], state["ema"])), float(metrics["loss"])))
    (one, loss1), (four, loss4) = results
    assert loss1 == pytest.approx(loss4, rel=1e-5)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(four)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("model.name", "resnet", "model.name"),
    ("model.volume_shape", (32, 128, 128), "model.volume_shape"),
    ("cv.fold", 7, "config.fold: 7"),  # named as typed: --config.fold (cv.fold is its alias)
    ("train.warmup_steps", 10**6, "train.warmup_steps"),
])
def test_bad_config_is_refused_before_any_work_naming_the_field(tmp_path, field, value, message):
    config = config_lib.default_config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(config_lib.ConfigError, match=message):
        cross_validation.cross_validate(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")  # refused before anything was written


def test_main_flags_and_default_workdir():
    assert main_module.default_workdir("configs/vit_effnet.py") == os.path.join("runs", "vit_effnet")
    assert main_module.default_workdir("configs/vit.py:smoke") == os.path.join("runs", "vit_smoke")
