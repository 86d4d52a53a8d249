"""The persistent compilation cache: folds (train steps differing only in seed) compile to one program."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from lumbar_jax.train import mesh as mesh_lib
from lumbar_jax.train import step as step_lib
from lumbar_jax.train import xla_cache
from lumbar_jax.train.state import create_train_state


class _DropoutLinear(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.linear = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.linear(self.drop(x))


def _loss(model, batch):
    return jnp.mean(model(batch["x"]) ** 2), {}


@pytest.fixture
def every_program_cached():
    """Cache programs however fast they compile; afterwards JAX's cache settings are as before."""
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compilation_cache.set_cache_dir(before[0])
    compilation_cache.reset_cache()


def _one_step(seed: int) -> np.ndarray:
    statics, state = create_train_state(_DropoutLinear(nnx.Rngs(params=0, dropout=1)), optax.sgd(0.1), use_ema=False)
    mesh = mesh_lib.make_mesh(1)
    state = jax.device_put(state, mesh_lib.replicated(mesh))
    train_step = step_lib.make_train_step(statics, mesh, seed, 0.0, _loss)
    batch = {"x": jnp.ones((2, 8), jnp.float32)}
    new_state, _ = train_step(state, batch, jnp.int32(0))
    return np.asarray(jax.device_get(new_state["model"]["linear"]["kernel"][...]))


def test_train_steps_of_different_seeds_are_one_cached_program(tmp_path, every_program_cached):
    directory = xla_cache.enable(str(tmp_path))
    assert directory == os.path.join(str(tmp_path), "xla") and jax.config.jax_compilation_cache_dir == directory
    fold_0, fold_1 = _one_step(0), _one_step(1000)
    assert not np.allclose(fold_0, fold_1)  # the seed still reaches dropout
    assert len(glob.glob(os.path.join(directory, "jit_train_step-*"))) == 1
    np.testing.assert_array_equal(_one_step(1000), fold_1)  # the loaded program computes the same


def test_a_second_directory_takes_over(tmp_path, every_program_cached):
    xla_cache.enable(str(tmp_path / "first"))
    _one_step(0)
    second = xla_cache.enable(str(tmp_path / "second"))
    _one_step(0)
    assert glob.glob(os.path.join(second, "jit_train_step-*"))
