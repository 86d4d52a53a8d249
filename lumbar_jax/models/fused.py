"""The study model: three canonical volumes per study -> per-series features -> fusion head -> logits.

`volumes [B, S=3, D, H, W]` (labels.SERIES_TYPES order, uint8 or float on the uint8 scale 0..255) and
`present [B, S]` -> logits `[B, 25, 3]` float32 in labels.TARGETS order. Each series goes through a
`SeriesEncoder` (a ViT, an EfficientNet, or both with their features concatenated); one encoder shared by all
series types runs once on the `[B * S, D, H, W, 1]` batch, separate encoders run on `[B, D, H, W, 1]` each.
Absent series are still encoded (static shapes) but excluded from BatchNorm statistics and from the head.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lumbar_jax.models.efficientnet import EfficientNet
from lumbar_jax.models.vit import VisionTransformer

# Fixed input normalisation after x / 255: ImageNet mean / std averaged over RGB, close to the grey-level
# statistics that RGB-pretrained stems summed over their input channels (timm `adapt_input_conv`) expect.
INPUT_MEAN, INPUT_STD = 0.449, 0.226


def normalize_volumes(volumes: jax.Array, dtype) -> jax.Array:
    """uint8-scale intensities (any dtype) -> (x / 255 - INPUT_MEAN) / INPUT_STD in `dtype`."""
    x = volumes.astype(jnp.float32) / 255.0
    return ((x - INPUT_MEAN) / INPUT_STD).astype(dtype)


class SeriesEncoder(nnx.Module):
    """The encoders of one series type (or of all, when shared): `[N, D, H, W, 1]` -> `[N, num_features]`,
    the ViT features then the EfficientNet features."""

    def __init__(self, vit: VisionTransformer | None, effnet: EfficientNet | None):
        if vit is None and effnet is None:
            raise ValueError("a SeriesEncoder needs a ViT, an EfficientNet or both")
        self.vit = vit
        self.effnet = effnet
        self.num_features = sum(e.num_features for e in (vit, effnet) if e is not None)

    def __call__(self, x: jax.Array, present: jax.Array, return_attention: bool = False):
        """x `[N, D, H, W, 1]`, present bool `[N]` (BatchNorm statistics come from present samples only) ->
        (features `[N, F]`, ViT attention maps: a list of `[N, heads, T, T]`, empty unless `return_attention`)."""
        if return_attention and self.vit is None:
            raise ValueError("return_attention needs a ViT encoder")
        features, maps = [], []
        if self.vit is not None:
            out = self.vit(x, return_attention=return_attention)
            out, maps = out if return_attention else (out, [])
            features.append(out)
        if self.effnet is not None:
            features.append(self.effnet(x, present))
        return jnp.concatenate(features, axis=-1), maps


class StudyModel(nnx.Module):
    """Per-series encoders + fusion head. `encoders`: one SeriesEncoder shared by all series types, or one per
    type in labels.SERIES_TYPES order; `head`: a heads.FUSIONS head for `[B, S, F]` features."""

    def __init__(self, encoders: Sequence[SeriesEncoder], head: nnx.Module, *, dtype=jnp.float32):
        self.encoders = nnx.List(encoders)
        self.head = head
        self.dtype = dtype

    def __call__(self, volumes: jax.Array, present: jax.Array, return_attention: bool = False):
        """volumes `[B, S, D, H, W]` (uint8 scale), present bool `[B, S]` -> logits float32 `[B, 25, 3]`;
        with `return_attention` also the ViT attention maps, a list (one per block) of `[B, S, heads, T, T]`."""
        b, s = volumes.shape[:2]
        if len(self.encoders) not in (1, s):
            raise ValueError(f"{len(self.encoders)} encoders for {s} series: need 1 (shared) or {s}")
        present = present.astype(bool)
        x = normalize_volumes(volumes, self.dtype)[..., None]  # [B, S, D, H, W, 1]
        if len(self.encoders) == 1:
            features, maps = self.encoders[0](x.reshape(b * s, *x.shape[2:]), present.reshape(b * s), return_attention)
            features = features.reshape(b, s, -1)
            maps = [m.reshape(b, s, *m.shape[1:]) for m in maps]
        else:
            per_series = [enc(x[:, i], present[:, i], return_attention) for i, enc in enumerate(self.encoders)]
            features = jnp.stack([f for f, _ in per_series], axis=1)
            maps = [jnp.stack(block, axis=1) for block in zip(*(m for _, m in per_series))]
        logits = self.head(features, present).astype(jnp.float32)
        return (logits, maps) if return_attention else logits
