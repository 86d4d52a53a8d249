"""ViT: timm-like names and shapes (2D), pooling options, position-embedding resampling, attention maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumbar_jax.models.vit import ViTConfig, VisionTransformer, token_grid
from tests.models.helpers import KERNELS, abstract_encoder, cheap_rngs


def test_timm_names_and_shapes_2d():
    model = abstract_encoder("vit_b", 2)
    shapes = {path: v.shape for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert shapes[("patch_embed", "proj", "kernel")] == (16, 16, 3, 768)
    assert shapes[("cls_token",)] == (1, 1, 768)
    assert shapes[("pos_embed",)] == (1, 197, 768)
    assert shapes[("blocks", 11, "attn", "qkv", "kernel")] == (768, 2304)
    assert shapes[("blocks", 0, "attn", "proj", "bias")] == (768,)
    assert shapes[("blocks", 0, "mlp", "fc1", "kernel")] == (768, 3072)
    assert shapes[("blocks", 0, "norm2", "scale")] == (768,)
    assert shapes[("norm", "scale")] == (768,)
    assert shapes[("head", "kernel")] == (768, 1000)
    logits = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
    assert logits.shape == (2, 1000)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_pooling_and_attention_maps(pool):
    config = ViTConfig.preset("vit_cpu", input_shape=(16, 64, 64), patch=(4, 16, 16), pool=pool)
    model = VisionTransformer(config, kernels=KERNELS, rngs=cheap_rngs())
    model.eval()
    assert (model.norm is None) == (pool == "mean") and (model.fc_norm is None) == (pool == "cls")
    np.testing.assert_array_equal(model.pos_embed_for(model.grid), model.pos_embed[...])  # stored grid: as is
    x = np.random.default_rng(0).normal(size=(2, 16, 64, 64, 1)).astype(np.float32)
    features, maps = nnx.jit(lambda m, x: m(x, return_attention=True))(model, x)
    tokens = (1 if pool == "cls" else 0) + 4 * 4 * 4
    assert features.shape == (2, 32) and np.isfinite(features).all()
    assert len(maps) == 2 and all(m.shape == (2, 2, tokens, tokens) for m in maps)


def test_input_must_be_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        token_grid((16, 60, 64), (4, 16, 16))
    with pytest.raises(ValueError, match="not a multiple of the patch"):
        VisionTransformer(ViTConfig.preset("vit_cpu", input_shape=(10, 64, 64), patch=(4, 16, 16)), kernels=KERNELS,
                          rngs=nnx.Rngs(0))


@pytest.mark.parametrize("masked", [False, True])
def test_per_head_cpu_attention_equals_dot_product_attention(masked):
    """`transformer.attention` with kernels 'cpu' (per-head dots, for XLA:CPU speed) computes what 'xla' (=
    jax.nn.dot_product_attention) does, values and gradients, with and without a key mask."""
    from lumbar_jax.models.transformer import attention

    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 7, 3, 8)), jnp.float32) for _ in range(3))
    mask = jnp.asarray(rng.random((2, 7)) > 0.4).at[:, 0].set(True) if masked else None
    key_mask = None if mask is None else mask[:, None, None, :]
    reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=key_mask)
    np.testing.assert_array_equal(attention(q, k, v, mask, kernels="xla"), reference(q, k, v))
    ours = lambda q, k, v: attention(q, k, v, mask, kernels="cpu")
    np.testing.assert_allclose(ours(q, k, v), reference(q, k, v), rtol=1e-5, atol=1e-6)
    grads = [jax.grad(lambda *a: (f(*a) ** 2).sum(), argnums=(0, 1, 2))(q, k, v) for f in (ours, reference)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
