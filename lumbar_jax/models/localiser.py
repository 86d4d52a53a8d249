"""Stage 1 of the two-stage pipeline: the localiser, three r64 volumes -> the 25 target points.

`Localiser(volumes [B, 3, D, H, W] uint8, present bool [B, 3])` -> `LocaliserOutput`: per target t a
normalised (depth, row, col) point (docs/conventions.md section 3) on series labels.TARGET_SERIES[t],
float32 `[B, 25, 3]`, and the heatmap it comes from.

Design (why): one small 3D EfficientNet-style trunk shared by the three series (the MBConv blocks and masked
BatchNorm of models/efficientnet.py) with anisotropic strides: the volume is average-pooled 2x in-plane and
the stem halves the in-plane axes again, so the heatmap grid (r64: 16x16x16, stride (1, 4, 4)) keeps every
slice of the depth axis (where a sagittal slice decides left / centre / right); two stride-2 stages reach a
4x4x4 grid that sees the whole volume (which disc is L1/L2 is decided by counting from the sacrum), and a
feature-pyramid decoder brings that context back to the heatmap grid. Only depthwise-separable blocks run at
the fine grid, which keeps a train step cheap enough for the CPU. A 1x1x1 conv gives 25
heatmap channels per series; target t reads its channel on its own series only. A softmax over the grid cells
and its expectation over the cell centres (soft-argmax) give a sub-voxel point, trained directly by the
distance term of `localiser_loss`; its Gaussian-heatmap cross-entropy term makes the early steps faster.

Left / right: the model has no built-in symmetry; training flips (data.augment.flip_left_right) teach it,
and `predict_points(..., flip_tta=True)` averages a prediction with the un-flipped prediction of the
mirrored volumes (`flip_volumes`, `unflip_points`).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumbar_jax import labels
from lumbar_jax.data.augment import mirror_volume
from lumbar_jax.data.dicom_geometry import RIGHT_TO_LEFT_AXIS, voxel_extent
from lumbar_jax.labels import TARGET_SERIES
from lumbar_jax.models.efficientnet import BN_EPS, BN_MOMENTUM, MBConvConfig, MaskedBatchNorm, mbconv
from lumbar_jax.models.fused import normalize_volumes
from lumbar_jax.models.layers import CONV, conv_padding

# [25, 3] float: 1 where a target's point component is its series' left-right axis.
_TARGET_LR_MASK = np.eye(3, dtype=np.float32)[RIGHT_TO_LEFT_AXIS[TARGET_SERIES]]


class LocStage(NamedTuple):
    expand_ratio: int  # 1 = depthwise-separable block, else inverted residual
    kernel: int
    stride: tuple[int, int, int]  # (depth, rows, cols) of the first block
    channels: int
    repeats: int


class LocaliserVariant(NamedTuple):
    input_pool: tuple[int, int, int]  # average-pooling window (= stride) applied to the volume first
    stem_channels: int
    stem_stride: tuple[int, int, int]
    stages: tuple[LocStage, ...]
    heatmap_stage: int  # the stage whose output grid the heatmaps live on; the decoder merges it and all later
    decoder_channels: int


LOCALISER_VARIANTS = {
    # r64 [16, 64, 64]: pooled to 16x32x32, stem and stage 0 at 16x16x16 (the heatmap grid), context at 8^3
    # and 4^3; the expensive inverted residuals run on the coarse grids only (CPU time).
    "loc_small": LocaliserVariant((1, 2, 2), 8, (1, 2, 2), (
        LocStage(1, 3, (1, 1, 1), 8, 1),
        LocStage(1, 3, (2, 2, 2), 32, 1),
        LocStage(4, 3, (1, 1, 1), 32, 1),
        LocStage(4, 3, (2, 2, 2), 48, 1),
    ), heatmap_stage=0, decoder_channels=16),
    # For tests: every part (stem, both block kinds, strided and kept stages, decoder) with few channels.
    "loc_tiny_test": LocaliserVariant((1, 2, 2), 8, (1, 2, 2), (
        LocStage(1, 3, (1, 1, 1), 8, 1),
        LocStage(2, 3, (1, 2, 2), 8, 1),
        LocStage(2, 3, (2, 2, 2), 16, 1),
    ), heatmap_stage=1, decoder_channels=8),
}


class LocaliserOutput(NamedTuple):
    points: jax.Array  # float32 [B, 25, 3] normalised (depth, row, col) on each target's series
    log_probs: jax.Array  # float32 [B, 25, K] log-softmax of each target's heatmap over the K grid cells
    centres: np.ndarray  # float32 [K, 3] normalised (depth, row, col) of the grid cells (constant)


def _conv(cin, cout, kernel, stride=1, *, groups=1, use_bias=False, kernels, dtype, param_dtype, rngs):
    """3D nnx.Conv with (per-axis) `stride`, PyTorch-style symmetric padding and timm's init, whose
    convolution is layers.CONV[kernels] (the block factory of efficientnet.py, with anisotropic strides)."""
    strides = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
    ks = (kernel,) * 3
    init = nnx.initializers.variance_scaling(2.0, "fan_in" if groups > 1 else "fan_out", "normal")
    return nnx.Conv(cin, cout, ks, strides, padding=conv_padding(ks, strides, "symmetric"), feature_group_count=groups,
                    use_bias=use_bias, kernel_init=init, conv_general_dilated=CONV[kernels], dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs)


def cell_centres(volume_shape, grid) -> np.ndarray:
    """Normalised (depth, row, col) centres `[prod(grid), 3]` (C order) of a `grid` of cells tiling a volume of
    `volume_shape` voxels: cell i of an axis of n voxels and m cells covers voxels [i n/m, (i+1) n/m), so its
    centre is ((i + 0.5) n / m - 0.5) / (n - 1); mirror-symmetric, so a flip maps cells onto cells."""
    axes = []
    for n, m in zip(volume_shape, grid):
        axes.append(((np.arange(m) + 0.5) * n / m - 0.5) / voxel_extent(n))
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([a.reshape(-1) for a in mesh], axis=-1).astype(np.float32)


def _strided(shape, stride) -> tuple[int, ...]:
    """Output shape of a stride-`stride` conv with symmetric padding (odd kernel): ceil(n / s) per axis."""
    return tuple(-(-n // s) for n, s in zip(shape, stride))


def _upsample(x: jax.Array, grid) -> jax.Array:
    """Nearest-neighbour upsampling of `x [N, *S, C]` to `[N, *grid, C]`, `grid` >= S per axis (each cell
    repeated ceil(grid / S) times, then cropped: the inverse of a stride-2 symmetric-padding conv's grid)."""
    for axis, (n, m) in enumerate(zip(x.shape[1:-1], grid), start=1):
        if m != n:
            x = jax.lax.slice_in_dim(jnp.repeat(x, -(-m // n), axis=axis), 0, m, axis=axis)
    return x


class Localiser(nnx.Module):
    """Heatmap localiser of the 25 target points (module docstring). Built in training mode; `model.eval()`
    switches BatchNorm to its running statistics."""

    def __init__(self, variant: str | LocaliserVariant = "loc_small", *, volume_shape=(16, 64, 64), kernels: str,
                 dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        v = LOCALISER_VARIANTS[variant] if isinstance(variant, str) else variant
        conv = partial(_conv, kernels=kernels, dtype=dtype, param_dtype=param_dtype)
        norm = partial(MaskedBatchNorm, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype, param_dtype=param_dtype)
        self.dtype = dtype or jnp.float32
        self.volume_shape = tuple(int(n) for n in volume_shape)
        self.conv_stem = conv(1, v.stem_channels, 3, v.stem_stride, rngs=rngs)
        self.bn1 = norm(v.stem_channels, rngs=rngs)
        self.input_pool = tuple(v.input_pool)
        pooled = tuple(n // p for n, p in zip(self.volume_shape, self.input_pool))
        grid, cin, blocks, grids = _strided(pooled, v.stem_stride), v.stem_channels, [], []
        for s in v.stages:
            stage = []
            for j in range(s.repeats):
                stride = tuple(s.stride) if j == 0 and tuple(s.stride) != (1, 1, 1) else 1  # 1: may skip
                stage.append(mbconv(MBConvConfig(cin, s.channels, s.kernel, stride, s.expand_ratio), conv, norm, rngs))
                cin = s.channels
            grid = _strided(grid, s.stride)
            blocks.append(nnx.List(stage))
            grids.append(grid)
        self.blocks = nnx.List(blocks)
        self.heatmap_stage = v.heatmap_stage
        self.grid = grids[v.heatmap_stage]
        width = v.decoder_channels
        self.lateral = nnx.List([conv(s.channels, width, 1, rngs=rngs) for s in v.stages[v.heatmap_stage:]])
        self.decoder_norm = norm(width, rngs=rngs)
        self.refine = mbconv(MBConvConfig(width, width, 3, 1), conv, norm, rngs)
        self.head = conv(width, labels.NUM_TARGETS, 1, use_bias=True, rngs=rngs)

    def _decoded(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x `[N, D, H, W, 1]` (normalised), mask bool `[N]` -> decoder features `[N, *self.grid, width]`."""
        if self.input_pool != (1, 1, 1):
            x = nnx.avg_pool(x, window_shape=self.input_pool, strides=self.input_pool, padding="VALID")
        x = jax.nn.silu(self.bn1(self.conv_stem(x), mask))
        features = []
        for stage in self.blocks:
            for block in stage:
                x = block(x, mask)
            features.append(x)
        kept = features[self.heatmap_stage:]
        top = self.lateral[-1](kept[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(kept[:-1])):
            top = _upsample(top, f.shape[1:-1]) + lateral(f)
        top = jax.nn.silu(self.decoder_norm(top, mask))
        return self.refine(top, mask)

    def __call__(self, volumes: jax.Array, present: jax.Array) -> LocaliserOutput:
        """volumes `[B, 3, D, H, W]` (uint8 scale), present bool `[B, 3]` -> LocaliserOutput. Absent series are
        encoded too (static shapes) but left out of BatchNorm statistics; the points of their targets mean
        nothing (the loss and the crops mask them)."""
        b, s = volumes.shape[:2]
        x = normalize_volumes(volumes, self.dtype).reshape(b * s, *volumes.shape[2:], 1)
        heat = self.head(self._decoded(x, present.reshape(b * s).astype(bool)))  # [B*S, *grid, 25]
        heat = heat.reshape(b, s, -1, labels.NUM_TARGETS).astype(jnp.float32).transpose(0, 1, 3, 2)  # [B, S, 25, K]
        logits = heat[:, TARGET_SERIES, np.arange(labels.NUM_TARGETS)]  # [B, 25, K]: each target on its series
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        centres = cell_centres(self.volume_shape, self.grid)
        points = jnp.einsum("btk,kc->btc", jnp.exp(log_probs), centres)
        return LocaliserOutput(points, log_probs, centres)


def trained_targets(coords_series: jax.Array, present: jax.Array) -> jax.Array:
    """bool `[B, 25]`: targets annotated on their own series (coords_series == TARGET_SERIES) while that series
    is present; a point annotated on another series (or none, -1) is not trained on or scored."""
    on_own = coords_series == TARGET_SERIES
    return on_own & jnp.asarray(present, bool)[:, TARGET_SERIES]


def localiser_loss(output: LocaliserOutput, batch: Mapping[str, jax.Array], *, volume_shape,
                   heatmap_weight: float = 1.0, heatmap_sigma: float = 1.5) -> tuple[jax.Array, dict]:
    """Mean over trained targets (`trained_targets`) of the Euclidean distance, in voxels of the input volume,
    between the predicted and the annotated point; plus `heatmap_weight` x the cross-entropy of each heatmap
    with a Gaussian around the annotated point (std `heatmap_sigma` voxels). The distance alone gets sub-voxel
    precision; the cross-entropy pulls the whole heatmap toward the point from the first step, and together they
    end with a lower held-out error than the distance alone.

    output: the model's LocaliserOutput (points [B, 25, 3], log_probs [B, 25, K], centres [K, 3]).
    batch: its `coords` float [B, 25, 3] normalised, `coords_series` int [B, 25] and `present` bool [B, 3] are
    read. volume_shape: the model's input [D, H, W] (the voxel unit).
    Returns (loss, {"distance": mean voxel distance, "heatmap_ce", "annotated": number of trained targets}).
    """
    coords, coords_series, present = batch["coords"], batch["coords_series"], batch["present"]
    extent = jnp.asarray(voxel_extent(volume_shape), jnp.float32)
    trained = trained_targets(coords_series, present)
    count = jnp.maximum(trained.sum(), 1)
    delta = (output.points - coords) * extent
    distance = jnp.sqrt(jnp.sum(delta * delta, axis=-1) + 1e-6)  # smooth at 0
    mean_distance = jnp.sum(jnp.where(trained, distance, 0.0)) / count
    sq = jnp.sum(((jnp.asarray(output.centres)[None, None] - coords[:, :, None, :]) * extent) ** 2, axis=-1)
    goal = jax.nn.softmax(-0.5 * sq / heatmap_sigma**2, axis=-1)  # [B, 25, K]
    ce = -jnp.sum(goal * output.log_probs, axis=-1)
    mean_ce = jnp.sum(jnp.where(trained, ce, 0.0)) / count
    loss = mean_distance + heatmap_weight * mean_ce if heatmap_weight else mean_distance
    return loss, {"distance": mean_distance, "heatmap_ce": mean_ce, "annotated": trained.sum()}


def flip_volumes(volumes: jax.Array) -> jax.Array:
    """Mirror the patient left <-> right in `[..., 3, D, H, W]` (SERIES_TYPES order): sagittal series reverse
    their depth axis, the axial series its cols axis (as data.augment.flip_left_right; numpy or jax)."""
    xp = jnp if isinstance(volumes, jax.Array) else np
    return xp.stack([mirror_volume(volumes[..., s, :, :, :], s, xp) for s in range(len(labels.SERIES_TYPES))], axis=-4)


def unflip_points(points):
    """Points `[..., 25, 3]` predicted on flipped volumes -> the original patient's: each target takes its
    mirror partner's point (labels.MIRROR_TARGET_INDEX) with the left-right component v -> 1 - v. An
    involution (numpy or jax)."""
    mirrored = points[..., labels.MIRROR_TARGET_INDEX, :]
    return mirrored + _TARGET_LR_MASK * (1.0 - 2.0 * mirrored)


def predict_points(model: Localiser, volumes: jax.Array, present: jax.Array, flip_tta: bool = False) -> jax.Array:
    """Normalised points float32 `[B, 25, 3]` of `model` (call `model.eval()` first for inference); with
    `flip_tta` the mean of the prediction and the un-flipped prediction of the mirrored volumes."""
    points = model(volumes, present).points
    if flip_tta:
        points = 0.5 * (points + unflip_points(model(flip_volumes(volumes), present).points))
    return points
