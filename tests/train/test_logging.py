"""What a fold logs: each train metric's mean over the logging interval, the schedule's learning rate, the
throughput in studies/s, and the same keys in metrics.jsonl and TensorBoard."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumbar_jax import cross_validation
from lumbar_jax.train import step as step_lib
from lumbar_jax.train.logging import MetricLogger
from tests.train.test_train import tiny_config


def test_logged_loss_is_the_interval_mean_with_the_schedule_lr_and_studies_per_s(data_dir, tmp_path, monkeypatch):
    config = tiny_config(data_dir, steps=4, log_every=2, eval_every=4, checkpoint_every=4, warmup_steps=2)
    config.cv.fold = 0
    original, seen = step_lib.make_train_step, {}

    def known_losses(*args, **kwargs):
        step_fn = original(*args, **kwargs)

        def wrapped(state, batch, step):
            state, metrics = step_fn(state, batch, step)
            seen[step] = float(jax.device_get(metrics["grad_norm"]))
            return state, {**metrics, "loss": jnp.float32(10.0 * (step + 1))}  # 10, 20, 30, 40
        return wrapped

    monkeypatch.setattr(step_lib, "make_train_step", known_losses)
    cross_validation.cross_validate(config, str(tmp_path / "run"))
    lines = [json.loads(x) for x in open(tmp_path / "run" / "fold_0" / "metrics.jsonl")]
    train = [x for x in lines if "train/loss" in x]
    assert [x["step"] for x in train] == [2, 4]
    assert [x["train/loss"] for x in train] == [pytest.approx(15.0), pytest.approx(35.0)]
    assert train[1]["train/grad_norm"] == pytest.approx((seen[2] + seen[3]) / 2, rel=1e-6)
    schedule = step_lib.learning_rate_schedule(config.train.lr, config.train.steps, config.train.warmup_steps)
    assert [x["train/learning_rate"] for x in train] == [pytest.approx(float(schedule(1))),
                                                         pytest.approx(float(schedule(3)))]
    assert train[0]["train/learning_rate"] == pytest.approx(config.train.lr / 2)  # step 1 of a 2-step warm-up
    # step 0 compiles: the first interval's rate is step 1's alone; both are studies (records) per second
    assert all(x["train/studies_per_s"] > 0 for x in train)
    assert not any("train/volumes_per_s" in x for x in lines)


def test_first_interval_of_one_compiling_step_logs_no_rate(data_dir, tmp_path):
    config = tiny_config(data_dir, steps=2, log_every=1)
    config.cv.fold = 0
    cross_validation.cross_validate(config, str(tmp_path / "run"))
    train = [json.loads(x) for x in open(tmp_path / "run" / "fold_0" / "metrics.jsonl")]
    train = [x for x in train if "train/loss" in x]
    assert "train/studies_per_s" not in train[0] and train[1]["train/studies_per_s"] > 0


def test_schedule_is_the_one_the_optimizer_applies():
    """With a constant gradient, AdamW's update (no decay, no clipping) is -lr of the step: the logged
    schedule must be the optimizer's."""
    config = tiny_config("unused", steps=7, warmup_steps=3)
    tc = config.train
    tx = step_lib.make_optimizer(tc.lr, tc.steps, tc.warmup_steps, weight_decay=0.0, grad_clip=1e9)
    params = jnp.zeros(())
    opt_state = tx.init(params)
    schedule = step_lib.learning_rate_schedule(tc.lr, tc.steps, tc.warmup_steps)
    for step in range(tc.steps):
        updates, opt_state = tx.update(jnp.ones(()), opt_state, params)
        assert float(-updates) == pytest.approx(float(schedule(step)), rel=1e-4, abs=1e-12)  # float32 bias correction


def test_jsonl_and_tensorboard_get_the_same_keys(tmp_path, monkeypatch):
    logger = MetricLogger(str(tmp_path))
    written = []
    monkeypatch.setattr(logger._tb, "add_scalar", lambda key, value, step: written.append((key, value, step)))
    logger.write(3, {"train/loss": 0.5, "val/score": math.nan})
    logger.close()
    line = json.loads(open(os.path.join(tmp_path, "metrics.jsonl")).read())
    assert line == {"step": 3, "train/loss": 0.5, "val/score": None}
    assert [k for k, _, _ in written] == ["train/loss", "val/score"] and np.isnan(written[1][1])
