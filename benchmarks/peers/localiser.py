"""PyTorch peer of the two-stage default's localiser (lumbar_jax.models.localiser.Localiser): the same
architecture as a PyTorch user writes it (torch.nn.Conv3d, BatchNorm3d, SiLU, depthwise convs with `groups`,
squeeze-excite, avg_pool3d, nearest upsampling), channels-first, so that benchmarks can time it against ours.

`LocaliserPeer(variant, volume_shape)(volumes [B, 3, D, H, W] uint8 scale, present bool [B, 3])` ->
`PeerOutput(points float32 [B, 25, 3], log_probs [B, 25, K], centres [K, 3])`, K = the cells of the heatmap
grid (loc_small at (16, 64, 64): 16x16x16). Inside, the three series run as one batch `[B * 3, 1, D, H, W]`:
input average pooling, stem conv + BN + SiLU, the MBConv stages, a feature-pyramid decoder (1x1 lateral convs,
nearest upsampling), decoder_norm + SiLU, a refine block and a 1x1 head with 25 channels, of which target t
reads its channel on its own series (labels.TARGET_SERIES); log-softmax and soft-argmax over `cell_centres`.
The localiser has no stochastic depth (every drop_path rate is 0), so neither has the peer.

Attribute names mirror our NNX module paths, so `pretrained.torch_state_dict(localiser)` loads with
`load_state_dict(strict=True)` (`benchmarks.peers.load_weights`). `localiser_loss` ports ours; the train step
is `benchmarks.peers.adamw_train_step`.

What cannot be matched: our MaskedBatchNorm takes its training statistics from present series only, the peer's
plain BatchNorm3d from every sample. In eval mode, and in training with every series present, they are the
same computation; the running variance also differs by n / (n - 1) after a training step (torch averages the
unbiased batch variance into it, ours the biased one). The package never imports this module.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from lumbar_jax import labels
from lumbar_jax.data.dicom_geometry import voxel_extent
from lumbar_jax.models.efficientnet import BN_EPS, BN_MOMENTUM, SE_RATIO
from lumbar_jax.models.fused import INPUT_MEAN, INPUT_STD
from lumbar_jax.models.localiser import LOCALISER_VARIANTS, LocaliserVariant, cell_centres


class PeerOutput(NamedTuple):
    points: torch.Tensor  # float32 [B, 25, 3] normalised (depth, row, col) on each target's series
    log_probs: torch.Tensor  # float32 [B, 25, K] log-softmax of each target's heatmap over the K grid cells
    centres: torch.Tensor  # float32 [K, 3] normalised (depth, row, col) of the grid cells


def _conv(cin: int, cout: int, kernel: int, stride=1, *, groups: int = 1, bias: bool = False) -> torch.nn.Conv3d:
    """Conv3d with PyTorch's symmetric padding kernel // 2 (odd kernels; = our conv_padding 'symmetric')."""
    return torch.nn.Conv3d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)


def _norm(channels: int) -> torch.nn.BatchNorm3d:
    """BatchNorm3d with our constants: flax momentum 0.9 = torch momentum 0.1, epsilon BN_EPS."""
    return torch.nn.BatchNorm3d(channels, eps=BN_EPS, momentum=1.0 - BN_MOMENTUM)


class SqueezeExcite(torch.nn.Module):
    """x * sigmoid(conv_expand(SiLU(conv_reduce(mean over space of x)))): `[N, C, *S]` -> same shape."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.conv_reduce = _conv(channels, reduced, 1, bias=True)
        self.conv_expand = _conv(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(torch.nn.functional.silu(self.conv_reduce(x.mean(dim=(2, 3, 4), keepdim=True))))
        return x * torch.sigmoid(gate)


class DepthwiseSeparableConv(torch.nn.Module):
    """conv_dw -> bn1 -> SiLU -> se -> conv_pw -> bn2 (+ x when stride 1 and cin == cout):
    `[N, cin, *S]` -> `[N, cout, *S / stride]`."""

    def __init__(self, cin: int, cout: int, kernel: int, stride):
        super().__init__()
        self.conv_dw = _conv(cin, cin, kernel, stride, groups=cin)
        self.bn1 = _norm(cin)
        self.se = SqueezeExcite(cin, max(1, int(cin * SE_RATIO)))
        self.conv_pw = _conv(cin, cout, 1)
        self.bn2 = _norm(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.silu(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(self.se(y)))
        return x + y if self.has_skip else y


class InvertedResidual(torch.nn.Module):
    """conv_pw (expand) -> bn1 -> SiLU -> conv_dw -> bn2 -> SiLU -> se -> conv_pwl (project) -> bn3 (+ x when
    stride 1 and cin == cout): `[N, cin, *S]` -> `[N, cout, *S / stride]`."""

    def __init__(self, cin: int, cout: int, kernel: int, stride, expand_ratio: int):
        super().__init__()
        mid = cin * expand_ratio
        self.conv_pw = _conv(cin, mid, 1)
        self.bn1 = _norm(mid)
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = _norm(mid)
        self.se = SqueezeExcite(mid, max(1, int(cin * SE_RATIO)))
        self.conv_pwl = _conv(mid, cout, 1)
        self.bn3 = _norm(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.nn.functional.silu(self.bn1(self.conv_pw(x)))
        y = torch.nn.functional.silu(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return x + y if self.has_skip else y


def _mbconv(cin: int, cout: int, kernel: int, stride, expand_ratio: int) -> torch.nn.Module:
    """The block our efficientnet.mbconv builds: depthwise-separable (expand_ratio 1) or inverted residual."""
    if expand_ratio == 1:
        return DepthwiseSeparableConv(cin, cout, kernel, stride)
    return InvertedResidual(cin, cout, kernel, stride, expand_ratio)


def _upsample(x: torch.Tensor, grid) -> torch.Tensor:
    """Nearest-neighbour upsampling of `x [N, C, *S]` to `[N, C, *grid]`, grid >= S per axis: each cell
    repeated ceil(grid / S) times, then cropped, as ours. For the decoder's grids (S = ceil(grid / 2) or grid)
    this equals interpolate(mode='nearest'), which differs for larger ratios (3 -> 4: cells 0 0 1 1 here,
    0 0 1 2 there)."""
    for axis, (n, m) in enumerate(zip(x.shape[2:], grid), start=2):
        if m != n:
            x = x.repeat_interleave(-(-m // n), dim=axis).narrow(axis, 0, m)
    return x


def _strided(shape, stride) -> tuple[int, ...]:
    """Output shape of a stride-`stride` conv with symmetric padding (odd kernel): ceil(n / s) per axis."""
    return tuple(-(-n // s) for n, s in zip(shape, stride))


class LocaliserPeer(torch.nn.Module):
    """The localiser of `variant` (a LOCALISER_VARIANTS name or a LocaliserVariant) for volumes of
    `volume_shape` [D, H, W] (module docstring). Built in training mode, as every torch module."""

    def __init__(self, variant: str | LocaliserVariant = "loc_small", volume_shape=(16, 64, 64)):
        super().__init__()
        spec = LOCALISER_VARIANTS[variant] if isinstance(variant, str) else variant
        self.volume_shape = tuple(int(n) for n in volume_shape)
        self.input_pool = tuple(spec.input_pool)
        self.conv_stem = _conv(1, spec.stem_channels, 3, tuple(spec.stem_stride))
        self.bn1 = _norm(spec.stem_channels)
        pooled = tuple(n // p for n, p in zip(self.volume_shape, self.input_pool))
        grid, cin, stages, grids = _strided(pooled, spec.stem_stride), spec.stem_channels, [], []
        for stage in spec.stages:
            blocks = []
            for j in range(stage.repeats):
                stride = tuple(stage.stride) if j == 0 and tuple(stage.stride) != (1, 1, 1) else 1
                blocks.append(_mbconv(cin, stage.channels, stage.kernel, stride, stage.expand_ratio))
                cin = stage.channels
            stages.append(torch.nn.ModuleList(blocks))
            grid = _strided(grid, stage.stride)
            grids.append(grid)
        self.blocks = torch.nn.ModuleList(stages)
        self.heatmap_stage = spec.heatmap_stage
        self.grid = grids[spec.heatmap_stage]
        width = spec.decoder_channels
        self.lateral = torch.nn.ModuleList(
            [_conv(stage.channels, width, 1) for stage in spec.stages[spec.heatmap_stage:]])
        self.decoder_norm = _norm(width)
        self.refine = _mbconv(width, width, 3, 1, 1)
        self.head = _conv(width, labels.NUM_TARGETS, 1, bias=True)
        # Constants that follow the module to its device; not in the state dict.
        self.register_buffer("centres", torch.from_numpy(cell_centres(self.volume_shape, self.grid)), persistent=False)
        self.register_buffer("target_series", torch.from_numpy(np.asarray(labels.TARGET_SERIES, np.int64)),
                             persistent=False)

    def _decoded(self, x: torch.Tensor) -> torch.Tensor:
        """x `[N, 1, D, H, W]` (normalised) -> decoder features `[N, width, *self.grid]`."""
        if self.input_pool != (1, 1, 1):
            x = torch.nn.functional.avg_pool3d(x, self.input_pool, self.input_pool)
        x = torch.nn.functional.silu(self.bn1(self.conv_stem(x)))
        features = []
        for stage in self.blocks:
            for block in stage:
                x = block(x)
            features.append(x)
        kept = features[self.heatmap_stage:]
        top = self.lateral[-1](kept[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(kept[:-1])):
            top = _upsample(top, feature.shape[2:]) + lateral(feature)
        return self.refine(torch.nn.functional.silu(self.decoder_norm(top)))

    def forward(self, volumes: torch.Tensor, present: torch.Tensor) -> PeerOutput:
        """volumes `[B, 3, D, H, W]` (uint8 or float, uint8 scale), present bool `[B, 3]` -> PeerOutput.
        `present` does not enter the computation (plain BatchNorm, module docstring); it is taken so that the
        call matches ours."""
        batch, series = volumes.shape[:2]
        x = (volumes.float() / 255.0 - INPUT_MEAN) / INPUT_STD
        heat = self.head(self._decoded(x.reshape(batch * series, 1, *volumes.shape[2:])))  # [B*S, 25, *grid]
        heat = heat.float().reshape(batch, series, labels.NUM_TARGETS, -1)  # [B, S, 25, K]
        logits = heat[:, self.target_series, torch.arange(labels.NUM_TARGETS, device=heat.device)]  # [B, 25, K]
        log_probs = torch.log_softmax(logits, dim=-1)
        points = torch.einsum("btk,kc->btc", log_probs.exp(), self.centres)
        return PeerOutput(points, log_probs, self.centres)


def trained_targets(coords_series: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """bool `[B, 25]`: targets annotated on their own series while that series is present (as ours)."""
    target_series = torch.as_tensor(labels.TARGET_SERIES, device=coords_series.device)
    return (coords_series == target_series) & present.bool()[:, target_series]


def localiser_loss(output: PeerOutput, coords: torch.Tensor, coords_series: torch.Tensor, present: torch.Tensor,
                   volume_shape, heatmap_weight: float = 1.0, heatmap_sigma: float = 1.5) -> torch.Tensor:
    """Our localiser_loss: mean over trained targets of the voxel distance between predicted and annotated
    point, plus `heatmap_weight` x the cross-entropy of each heatmap with a Gaussian (std `heatmap_sigma`
    voxels) around the annotated point. coords float `[B, 25, 3]` normalised, coords_series int `[B, 25]`,
    present bool `[B, 3]`, volume_shape the input [D, H, W] -> the scalar loss."""
    extent = torch.as_tensor(voxel_extent(volume_shape), dtype=torch.float32, device=coords.device)
    trained = trained_targets(coords_series, present)
    count = trained.sum().clamp(min=1)
    delta = (output.points - coords) * extent
    distance = torch.sqrt((delta * delta).sum(dim=-1) + 1e-6)  # smooth at 0
    mean_distance = torch.where(trained, distance, 0.0).sum() / count
    if not heatmap_weight:
        return mean_distance
    squared = (((output.centres[None, None] - coords[:, :, None, :]) * extent) ** 2).sum(dim=-1)  # [B, 25, K]
    goal = torch.softmax(-0.5 * squared / heatmap_sigma**2, dim=-1)
    cross_entropy = -(goal * output.log_probs).sum(dim=-1)
    return mean_distance + heatmap_weight * torch.where(trained, cross_entropy, 0.0).sum() / count
