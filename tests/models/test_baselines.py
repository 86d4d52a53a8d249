"""The earlier systems' models (models/baselines.py): both configs build, the 2D model reads the middle sagittal
T2 slice and nothing else, the grid model reads all three channels."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumbar_jax.models import baselines, create_model
from lumbar_jax.models.registry import uses_query_attention
from lumbar_jax.train import config as config_lib
from tests.models.helpers import model_config, num_params

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def load_config(name: str, variant=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


# (config, variant) -> (model class, parameters). CPU defaults: ViT-Ti width, 6 blocks of 444_864, 64 tokens:
# patch embedding 8*8*3*192 + 192 (2D) / 8**3*3*192 + 192 (3D), cls 192, pos 65*192, norm 384, head 192*75 + 75.
# `full`: ViT-B/16 at 224 with 3 channels is timm's vit_base_patch16_224 (86_567_656) minus its 1000-class head
# plus a 75-output one; the 3D one has 16x more patch-embedding weights and 512 instead of 196 tokens.
BUILDS = {
    ("baseline_vit2d", None): (baselines.SliceViT, 6 * 444_864 + 37_056 + 192 + 12_480 + 384 + 14_475),
    ("baseline_vit2d", "full"): (baselines.SliceViT, 86_567_656 - 769_000 + 57_675),
    ("baseline_vit3d_grid", None): (baselines.GridViT, 6 * 444_864 + 295_104 + 192 + 12_480 + 384 + 14_475),
    ("baseline_vit3d_grid", "full"): (baselines.GridViT,
                                      86_567_656 - 769_000 + 57_675 + 15 * 589_824 + 768 * (512 - 196)),
}


@pytest.mark.parametrize("name,variant", BUILDS)
def test_configs_validate_and_build(name, variant):
    config = load_config(name, variant)
    config_lib.validate(config)
    assert not uses_query_attention(config.model) and config.train.coord_loss_weight == 0
    model_class, count = BUILDS[(name, variant)]
    model = nnx.eval_shape(lambda: create_model(config.model, nnx.Rngs(0)))  # abstract: no memory for ViT-B
    assert isinstance(model, model_class) and num_params(model) == count
    volumes = jax.ShapeDtypeStruct((2, 3, *config.model.volume_shape), jnp.uint8)
    present = jax.ShapeDtypeStruct((2, 3), jnp.bool_)
    logits = jax.eval_shape(lambda v, p: create_model(config.model, nnx.Rngs(0))(v, p), volumes, present)
    assert logits.shape == (2, 25, 3) and logits.dtype == jnp.float32


forward = nnx.jit(lambda model, volumes, present: model(volumes, present))


def small_slice_model():
    cfg = model_config("vit2d", vit="vit_cpu", patch=(1, 8, 8), image_size=(16, 16), volume_shape=(5, 16, 16),
                       drop_path=0.0)
    model = create_model(cfg, nnx.Rngs(0))
    model.eval()
    return model


def test_slice_model_reads_the_middle_sagittal_t2_slice_only():
    model = small_slice_model()
    rng = np.random.default_rng(0)
    volumes = rng.integers(0, 256, (2, 3, 5, 16, 16), dtype=np.uint8)
    present = np.ones((2, 3), bool)
    np.testing.assert_array_equal(baselines.middle_slice(volumes), volumes[:, 1, 2])
    images = model.images(jnp.asarray(volumes))
    assert images.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(images[..., 0], (volumes[:, 1, 2] / 255.0 - 0.449) / 0.226, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    logits = forward(model, volumes, present)

    other = rng.integers(0, 256, volumes.shape, dtype=np.uint8)  # everything else different ...
    other[:, 1, 2] = volumes[:, 1, 2]  # ... the middle sagittal T2 slice the same
    np.testing.assert_allclose(forward(model, other, ~present), logits, rtol=1e-5, atol=1e-6)
    changed = volumes.copy()
    changed[:, 1, 2] = 255 - changed[:, 1, 2]  # only the middle slice differs
    assert np.abs(np.asarray(forward(model, changed, present)) - np.asarray(logits)).max() > 1e-3


def test_slice_model_resizes_the_slice_to_its_image_size():
    cfg = model_config("vit2d", vit="vit_cpu", patch=(1, 16, 16), image_size=(32, 32), volume_shape=(4, 8, 8))
    model = create_model(cfg, nnx.Rngs(0))
    volumes = np.zeros((1, 3, 4, 8, 8), np.uint8)
    volumes[0, 1, 2] = 255  # constant bright middle slice -> constant bright image
    images = model.images(jnp.asarray(volumes))
    assert images.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(images, (1.0 - 0.449) / 0.226, rtol=1e-5)


def test_grid_model_reads_every_channel():
    cfg = model_config("vit3d_grid", vit="vit_cpu", patch=(4, 4, 4), volume_shape=(8, 8, 8), drop_path=0.0)
    model = create_model(cfg, nnx.Rngs(0))
    model.eval()
    volumes = np.random.default_rng(1).integers(0, 256, (2, 3, 8, 8, 8), dtype=np.uint8)
    logits = np.asarray(forward(model, volumes, np.ones((2, 3), bool)))
    assert logits.shape == (2, 25, 3)
    for channel in range(3):
        blank = volumes.copy()
        blank[:, channel] = 0
        assert np.abs(np.asarray(forward(model, blank, np.ones((2, 3), bool))) - logits).max() > 1e-4, channel


def test_output_bias_and_bad_fields():
    model = small_slice_model()
    bias = np.log(np.full((25, 3), 1 / 3))
    model.head.set_output_bias(bias)
    np.testing.assert_allclose(model.head.fc.bias[...], bias.reshape(-1))
    for name, overrides, field in [("baseline_vit2d", dict(patch=(2, 16, 16)), "model.patch"),
                                   ("baseline_vit2d", dict(patch=(1, 16, 16), image_size=(224, 200)), "model.patch"),
                                   ("baseline_vit3d_grid", dict(vit_depth=-1), "model.vit_depth")]:
        config = load_config(name)
        config.model.update(overrides)
        with pytest.raises(config_lib.ConfigError, match=rf"^config\.{field}: "):
            config_lib.validate(config)


def test_vit_depth_sets_the_number_of_blocks_of_any_vit():
    study = nnx.eval_shape(lambda: create_model(model_config("vit", vit="vit_ti", vit_depth=2), nnx.Rngs(0)))
    assert len(study.encoders[0].vit.blocks) == 2 and study.encoders[0].vit.num_features == 192
    full = nnx.eval_shape(lambda: create_model(model_config("vit", vit="vit_ti"), nnx.Rngs(0)))
    assert len(full.encoders[0].vit.blocks) == 12
