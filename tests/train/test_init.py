"""Fresh states (train/init.py): models initialised by one compiled program, kept per key."""

import jax
import numpy as np
from flax import nnx

from lumbar_jax.models import registry
from lumbar_jax.train import init
from lumbar_jax.train.config import two_stage_config
from lumbar_jax.train.seeds import model_rngs


def _params(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def test_initialised_draws_what_the_eager_build_draws_and_reuses_its_program():
    """The compiled initialisation draws the eager build's values (the same random streams; float rounding of
    the fused program aside), once per key: a second call runs the kept program into fresh buffers (a train
    step may donate the first), and another key (seed) draws other values."""
    config = two_stage_config()
    config.localiser.variant = "loc_tiny_test"

    def build(seed):
        return lambda: registry.create_localiser(config.localiser, config.model, tuple(config.model.volume_shape),
                                                 model_rngs(seed))

    eager = build(0)()
    first = init.initialised(build(0), ("test_localiser", 0))
    again = init.initialised(build(0), ("test_localiser", 0))
    other = init.initialised(build(1), ("test_localiser", 1))

    assert nnx.graphdef(first) == nnx.graphdef(eager)
    for a, b, c in zip(_params(first), _params(eager), _params(again)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(a, c)
    kernels = [a for a in _params(first) if a.ndim > 1]
    assert any(not np.array_equal(a, b) for a, b in zip(kernels, [a for a in _params(other) if a.ndim > 1]))
    first_leaves, again_leaves = jax.tree.leaves(nnx.state(first)), jax.tree.leaves(nnx.state(again))
    assert all(a is not b for a, b in zip(first_leaves, again_leaves))


def test_the_key_holds_the_seed_and_the_config_sections():
    config = two_stage_config()
    key = init._init_key("crop_classifier", config, "model", "crops")
    config.crops.pixels = 48
    assert init._init_key("crop_classifier", config, "model", "crops") != key
    config.crops.pixels, config.seed = two_stage_config().crops.pixels, 3
    assert init._init_key("crop_classifier", config, "model", "crops") != key
