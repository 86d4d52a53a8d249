"""Layers shared by the encoders: convolutions that are fast on XLA:CPU, drop path, position-embedding resampling.

Why custom convolutions: XLA:CPU lowers some convolutions to pathologically slow loops: depthwise 3D ones
(`feature_group_count == channels`) and, for their gradients, dense ones with few input channels (the
EfficientNet stem). Written as shifted multiply-adds (depthwise) and patches @ kernel (im2col, the stem) they
run one to two orders of magnitude faster there (`benchmarks/BENCHMARKS.md`). GPU/TPU keep
`lax.conv_general_dilated`, which is fast there. `CONV[kernels]` is a drop-in `conv_general_dilated` for
`nnx.Conv`, so modules and parameters (`kernel [*k, C_in / groups, C_out]`) are plain `nnx.Conv` whichever
implementation runs. `kernels` is one of KERNELS, chosen once for the whole model (`model.kernels`, resolved
by registry.resolve_kernels): 'cpu' (the formulations above) or 'xla' (lax).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

# Kernel implementations a model is built with: 'cpu' = the XLA:CPU-friendly formulations of this module and
# per-head attention (transformer.attention), 'xla' = the plain lax / jax.nn operations.
KERNELS = ("cpu", "xla")

Pads = tuple[tuple[int, int], ...]


def _explicit_pads(spatial: Sequence[int], ksize: Sequence[int], strides: Sequence[int], padding) -> Pads:
    """(low, high) per spatial axis for lax-style padding: 'SAME', 'VALID' or explicit pairs."""
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(spatial, ksize, strides, padding)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _pad_spatial(x: jax.Array, pads: Sequence[tuple[int, int]], interior: Sequence[int] | None = None) -> jax.Array:
    """lax.pad of the spatial axes of `[B, *S, C]` (negative pads crop, `interior` dilates)."""
    interior = interior or (0,) * len(pads)
    config = [(0, 0, 0), *((lo, hi, i) for (lo, hi), i in zip(pads, interior)), (0, 0, 0)]
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def _windows(xp: jax.Array, ksize: Sequence[int], strides: Sequence[int], out_sp: Sequence[int]) -> Iterator:
    """(offset, window) for every kernel offset j over the last len(ksize) spatial axes of `xp [B, ..., C]`:
    window[..., o, c] = xp[..., o * s + j, c] (leading axes whole)."""
    lead = xp.ndim - 1 - len(ksize)
    for off in itertools.product(*(range(k) for k in ksize)):
        limit = (*xp.shape[:lead], *(j + (n - 1) * s + 1 for j, n, s in zip(off, out_sp, strides)), xp.shape[-1])
        yield off, lax.slice(xp, (0,) * lead + (*off, 0), limit, (1,) * lead + (*strides, 1))


def _kernel_rows(xp: jax.Array, ksize: Sequence[int], strides: Sequence[int], out_sp: Sequence[int], j):
    """Rows o * s0 + j (j traced) of the first spatial axis of `xp [B, *P, C]`: `[B, out_sp[0], *P[1:], C]`."""
    rows = lax.dynamic_slice_in_dim(xp, j, (out_sp[0] - 1) * strides[0] + 1, axis=1)
    return lax.slice_in_dim(rows, 0, rows.shape[1], strides[0], axis=1)


def _out_spatial(padded: Sequence[int], ksize: Sequence[int], strides: Sequence[int]) -> list[int]:
    return [(p - k) // s + 1 for p, k, s in zip(padded, ksize, strides)]


# Taps fused into one XLA:CPU loop at most: the fused loop's time grows linearly with the taps of 3x3 and
# 3x3x3 kernels, but LLVM gives up on the loop body of a 5x5x5 kernel (125 taps), which then runs far slower.
MAX_FUSED_TAPS = 64


def _shifted_sum(xp: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
    """VALID depthwise correlation of a padded `xp [B, *P, C]` with `kernel [*k, C]`, accumulated in >= float32.

    out[b, o, c] = sum_j xp[b, o * s + j, c] * kernel[j, c]: strided slices times taps, which XLA fuses into
    one loop; kernels with more than MAX_FUSED_TAPS taps loop over their first axis.
    """
    ksize = kernel.shape[:-1]
    out_sp = _out_spatial(xp.shape[1:-1], ksize, strides)
    acc_dtype = jnp.promote_types(xp.dtype, jnp.float32)

    def row(j):
        taps = lax.dynamic_index_in_dim(kernel, j, 0, keepdims=False).astype(acc_dtype)
        windows = _windows(_kernel_rows(xp, ksize, strides, out_sp, j), ksize[1:], strides[1:], out_sp[1:])
        return sum(w.astype(acc_dtype) * taps[off] for off, w in windows)

    if math.prod(ksize) <= MAX_FUSED_TAPS:
        return sum(row(j) for j in range(ksize[0])).astype(xp.dtype)
    zeros = jnp.zeros((xp.shape[0], *out_sp, xp.shape[-1]), acc_dtype)
    return lax.fori_loop(0, ksize[0], lambda j, acc: acc + row(j), zeros).astype(xp.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_slices(x: jax.Array, kernel: jax.Array, strides: tuple[int, ...], pads: Pads) -> jax.Array:
    """Depthwise conv of `x [B, *S, C]` with `kernel [*k, C]` as shifted multiply-adds, forward and backward
    (plain autodiff of the shifted sum would pad k^d cotangents and reduce k^d times, about twice as slow)."""
    return _shifted_sum(_pad_spatial(x, pads), kernel, strides)


def _depthwise_slices_fwd(x, kernel, strides, pads):
    return _depthwise_slices(x, kernel, strides, pads), (x, kernel)


def _depthwise_slices_bwd(strides, pads, residuals, g):
    """Input grad = the same shifted sum with the flipped kernel over the stride-dilated, re-padded cotangent;
    kernel grad = for each offset j, sum over batch and space of (shifted input) * cotangent."""
    x, kernel = residuals
    ksize = kernel.shape[:-1]
    out_sp = g.shape[1:-1]
    # Padded-input positions after the last window (stride > 1) get no gradient: `tail` extra zeros.
    tail = [lo + n + hi - ((o - 1) * s + k)
            for n, (lo, hi), o, s, k in zip(x.shape[1:-1], pads, out_sp, strides, ksize)]
    g_pads = [(k - 1 - lo, k - 1 - hi + t) for k, (lo, hi), t in zip(ksize, pads, tail)]
    flipped = kernel[tuple(slice(None, None, -1) for _ in ksize)]
    dx = _shifted_sum(_pad_spatial(g, g_pads, [s - 1 for s in strides]), flipped, (1,) * len(ksize))

    # Per row j of the first kernel axis, all k^(d-1) kernel-grad sums in one variadic reduction over space
    # (one pass over x and g instead of one jnp.sum per tap, which XLA:CPU runs as k^d separate passes).
    acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
    g_acc = g.astype(acc_dtype)
    xp = _pad_spatial(x, pads)

    def row(j):
        windows = _windows(_kernel_rows(xp, ksize, strides, out_sp, j), ksize[1:], strides[1:], out_sp[1:])
        products = tuple(w.astype(acc_dtype) * g_acc for _, w in windows)
        zeros = tuple(jnp.zeros((), acc_dtype) for _ in products)
        sums = lax.reduce(products, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), tuple(range(1, x.ndim - 1)))
        return jnp.stack(sums).sum(axis=1)  # [k^(d-1), B, C] -> [k^(d-1), C]

    if math.prod(ksize) <= MAX_FUSED_TAPS:
        dk = jnp.stack([row(j) for j in range(ksize[0])])
    else:
        dk = lax.map(row, jnp.arange(ksize[0]))
    dk = dk.reshape(kernel.shape)
    return dx, dk.astype(kernel.dtype)


_depthwise_slices.defvjp(_depthwise_slices_fwd, _depthwise_slices_bwd)


def _im2col_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], pads: Pads) -> jax.Array:
    """Dense conv as patches @ kernel: `x [B, *S, Cin]`, `kernel [*k, Cin, Cout]` -> `[B, *S_out, Cout]`.

    The patch matrix has k^d * Cin columns, so this is for convs with few input channels (the stem)."""
    xp = _pad_spatial(x, pads)
    ksize = kernel.shape[:-2]
    out_sp = _out_spatial(xp.shape[1:-1], ksize, strides)
    patches = jnp.concatenate([w for _, w in _windows(xp, ksize, strides, out_sp)], axis=-1)
    return patches @ kernel.reshape(-1, kernel.shape[-1])


def _cpu_conv_general_dilated(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                              dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """`lax.conv_general_dilated` for `nnx.Conv` (channels-last) with depthwise convs as shifted slices and dense
    convs with a spatial kernel as im2col; every other conv (1x1, dilated, grouped) goes to lax."""
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    depthwise = feature_group_count == lhs.shape[-1] == rhs.shape[-1] and rhs.shape[-2] == 1
    dense = feature_group_count == 1 and math.prod(rhs.shape[:-2]) > 1
    if dilated or not (depthwise or dense):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count, precision=precision,
            **kwargs,
        )
    strides = tuple(window_strides)
    pads = _explicit_pads(lhs.shape[1:-1], rhs.shape[:-2], strides, padding)
    if depthwise:
        return _depthwise_slices(lhs, rhs[..., 0, :], strides, pads)
    return _im2col_conv(lhs, rhs, strides, pads)


# The `conv_general_dilated` of nnx.Conv per KERNELS entry; module-level functions, so their identity is stable
# and nnx graph definitions stay equal across model instances.
CONV = {"cpu": _cpu_conv_general_dilated, "xla": lax.conv_general_dilated}


def conv_padding(kernel_size: Sequence[int], strides: Sequence[int], mode: str):
    """Padding of a conv: 'symmetric' = PyTorch / timm `efficientnet_*` ((s - 1 + k - 1) // 2 on each side) or
    'same' = TensorFlow SAME (the extra pixel at the end; timm `tf_efficientnet_*`)."""
    if mode == "same":
        return "SAME"
    if mode == "symmetric":
        return tuple(((s - 1 + k - 1) // 2,) * 2 for k, s in zip(kernel_size, strides))
    raise ValueError(f"padding mode {mode!r} is not 'symmetric' or 'same'")


def dropout_layer(rate: float, rngs: nnx.Rngs) -> nnx.Dropout:
    """nnx.Dropout that holds an RNG stream only when it can drop something (rate > 0): rate-0 dropouts
    (the default almost everywhere) then add no state to split, carry through jit and checkpoint."""
    return nnx.Dropout(rate, rngs=rngs if rate > 0 else None)


class DropPath(nnx.Module):
    """Stochastic depth: drops a residual branch for a whole sample with probability `rate` (scaled by
    1 / (1 - rate) when kept), so a deep net trains as an ensemble of shallower ones. Identity when
    `deterministic` (set by `model.eval()`) or rate == 0."""

    def __init__(self, rate: float, *, deterministic: bool = False, rngs: nnx.Rngs):
        self.rate = float(rate)
        self.deterministic = deterministic
        self.rngs = rngs.dropout.fork() if self.rate > 0 else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x [B, ...]` -> same shape; one keep/drop decision per sample b."""
        if self.deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))

    def set_view(self, deterministic: bool | None = None):
        """For `nnx.view(model, deterministic=...)`."""
        if deterministic is not None:
            self.deterministic = deterministic


def resample_pos_embed(grid_embed: jax.Array, new_grid: Sequence[int]) -> jax.Array:
    """Resample position embeddings stored on a token grid to another grid, linearly (half-pixel centres, no
    antialiasing: torch `interpolate(mode='(tri|bi)linear', align_corners=False)`, as timm resamples).

    `grid_embed [*G, E]` (G = the training token grid, 2 or 3 axes) -> `[*new_grid, E]`. Lets a model trained
    on 16x64x64 volumes run on 8x32x32 or 32x64x64 without retraining. Identity when the grids match.
    """
    new_grid = tuple(int(n) for n in new_grid)
    if tuple(grid_embed.shape[:-1]) == new_grid:
        return grid_embed
    return jax.image.resize(grid_embed, (*new_grid, grid_embed.shape[-1]), "linear", antialias=False)
