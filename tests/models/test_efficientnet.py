"""EfficientNet: compound scaling as the reference, timm-like structure and names, masked BatchNorm, tiny 3D
forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumbar_jax.models.efficientnet import (
    B0_STAGES,
    EFFNET_VARIANTS,
    STEM_CHANNELS,
    EfficientNet,
    EfficientNetConfig,
    MaskedBatchNorm,
    round_filters,
    round_repeats,
)
from lumbar_jax.models.layers import DropPath
from tests.models.helpers import KERNELS, abstract_encoder

# timm / reference architectures: (stem, per-stage channels, per-stage repeats, head).
ARCHITECTURES = {
    "effnet_b0": (32, (16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1), 1280),
    "effnet_b3": (40, (24, 32, 48, 96, 136, 232, 384), (2, 3, 3, 5, 5, 6, 2), 1536),
    "effnet_b4": (48, (24, 32, 56, 112, 160, 272, 448), (2, 4, 4, 6, 6, 8, 2), 1792),
    "effnet_b7": (64, (32, 48, 80, 160, 224, 384, 640), (4, 7, 7, 10, 10, 13, 4), 2560),
}


@pytest.mark.parametrize("variant", ARCHITECTURES)
def test_compound_scaling_matches_reference(variant):
    v = EFFNET_VARIANTS[variant]
    stem, channels, repeats, head = ARCHITECTURES[variant]
    assert round_filters(STEM_CHANNELS, v.width) == stem
    assert tuple(round_filters(s.channels, v.width) for s in B0_STAGES) == channels
    assert tuple(round_repeats(s.repeats, v.depth) for s in B0_STAGES) == repeats
    assert round_filters(v.head_channels, v.width) == head


def test_timm_module_names_and_shapes_2d_b0():
    model = abstract_encoder("effnet_b0", 2)
    shapes = {path: v.shape for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert shapes[("conv_stem", "kernel")] == (3, 3, 3, 32)
    assert shapes[("bn1", "scale")] == (32,)
    assert shapes[("blocks", 0, 0, "conv_dw", "kernel")] == (3, 3, 1, 32)
    assert shapes[("blocks", 0, 0, "se", "conv_reduce", "kernel")] == (1, 1, 32, 8)
    assert shapes[("blocks", 0, 0, "conv_pw", "kernel")] == (1, 1, 32, 16)
    assert shapes[("blocks", 1, 0, "conv_pw", "kernel")] == (1, 1, 16, 96)
    assert shapes[("blocks", 1, 0, "se", "conv_expand", "bias")] == (96,)
    assert shapes[("blocks", 1, 0, "conv_pwl", "kernel")] == (1, 1, 96, 24)
    assert shapes[("blocks", 2, 0, "conv_dw", "kernel")] == (5, 5, 1, 144)
    assert shapes[("blocks", 6, 0, "bn3", "bias")] == (320,)
    assert shapes[("conv_head", "kernel")] == (1, 1, 320, 1280)
    assert shapes[("classifier", "kernel")] == (1280, 1000)
    assert [len(stage) for stage in model.blocks] == [1, 2, 2, 3, 3, 4, 1]
    stats = {path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))}
    assert ("blocks", 1, 0, "bn2", "mean") in stats and ("bn2", "var") in stats
    logits = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
    assert logits.shape == (2, 1000)


def test_masked_batchnorm_matches_nnx_batchnorm_on_the_selected_samples():
    x = np.random.default_rng(0).normal(1.0, 3.0, (5, 3, 4, 6, 8)).astype(np.float32)
    mask = np.array([True, False, True, True, False])
    ours, ref = MaskedBatchNorm(8, rngs=nnx.Rngs(0)), nnx.BatchNorm(8, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(ours(x), ref(x), rtol=1e-5, atol=1e-5)  # no mask: plain BatchNorm
    y, y_ref = ours(x, mask), ref(x, mask=mask[:, None, None, None, None])
    np.testing.assert_allclose(y[mask], y_ref[mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.mean[...], ref.mean[...], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.var[...], ref.var[...], rtol=1e-5, atol=1e-6)

    # No sample selected: finite output, running averages untouched.
    mean = ours.mean[...]
    assert np.isfinite(ours(x, np.zeros(5, bool))).all()
    np.testing.assert_array_equal(ours.mean[...], mean)

    ours.eval()
    ref.eval()
    np.testing.assert_allclose(ours(x, mask), ref(x), rtol=1e-5, atol=1e-5)  # eval: running stats only


def test_train_eval_switch_and_feature_shape():
    """model.eval() / model.train() flip every BatchNorm and stochastic-depth layer (checked abstractly; the
    tiny model runs forward and backward in test_fused)."""
    config = EfficientNetConfig.preset("effnet_cpu", drop_path=0.2)
    model = nnx.eval_shape(lambda: EfficientNet(config, kernels=KERNELS, rngs=nnx.Rngs(0)))
    norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, MaskedBatchNorm)]
    drops = [m for _, m in nnx.iter_modules(model) if isinstance(m, DropPath) and m.rate > 0]
    assert len(norms) == 2 + 2 + 3 * 3 and len(drops) == 1  # the one residual block has stochastic depth
    assert not any(m.use_running_average for m in norms) and not any(m.deterministic for m in drops)
    model.eval()
    assert all(m.use_running_average for m in norms) and all(m.deterministic for m in drops)
    model.train()
    assert not any(m.use_running_average for m in norms) and not any(m.deterministic for m in drops)
    features = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((3, 8, 32, 32, 1), jnp.float32))
    assert features.shape == (3, model.num_features) == (3, 64)
