"""Resume from a kill at any moment of a stage (train/loop.py `run_stage`, train/state.py `CheckpointStore`): before
the first best checkpoint, after it and before the first latest one, after a latest one with a newer best, and in
the middle of a checkpoint save. Each killed-and-resumed run ends exactly as the uninterrupted one. A linear
model trained by the project's own train step keeps every case to a second or two."""

import dataclasses
import glob
import os
import types

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lumbar_jax.train import loop
from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train import step as step_lib
from lumbar_jax.train.state import create_train_state, eval_model_state

WEIGHTS = np.array([[1.5], [-2.0]], np.float32)  # the regression the model learns
HELD_OUT = np.random.default_rng(99).normal(size=(16, 2)).astype(np.float32)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, and no handler of the loop catches it."""


def _batch(step: int) -> dict:
    x = np.random.default_rng(step).normal(size=(4, 2)).astype(np.float32)
    return {"x": x, "y": x @ WEIGHTS}


def _loss(model, batch):
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2), {}


def tiny_stage(directory: str, kill_at: int | None = None, **schedule) -> loop.Stage:
    """A Stage of a linear model (8 steps; held-out evaluation every 2, latest checkpoint every 4) that raises
    `Killed` when it reaches step `kill_at` (0-based: after `kill_at` steps are done and saved as due)."""
    train = types.SimpleNamespace(**{**dict(steps=8, lr=0.05, warmup_steps=0, batch_size=4, log_every=2,
                                            eval_every=2, checkpoint_every=4), **schedule})
    mesh = mesh_lib.make_mesh(1)
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    statics, state = create_train_state(model, optax.sgd(train.lr), use_ema=False)
    step_fn = step_lib.make_train_step(statics, mesh, 0, 0.0, _loss)

    def train_step(state, batch, step):
        if step == kill_at:
            raise Killed(f"killed at step {step}")
        return step_fn(state, batch, step)

    def evaluate(state):
        params = nnx.to_pure_dict(eval_model_state(state))
        predictions = HELD_OUT @ np.asarray(params["kernel"]) + np.asarray(params["bias"])
        score = float(np.mean((predictions - HELD_OUT @ WEIGHTS) ** 2))
        return predictions, {"score": score}

    return loop.Stage(name="tiny", directory=directory, statics=statics, state=state, train_step=train_step,
                      eval_step=None, batches=lambda start: (_batch(s) for s in range(start, train.steps)),
                      evaluate=evaluate, scalars=lambda r: {"val/score": r["score"]}, train=train)


def _outcome(stage_result) -> tuple:
    state, best_step, predictions, report = stage_result
    return best_step, report["score"], nnx.to_pure_dict(state["model"]), predictions


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return _outcome(loop.run_stage(tiny_stage(str(tmp_path_factory.mktemp("straight"))), mesh_lib.make_mesh(1)))


@pytest.mark.parametrize("kill_at, saved", [
    (1, ()),  # before the first best checkpoint: starts again from step 0
    (2, ("best",)),  # after the first best (step 2), before the first latest (step 4): the case
    (6, ("latest", "best")),  # a latest at step 4, and a newer best at step 6
])
def test_a_stage_killed_anywhere_resumes_and_ends_like_an_uninterrupted_one(straight, tmp_path, kill_at, saved):
    directory = str(tmp_path / "stage")
    with pytest.raises(Killed):
        loop.run_stage(tiny_stage(directory, kill_at=kill_at), mesh_lib.make_mesh(1))
    kept = tuple(kind for kind in ("latest", "best") if glob.glob(f"{directory}/checkpoints/{kind}/[0-9]*"))
    assert kept == saved
    resumed = _outcome(loop.run_stage(tiny_stage(directory), mesh_lib.make_mesh(1)))
    assert resumed[:2] == straight[:2]
    np.testing.assert_array_equal(resumed[2]["kernel"], straight[2]["kernel"])
    np.testing.assert_array_equal(resumed[3], straight[3])


def test_a_checkpoint_save_cut_short_is_neither_read_nor_in_the_way(straight, tmp_path):
    """A kill during an Orbax save leaves its temporary folder; the resumed run ignores and removes it."""
    directory = str(tmp_path / "stage")
    with pytest.raises(Killed):
        loop.run_stage(tiny_stage(directory, kill_at=5), mesh_lib.make_mesh(1))
    partial = os.path.join(directory, "checkpoints", "latest", "8.orbax-checkpoint-tmp-1700000000000000")
    os.makedirs(os.path.join(partial, "state"))
    resumed = _outcome(loop.run_stage(tiny_stage(directory), mesh_lib.make_mesh(1)))
    assert resumed[:2] == straight[:2]
    assert not os.path.exists(partial)


@pytest.mark.parametrize("scores, best_step", [(None, 8), ([3.0, 1.0, 2.0, 4.0], 4)])
def test_the_end_of_a_stage_reuses_the_best_evaluation(tmp_path, scores, best_step):
    """Held out is evaluated at steps 2, 4, 6 and 8 and not again at the end: the best evaluation's outputs are
    returned, with the state they came from (the last step's in memory, or the best checkpoint restored)."""
    stage = tiny_stage(str(tmp_path / "stage"))
    calls = []

    def evaluate(state):
        predictions, report = stage.evaluate(state)
        calls.append(predictions)
        return predictions, ({"score": scores[len(calls) - 1]} if scores else report)

    state, step, predictions, _ = loop.run_stage(dataclasses.replace(stage, evaluate=evaluate), mesh_lib.make_mesh(1))
    assert len(calls) == 4 and step == best_step
    np.testing.assert_array_equal(predictions, calls[best_step // 2 - 1])
    np.testing.assert_array_equal(stage.evaluate(state)[0], predictions)
