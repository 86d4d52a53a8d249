"""EfficientNet B0..B7 (Tan & Le 2019) over 3D volumes or 2D images.

Compound scaling, `round_filters` / `round_repeats` and stochastic-depth schedule as in the reference
implementation; module and parameter names as timm's `efficientnet_b*` (conv_stem, bn1, blocks[i][j] with
conv_dw / bn1 / se.conv_reduce / se.conv_expand / conv_pw / bn2 ..., conv_head, bn2, classifier), so the 2D
model with `in_channels=3`, `num_classes=1000` has timm's 5,288,548 parameters for B0 and its weights map 1:1
(torch conv `weight [out, in, *k]` = our `kernel [*k, in, out]` transposed; BN running_mean/var = mean/var).
BatchNorm statistics in training can be restricted to a subset of samples (absent series, see
`MaskedBatchNorm`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lumbar_jax.models.layers import CONV, DropPath, conv_padding, dropout_layer


class Stage(NamedTuple):
    expand_ratio: int
    kernel: int
    stride: int
    channels: int
    repeats: int


# The B0 stages (reference blocks_args); every block has squeeze-excitation with ratio SE_RATIO of its input.
B0_STAGES = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
)
# The CPU-sized default (`effnet_cpu`, config model.effnet): every block kind (depthwise-separable, inverted
# residual with 3^d and 5^d kernels, stride 1 and 2, a residual with stochastic depth) in 4 blocks, so that a
# CPU trains it in minutes and compiling forward + backward stays short; no timm counterpart.
CPU_STAGES = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 1),
)
STEM_CHANNELS = 32
SE_RATIO = 0.25
# torch BatchNorm2d defaults as in timm `efficientnet_b*` (torch momentum 0.1 = flax 0.9); timm's TF ports
# `tf_efficientnet_b*` (padding 'same') use TF's BatchNorm epsilon 1e-3.
BN_MOMENTUM, BN_EPS = 0.9, 1e-5
BN_EPS_TF = 1e-3


PADDINGS = ("symmetric", "same")


@dataclasses.dataclass(frozen=True)
class EfficientNetConfig:
    """An EfficientNet: its compound scaling (an EFFNET_VARIANTS preset) and the input and layout it is built
    for. `EfficientNetConfig.preset('effnet_b0', ndim=2, in_channels=3, num_classes=1000)`."""

    width: float  # channel multiplier
    depth: float  # repeats multiplier
    resolution: int  # the paper's training resolution (2D ImageNet); informative
    dropout: float  # before the classifier (only with num_classes)
    head_channels: int = 1280  # conv_head width before width scaling
    stages: tuple[Stage, ...] = B0_STAGES  # the unscaled stages
    ndim: int = 3  # 3: volumes [N, D, H, W, C]; 2: images [N, H, W, C] (timm-compatible)
    in_channels: int = 1  # input channels C
    num_classes: int = 0  # 0: pooled features out; else a linear classifier to this many logits
    drop_path: float = 0.2  # stochastic depth of the last block, rising linearly from 0 (reference 0.2)
    padding: str = "symmetric"  # 'symmetric' (timm efficientnet_b*) or 'same' (TF, timm tf_efficientnet_b*)
    bn_eps: float | None = None  # BatchNorm epsilon; None: the padding's (BN_EPS / BN_EPS_TF, as timm)

    def __post_init__(self):
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding {self.padding!r} is not one of {PADDINGS}")

    @classmethod
    def preset(cls, name: str, **fields) -> EfficientNetConfig:
        """The EFFNET_VARIANTS scaling `name` with `fields` replaced."""
        return dataclasses.replace(EFFNET_VARIANTS[name], **fields)


EFFNET_VARIANTS = {
    "effnet_b0": EfficientNetConfig(1.0, 1.0, 224, 0.2),
    "effnet_b1": EfficientNetConfig(1.0, 1.1, 240, 0.2),
    "effnet_b2": EfficientNetConfig(1.1, 1.2, 260, 0.3),
    "effnet_b3": EfficientNetConfig(1.2, 1.4, 300, 0.3),
    "effnet_b4": EfficientNetConfig(1.4, 1.8, 380, 0.4),
    "effnet_b5": EfficientNetConfig(1.6, 2.2, 456, 0.4),
    "effnet_b6": EfficientNetConfig(1.8, 2.6, 528, 0.5),
    "effnet_b7": EfficientNetConfig(2.0, 3.1, 600, 0.5),
    "effnet_cpu": EfficientNetConfig(0.5, 1.0, 64, 0.0, head_channels=128, stages=CPU_STAGES),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by `width`, rounded to a multiple of `divisor`, never more than 10% below (reference)."""
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks in a stage scaled by `depth`, rounded up (reference)."""
    return int(math.ceil(depth * repeats))


class MaskedBatchNorm(nnx.BatchNorm):
    """nnx.BatchNorm (same parameters, statistics and train/eval switch) whose training statistics and running
    averages come only from the samples selected by `sample_mask`, so that absent series (zero volumes) do
    not shift the normalisation of present ones.

    Statistics are per-sample spatial moments `[N, C]` averaged over the selected samples, so the mask costs
    nothing per voxel (nnx.BatchNorm's `mask=` is per element: a full-size mask, and a noticeably slower
    compile of every block). A batch with no sample selected is normalised with all its samples and leaves the
    running averages unchanged. Under jit with the batch sharded on a mesh the means over N are global, as in
    nnx.BatchNorm.
    """

    def __call__(self, x: jax.Array, sample_mask: jax.Array | None = None) -> jax.Array:
        """x `[N, *S, C]`, sample_mask bool `[N]` (None = all samples) -> `[N, *S, C]`."""
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            spatial = tuple(range(1, x.ndim - 1))
            moments = jnp.stack([xf.mean(spatial), (xf * xf).mean(spatial)])  # [2, N, C]
            weights = jnp.full((x.shape[0],), 1.0 / x.shape[0], xf.dtype)
            selected = jnp.asarray(True)
            if sample_mask is not None:
                count = sample_mask.sum()
                selected = count > 0
                weights = jnp.where(selected, sample_mask / jnp.maximum(count, 1), weights).astype(xf.dtype)
            # A weighted sum, not an einsum: a contraction over a batch axis sharded on an explicit mesh
            # needs an output sharding, a reduction does not.
            mean, mean_sq = (weights[:, None] * moments).sum(axis=1)
            var = jnp.maximum(mean_sq - mean * mean, 0.0)
            for stat, batch_value in ((self.mean, mean), (self.var, var)):
                updated = self.momentum * stat[...] + (1.0 - self.momentum) * batch_value
                stat[...] = jax.lax.stop_gradient(jnp.where(selected, updated, stat[...]))
        dtype = self.dtype or x.dtype
        scale = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
        return ((x - mean.astype(dtype)) * scale.astype(dtype) + self.bias[...].astype(dtype)).astype(dtype)


class SqueezeExcite(nnx.Module):
    """Channel gating from globally pooled features: x * sigmoid(expand(SiLU(reduce(mean_space(x)))))."""

    def __init__(self, channels: int, reduced: int, conv: Callable, rngs: nnx.Rngs):
        self.conv_reduce = conv(channels, reduced, 1, use_bias=True, rngs=rngs)
        self.conv_expand = conv(reduced, channels, 1, use_bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x `[N, *S, C]` -> same shape."""
        s = x.mean(axis=tuple(range(1, x.ndim - 1)), keepdims=True)
        s = self.conv_expand(jax.nn.silu(self.conv_reduce(s)))
        return x * jax.nn.sigmoid(s)


@dataclasses.dataclass(frozen=True)
class MBConvConfig:
    """One MBConv block (of the EfficientNet and of the localiser)."""

    cin: int  # input channels
    cout: int  # output channels
    kernel: int  # depthwise kernel size per axis
    stride: int | tuple[int, ...]  # depthwise stride (per axis); a skip needs the int 1
    expand_ratio: int = 1  # 1: DepthwiseSeparableConv; else InvertedResidual with cin * expand_ratio channels
    drop_path: float = 0.0  # stochastic depth of the skip branch


class DepthwiseSeparableConv(nnx.Module):
    """MBConv without expansion (the first stage): conv_dw -> bn1 -> SiLU -> se -> conv_pw -> bn2 (+ skip)."""

    def __init__(self, config: MBConvConfig, conv: Callable, norm: Callable, rngs: nnx.Rngs):
        cin, cout, kernel, stride, drop_path = config.cin, config.cout, config.kernel, config.stride, config.drop_path
        self.conv_dw = conv(cin, cin, kernel, stride, groups=cin, rngs=rngs)
        self.bn1 = norm(cin, rngs=rngs)
        self.se = SqueezeExcite(cin, max(1, int(cin * SE_RATIO)), conv, rngs)
        self.conv_pw = conv(cin, cout, 1, rngs=rngs)
        self.bn2 = norm(cout, rngs=rngs)
        self.stride = stride
        self.has_skip = stride == 1 and cin == cout
        self.drop_path = DropPath(drop_path if self.has_skip else 0.0, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x `[N, *S, cin]`, BN sample mask `[N]` -> `[N, *S / stride, cout]`."""
        y = jax.nn.silu(self.bn1(self.conv_dw(x), mask))
        y = self.bn2(self.conv_pw(self.se(y)), mask)
        return x + self.drop_path(y) if self.has_skip else y


class InvertedResidual(nnx.Module):
    """MBConv: conv_pw (expand 1x1) -> bn1 -> SiLU -> conv_dw -> bn2 -> SiLU -> se -> conv_pwl (project 1x1)
    -> bn3 (+ stochastic-depth skip when the shape is kept)."""

    def __init__(self, config: MBConvConfig, conv: Callable, norm: Callable, rngs: nnx.Rngs):
        cin, cout, kernel, stride, drop_path = config.cin, config.cout, config.kernel, config.stride, config.drop_path
        mid = cin * config.expand_ratio
        self.conv_pw = conv(cin, mid, 1, rngs=rngs)
        self.bn1 = norm(mid, rngs=rngs)
        self.conv_dw = conv(mid, mid, kernel, stride, groups=mid, rngs=rngs)
        self.bn2 = norm(mid, rngs=rngs)
        self.se = SqueezeExcite(mid, max(1, int(cin * SE_RATIO)), conv, rngs)
        self.conv_pwl = conv(mid, cout, 1, rngs=rngs)
        self.bn3 = norm(cout, rngs=rngs)
        self.stride = stride
        self.has_skip = stride == 1 and cin == cout
        self.drop_path = DropPath(drop_path if self.has_skip else 0.0, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x `[N, *S, cin]`, BN sample mask `[N]` -> `[N, *S / stride, cout]`."""
        y = jax.nn.silu(self.bn1(self.conv_pw(x), mask))
        y = jax.nn.silu(self.bn2(self.conv_dw(y), mask))
        y = self.bn3(self.conv_pwl(self.se(y)), mask)
        return x + self.drop_path(y) if self.has_skip else y


def mbconv(config: MBConvConfig, conv: Callable, norm: Callable, rngs: nnx.Rngs) -> nnx.Module:
    """The block of `config`: a DepthwiseSeparableConv (expand_ratio 1) or an InvertedResidual, its convolutions
    from `conv(cin, cout, kernel, stride, *, groups, use_bias, rngs)` and BatchNorms from `norm(channels, *,
    rngs)`."""
    block = DepthwiseSeparableConv if config.expand_ratio == 1 else InvertedResidual
    return block(config, conv, norm, rngs)


def _conv(cin, cout, kernel, stride=1, *, groups=1, use_bias=False, ndim, padding, kernels, dtype, param_dtype,
          rngs):
    """nnx.Conv with timm's padding and init (He normal on fan-out; depthwise: on its k^d taps) whose
    convolution is layers.CONV[kernels]."""
    ks, strides = (kernel,) * ndim, (stride,) * ndim
    init = nnx.initializers.variance_scaling(2.0, "fan_in" if groups > 1 else "fan_out", "normal")
    return nnx.Conv(cin, cout, ks, strides, padding=conv_padding(ks, strides, padding), feature_group_count=groups,
                    use_bias=use_bias, kernel_init=init, conv_general_dilated=CONV[kernels], dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs)


class EfficientNet(nnx.Module):
    """EfficientNet encoder: `[N, *S, C]` -> features `[N, num_features]` (`num_classes == 0`) or logits.

    config: an EfficientNetConfig (scaling, stages, input, padding layout, stochastic depth).
    kernels: the convolution implementation, one of layers.KERNELS ('cpu': shifted slices and im2col, fast on
      XLA:CPU; 'xla': lax).
    """

    def __init__(self, config: EfficientNetConfig, *, kernels: str, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        v = config
        conv = partial(_conv, ndim=v.ndim, padding=v.padding, kernels=kernels, dtype=dtype, param_dtype=param_dtype)
        bn_eps = v.bn_eps
        if bn_eps is None:
            bn_eps = BN_EPS_TF if v.padding == "same" else BN_EPS
        norm = partial(MaskedBatchNorm, momentum=BN_MOMENTUM, epsilon=bn_eps, dtype=dtype, param_dtype=param_dtype)

        stem = round_filters(STEM_CHANNELS, v.width)
        self.conv_stem = conv(v.in_channels, stem, 3, 2, rngs=rngs)
        self.bn1 = norm(stem, rngs=rngs)
        stages = [s._replace(channels=round_filters(s.channels, v.width), repeats=round_repeats(s.repeats, v.depth))
                  for s in v.stages]
        total, idx, cin = sum(s.repeats for s in stages), 0, stem
        blocks = []
        for s in stages:
            stage = []
            for j in range(s.repeats):
                rate, stride = v.drop_path * idx / total, s.stride if j == 0 else 1
                block = MBConvConfig(cin, s.channels, s.kernel, stride, s.expand_ratio, rate)
                stage.append(mbconv(block, conv, norm, rngs))
                cin, idx = s.channels, idx + 1
            blocks.append(nnx.List(stage))
        self.blocks = nnx.List(blocks)
        self.num_features = round_filters(v.head_channels, v.width)
        self.conv_head = conv(cin, self.num_features, 1, rngs=rngs)
        self.bn2 = norm(self.num_features, rngs=rngs)
        self.head_drop = dropout_layer(v.dropout if v.num_classes else 0.0, rngs)
        self.classifier = (
            nnx.Linear(self.num_features, v.num_classes, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            if v.num_classes else None
        )

    def output_grid(self, spatial_shape) -> tuple[int, ...]:
        """Spatial shape of `feature_map` for an input of `spatial_shape`: every stride-2 conv (stem and the
        first block of a stride-2 stage) halves each axis, rounding up, under both paddings."""
        halvings = 1 + sum(block.stride == 2 for stage in self.blocks for block in stage)
        grid = tuple(spatial_shape)
        for _ in range(halvings):
            grid = tuple(-(-n // 2) for n in grid)
        return grid

    def feature_map(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x `[N, *S, C]`, mask bool `[N]` of the samples BatchNorm statistics come from in training (None =
        all) -> the last feature map `[N, *output_grid(S), num_features]` (after conv_head, bn2, SiLU)."""
        x = jax.nn.silu(self.bn1(self.conv_stem(x), mask))
        for stage in self.blocks:
            for block in stage:
                x = block(x, mask)
        return jax.nn.silu(self.bn2(self.conv_head(x), mask))

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x `[N, *S, C]`, mask bool `[N]` (see `feature_map`) -> globally pooled features `[N, num_features]`,
        or logits `[N, num_classes]`."""
        x = self.feature_map(x, mask)
        features = x.mean(axis=tuple(range(1, x.ndim - 1)))
        return self.classifier(self.head_drop(features)) if self.classifier is not None else features
