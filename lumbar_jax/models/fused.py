"""The study model: three canonical volumes per study -> per-series features -> fusion head -> logits.

`volumes [B, S=3, D, H, W]` (labels.SERIES_TYPES order, uint8 or float on the uint8 scale 0..255) and
`present [B, S]` -> logits `[B, 25, 3]` float32 in labels.TARGETS order. Each series goes through a
`SeriesEncoder` (a ViT, an EfficientNet, or both with their features concatenated); one encoder shared by all
series types runs once on the `[B * S, D, H, W, 1]` batch, separate encoders run on `[B, D, H, W, 1]` each.
Absent series are still encoded (static shapes) but excluded from BatchNorm statistics and from the head.
A pooled head (`head.spatial` False) gets one feature vector per series `[B, S, F]`; a spatial head gets the
encoders' token maps, per source `[B, S, T_i, F_i]` (see heads.py).
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

    def __init__(self, vit: VisionTransformer | None, effnet: EfficientNet | None,
                 effnet_pool: Sequence[int] = (1, 1, 1)):
        """effnet_pool: average-pooling window (= stride) `[d, h, w]` applied to the volume before the
        EfficientNet only: on CPU the 3D convolutions at full resolution dominate the step time, and with a
        spatial head the ViT tokens carry the detail."""
        if vit is None and effnet is None:
            raise ValueError("a SeriesEncoder needs a ViT, an EfficientNet or both")
        self.vit = vit
        self.effnet = effnet
        self.effnet_pool = tuple(effnet_pool)
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
            features.append(self.effnet(self._effnet_input(x), present))
        return jnp.concatenate(features, axis=-1), maps

    def _effnet_input(self, x: jax.Array) -> jax.Array:
        """x `[N, D, H, W, C]` average-pooled by `effnet_pool` (identity for (1, 1, 1))."""
        if self.effnet_pool == (1, 1, 1):
            return x
        pool = self.effnet_pool
        return nnx.avg_pool(x, window_shape=pool, strides=pool, padding="VALID")

    def token_sources(self, spatial_shape) -> list[tuple[tuple[int, ...], int]]:
        """(token grid, width) of each output of `tokens` for volumes of `spatial_shape` `[D, H, W]`."""
        sources = []
        if self.vit is not None:
            sources.append((tuple(self.vit.grid), self.vit.num_features))
        if self.effnet is not None:
            pooled = tuple(n // p for n, p in zip(spatial_shape, self.effnet_pool))
            sources.append((self.effnet.output_grid(pooled), self.effnet.num_features))
        return sources

    def tokens(self, x: jax.Array, present: jax.Array, return_attention: bool = False):
        """x `[N, D, H, W, 1]`, present bool `[N]` -> (per source `[N, T_i, F_i]`: the ViT patch tokens, the
        EfficientNet feature-map cells, in grid order; ViT attention maps as in `__call__`)."""
        if return_attention and self.vit is None:
            raise ValueError("return_attention needs a ViT encoder")
        tokens, maps = [], []
        if self.vit is not None:
            out, maps = self.vit.patch_tokens(x, return_attention)
            tokens.append(out)
        if self.effnet is not None:
            fmap = self.effnet.feature_map(self._effnet_input(x), present)
            tokens.append(fmap.reshape(fmap.shape[0], -1, fmap.shape[-1]))
        return tokens, maps


class StudyModel(nnx.Module):
    """Per-series encoders + fusion head. `encoders`: one SeriesEncoder shared by all series types, or one per
    type in labels.SERIES_TYPES order; `head`: a heads.FUSIONS head (pooled or spatial, see `head.spatial`)."""

    def __init__(self, encoders: Sequence[SeriesEncoder], head: nnx.Module, *, dtype=jnp.float32):
        self.encoders = nnx.List(encoders)
        self.head = head
        self.dtype = dtype

    def _encode(self, volumes: jax.Array, present: jax.Array, return_attention: bool):
        """-> (encoder outputs in the form the head takes, ViT maps `[B, S, heads, T, T]` per block, present)."""
        b, s = volumes.shape[:2]
        if len(self.encoders) not in (1, s):
            raise ValueError(f"{len(self.encoders)} encoders for {s} series: need 1 (shared) or {s}")
        present = present.astype(bool)
        x = normalize_volumes(volumes, self.dtype)[..., None]  # [B, S, D, H, W, 1]
        encode = "tokens" if self.head.spatial else "__call__"
        if len(self.encoders) == 1:
            out, maps = getattr(self.encoders[0], encode)(x.reshape(b * s, *x.shape[2:]), present.reshape(b * s),
                                                          return_attention)
            unflatten = lambda a: a.reshape(b, s, *a.shape[1:])  # noqa: E731
            return jax.tree.map(unflatten, out), [unflatten(m) for m in maps], present
        per_series = [getattr(enc, encode)(x[:, i], present[:, i], return_attention)
                      for i, enc in enumerate(self.encoders)]
        out = jax.tree.map(lambda *a: jnp.stack(a, axis=1), *(o for o, _ in per_series))
        maps = [jnp.stack(block, axis=1) for block in zip(*(m for _, m in per_series))]
        return out, maps, present

    def __call__(self, volumes: jax.Array, present: jax.Array, return_attention: bool = False):
        """volumes `[B, S, D, H, W]` (uint8 scale), present bool `[B, S]` -> logits float32 `[B, 25, 3]`;
        with `return_attention` also the ViT attention maps, a list (one per block) of `[B, S, heads, T, T]`."""
        out, maps, present = self._encode(volumes, present, return_attention)
        logits = self.head(out, present).astype(jnp.float32)
        return (logits, maps) if return_attention else logits

    def with_query_attention(self, volumes: jax.Array, present: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Spatial heads only: (logits `[B, 25, 3]`, query attention float32 `[B, 25, K]` over the keys of
        `self.head.key_layout()`): where each target looked."""
        if not self.head.spatial:
            raise ValueError("query attention needs the 'target_query' fusion head")
        out, _, present = self._encode(volumes, present, False)
        logits, attention = self.head(out, present, return_attention=True)
        return logits.astype(jnp.float32), attention
