"""The 'cpu' kernels (depthwise shifted slices, im2col) against the 'xla' ones = lax (values and gradients), drop
path, position-embedding resampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from lumbar_jax.models.layers import (
    CONV,
    KERNELS,
    MAX_FUSED_TAPS,
    DropPath,
    conv_padding,
    resample_pos_embed,
)
from tests.models.helpers import jit_fast_compile

# (input [B, *S, C], kernel size, stride, padding): 2D and 3D, stride 1 and 2, odd sizes, SAME / symmetric /
# VALID, and a 5x5x5 kernel (> MAX_FUSED_TAPS taps: the looped form).
DEPTHWISE_CASES = [
    ((2, 7, 9, 5), 3, 1, "SAME"),
    ((2, 9, 6, 4), 5, 2, "symmetric"),
    ((2, 5, 7, 9, 3), 3, 1, "symmetric"),
    ((1, 7, 5, 8, 4), 3, 2, "VALID"),
    ((1, 6, 9, 7, 2), 5, 2, "SAME"),
]


def depthwise_conv(x, kernel, stride, padding, *, kernels):
    """Depthwise convolution of channels-last `x [B, *S, C]` with `kernel [*k, 1, C]` by CONV[kernels], called
    as nnx.Conv calls it."""
    spatial = "DHW"[5 - x.ndim:]
    dn = lax.conv_dimension_numbers(x.shape, kernel.shape, (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"))
    return CONV[kernels](x, kernel, (stride,) * (x.ndim - 2), padding, dimension_numbers=dn,
                         feature_group_count=x.shape[-1])


def _padding(shape, k, stride, mode):
    nsp = len(shape) - 2
    if mode == "symmetric":
        return conv_padding((k,) * nsp, (stride,) * nsp, "symmetric")
    return mode


@pytest.mark.parametrize("shape,k,stride,mode", DEPTHWISE_CASES)
def test_depthwise_slices_matches_lax_values_and_grads(shape, k, stride, mode):
    nsp = len(shape) - 2
    assert (k**nsp > MAX_FUSED_TAPS) == (k == 5 and nsp == 3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, np.float32)
    kernel = rng.standard_normal((k,) * nsp + (1, shape[-1]), np.float32)
    padding = _padding(shape, k, stride, mode)

    @jit_fast_compile
    def values_and_grads(x, w):
        """(output, d/dx, d/dkernel) of sum(sin(conv)) for each implementation, in one compiled program."""
        def loss(x, w, kernels):
            y = depthwise_conv(x, w, stride, padding, kernels=kernels)
            return jnp.sum(jnp.sin(y)), y
        return {kernels: jax.grad(loss, argnums=(0, 1), has_aux=True)(x, w, kernels) for kernels in KERNELS}

    out = values_and_grads(x, kernel)
    (gx, gk), y = out["cpu"]
    (rx, rk), y_ref = out["xla"]
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, rx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gk, rk, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ndim,stride,groups", [(3, 2, 1), (3, 1, 6)])
def test_nnx_conv_hook_matches_lax(ndim, stride, groups):
    """CONV['cpu'] inside nnx.Conv (im2col for the dense 3^d stride-2 stem, shifted slices for depthwise)
    matches CONV['xla'] (lax) with the same parameters."""
    cin = 6 if groups > 1 else 2
    ks, strides = (3,) * ndim, (stride,) * ndim

    def make_conv(kernels):
        return nnx.Conv(cin, 6, ks, strides, padding=conv_padding(ks, strides, "symmetric"),
                        feature_group_count=groups, conv_general_dilated=CONV[kernels], rngs=nnx.Rngs(0))

    slices_def, state = nnx.split(make_conv("cpu"))
    lax_def, _ = nnx.split(nnx.eval_shape(lambda: make_conv("xla")))  # same structure, lax convolution
    x = np.random.default_rng(2).standard_normal((2, *(7,) * ndim, cin), np.float32)

    @jit_fast_compile
    def values_and_grads(state, x):
        """((d/dparams, d/dx), output) of sum(sin(conv)) for both implementations, with the same parameters."""
        def loss(state, x, graphdef):
            y = nnx.merge(graphdef, state)(x)
            return jnp.sum(jnp.sin(y)), y
        return [jax.grad(loss, argnums=(0, 1), has_aux=True)(state, x, g) for g in (slices_def, lax_def)]

    ((g_state, g_x), y), ((r_state, r_x), y_ref) = values_and_grads(state, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_x, r_x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g_state["kernel"][...], r_state["kernel"][...], rtol=1e-4, atol=1e-4)


def test_conv_kernels_table_and_errors():
    assert set(CONV) == set(KERNELS) == {"cpu", "xla"}
    assert CONV["xla"] is jax.lax.conv_general_dilated


def test_conv_padding_modes():
    assert conv_padding((3, 5), (2, 2), "symmetric") == ((1, 1), (2, 2))  # timm get_padding
    assert conv_padding((3, 3), (1, 1), "same") == "SAME"
    with pytest.raises(ValueError, match="padding mode"):
        conv_padding((3,), (1,), "reflect")


def test_drop_path_drops_whole_samples_in_train_and_nothing_in_eval():
    layer = DropPath(0.5, rngs=nnx.Rngs(0))
    x = jnp.ones((64, 3, 4))
    y = layer(x)
    per_sample = np.asarray(y).reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}  # kept samples rescaled by 1 / (1 - rate)
    assert (per_sample.min(axis=1) == per_sample.max(axis=1)).all()  # one decision per sample
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    layer.eval()
    np.testing.assert_array_equal(layer(x), x)


def test_resample_pos_embed_is_torch_linear_half_pixel():
    """Upsampling 4 -> 8 and downsampling 4 -> 2 a ramp along one axis gives torch's
    `interpolate(mode='trilinear', align_corners=False)` values (edges clamped)."""
    ramp = jnp.broadcast_to(jnp.arange(4.0)[None, None, :, None], (2, 3, 4, 5))  # [*G, E], varies along W
    assert resample_pos_embed(ramp, (2, 3, 4)) is ramp
    up = resample_pos_embed(ramp, (4, 6, 8))
    assert up.shape == (4, 6, 8, 5)
    np.testing.assert_allclose(up[1, 2, :, 0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)
    np.testing.assert_allclose(resample_pos_embed(ramp, (1, 3, 2))[0, 0, :, 3], [0.5, 2.5], atol=1e-6)
