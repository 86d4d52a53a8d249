"""Vision Transformer over 3D volumes (tubelet patches) or 2D images.

Parameter names follow timm's `VisionTransformer` (patch_embed.proj, cls_token, pos_embed, blocks[i], norm /
fc_norm, head) so ImageNet weights map 1:1 for `ndim=2`. Position embeddings are learned on the token grid of
the training input (`input_shape / patch`) and resampled linearly when an input has another grid.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumbar_jax.models.layers import dropout_layer, resample_pos_embed
from lumbar_jax.models.transformer import TRUNC_NORMAL, Block, BlockConfig, dense, layer_norm

POOLS = ("cls", "mean")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """A VisionTransformer: its size (a VIT_VARIANTS preset) and the input it is built for.
    `ViTConfig.preset('vit_s', input_shape=(224, 224), patch=(16, 16))`."""

    width: int  # token width E
    depth: int  # transformer blocks
    num_heads: int  # attention heads per block
    mlp_ratio: float = 4.0  # MLP hidden width / E
    input_shape: tuple[int, ...] = (224, 224)  # spatial shape [D, H, W] or [H, W] the position embeddings fit
    patch: tuple[int, ...] = (16, 16)  # tubelet / patch, one entry per axis of input_shape
    in_channels: int = 1  # input channels C
    num_classes: int = 0  # 0: pooled features out; else a linear head to this many logits
    pool: str = "cls"  # 'cls' (class token, final `norm`) or 'mean' (mean of patch tokens, `fc_norm`): timm's two
    dropout: float = 0.0  # after the position embedding and inside each block
    drop_path: float = 0.0  # stochastic depth, rising linearly to this over the blocks

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(n) for n in self.input_shape))
        object.__setattr__(self, "patch", tuple(int(n) for n in self.patch))
        if self.pool not in POOLS:
            raise ValueError(f"pool {self.pool!r} is not one of {POOLS}")

    @classmethod
    def preset(cls, name: str, **fields) -> ViTConfig:
        """The VIT_VARIANTS size `name` with `fields` replaced."""
        return dataclasses.replace(VIT_VARIANTS[name], **fields)


VIT_VARIANTS = {
    "vit_ti": ViTConfig(192, 12, 3),
    "vit_s": ViTConfig(384, 12, 6),
    "vit_b": ViTConfig(768, 12, 12),
    "vit_l": ViTConfig(1024, 24, 16),
    "vit_cpu": ViTConfig(32, 2, 2),  # the CPU-sized default (config model.vit): trains in minutes; no timm counterpart
}


def token_grid(input_shape: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
    """Token grid of an input `[*S]` cut into `patch` tubelets; ValueError unless every axis divides."""
    if len(input_shape) != len(patch) or any(s % p or s < p for s, p in zip(input_shape, patch)):
        raise ValueError(f"input spatial shape {tuple(input_shape)} is not a multiple of the patch {tuple(patch)}")
    return tuple(s // p for s, p in zip(input_shape, patch))


class PatchEmbed(nnx.Module):
    """Non-overlapping patches (kernel = stride = patch) projected to the width: `[B, *S, C]` -> `[B, *G, E]`."""

    def __init__(self, patch: Sequence[int], in_channels: int, width: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.patch = tuple(patch)
        self.proj = nnx.Conv(in_channels, width, self.patch, self.patch, padding="VALID",
                             dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        token_grid(x.shape[1:-1], self.patch)
        return self.proj(x)


class VisionTransformer(nnx.Module):
    """ViT encoder: `[B, *S, C]` -> features `[B, width]` (`num_classes == 0`) or logits `[B, num_classes]`.

    config: a ViTConfig (size, input shape and patch, pooling, dropout); kernels: the attention implementation,
    one of layers.KERNELS ('cpu' or 'xla').
    """

    def __init__(self, config: ViTConfig, *, kernels: str, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        v = config
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.grid = token_grid(v.input_shape, v.patch)
        self.pool = v.pool
        self.num_features = v.width
        self.num_prefix = 1 if v.pool == "cls" else 0
        self.patch_embed = PatchEmbed(v.patch, v.in_channels, v.width, rngs=rngs, **kw)
        self.cls_token = (
            nnx.Param(TRUNC_NORMAL(rngs.params(), (1, 1, v.width), param_dtype)) if self.num_prefix else None
        )
        self.pos_embed = nnx.Param(
            TRUNC_NORMAL(rngs.params(), (1, self.num_prefix + math.prod(self.grid), v.width), param_dtype)
        )
        self.pos_drop = dropout_layer(v.dropout, rngs)
        rates = np.linspace(0.0, v.drop_path, v.depth)
        self.blocks = nnx.List([
            Block(BlockConfig(v.width, v.num_heads, v.mlp_ratio, v.dropout, float(r)), kernels=kernels, rngs=rngs, **kw)
            for r in rates
        ])
        self.norm = layer_norm(v.width, rngs=rngs, **kw) if v.pool == "cls" else None
        self.fc_norm = layer_norm(v.width, rngs=rngs, **kw) if v.pool == "mean" else None
        self.head = dense(v.width, v.num_classes, rngs=rngs, **kw) if v.num_classes else None

    def pos_embed_for(self, grid: Sequence[int]) -> jax.Array:
        """Position embeddings `[1, prefix + prod(grid), E]` for a token grid (resampled if not the stored one)."""
        pos = self.pos_embed[...]
        prefix, patches = pos[:, : self.num_prefix], pos[0, self.num_prefix:]
        patches = resample_pos_embed(patches.reshape(*self.grid, -1), grid).reshape(1, -1, pos.shape[-1])
        return jnp.concatenate([prefix, patches], axis=1)

    def encode(self, x: jax.Array, return_attention: bool = False) -> tuple[jax.Array, list]:
        """x `[B, *S, C]` -> (tokens `[B, prefix + T, E]` after the last block, the per-block attention maps
        `[B, heads, prefix + T, prefix + T]`, empty unless `return_attention`)."""
        tokens = self.patch_embed(x)
        grid = tokens.shape[1:-1]
        tokens = tokens.reshape(x.shape[0], -1, tokens.shape[-1])
        if self.num_prefix:
            cls = jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, tokens.shape[-1])).astype(tokens.dtype)
            tokens = jnp.concatenate([cls, tokens], axis=1)
        tokens = self.pos_drop(tokens + self.pos_embed_for(grid).astype(tokens.dtype))
        maps = []
        for block in self.blocks:
            if return_attention:
                tokens, weights = block(tokens, return_attention=True)
                maps.append(weights)
            else:
                tokens = block(tokens)
        return tokens, maps

    def patch_tokens(self, x: jax.Array, return_attention: bool = False) -> tuple[jax.Array, list]:
        """x `[B, *S, C]` -> (patch tokens `[B, T, E]` in grid order, LayerNormed as the pooled features are
        (the final `norm` with 'cls' pooling; raw with 'mean', whose `fc_norm` acts on the mean), maps):
        what a spatial head attends over."""
        tokens, maps = self.encode(x, return_attention)
        if self.norm is not None:
            tokens = self.norm(tokens)
        return tokens[:, self.num_prefix:], maps

    def __call__(self, x: jax.Array, return_attention: bool = False):
        """x `[B, *S, C]` (S a multiple of the patch) -> `[B, width or num_classes]`; with `return_attention`
        also the per-block attention maps, a list of `[B, heads, T, T]` (T = prefix + tokens)."""
        tokens, maps = self.encode(x, return_attention)
        if self.pool == "cls":
            features = self.norm(tokens)[:, 0]
        else:
            features = self.fc_norm(tokens.mean(axis=1))
        out = self.head(features) if self.head is not None else features
        return (out, maps) if return_attention else out
