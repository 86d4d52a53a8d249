"""Stage 2 of the two-stage pipeline: the crop classifier, `crops [B, 25, K, P, P]` -> logits `[B, 25, 3]`.

Input: per study and target t (labels.TARGETS order) a crop of K neighbouring slices of P x P pixels around
t's point on its series (uint8, or float on the uint8 scale; left-side crops already mirrored to look like
right-side ones), and `crop_present` bool `[B, 25]` (False where t's series is absent; such crops are zeros).

1. Slice encoder: every slice `[B * 25 * K, P, P, 1]` (normalised as fused.normalize_volumes) goes through a
   2D ViT and / or a 2D EfficientNet (optionally on the slice average-pooled by `effnet_pool`, for CPU speed),
   pooled and concatenated (a fused.SeriesEncoder, the layout of the study model's shared encoder, so timm
   ImageNet weights load 1:1 with pretrained.apply_pretrained), then LayerNorm -> dense -> `hidden`.
2. Slice pooling: one learned query attends over the crop's K slice vectors (plus a learned slice-position
   embedding) in a cross-attention block -> one vector per crop.
3. Study head: each crop vector plus learned condition (t // 5), level (labels.TARGET_LEVEL) and side
   (labels.TARGET_SIDE: none / left / right) embeddings is one of 25 tokens; `depth` pre-LN transformer
   blocks of self-attention over a study's tokens let each target read the other levels and conditions (what
   any_severe_spinal and correlated levels need); LayerNorm -> a linear classifier shared by the targets plus
   a per-target bias (`set_output_bias`) -> 3 severity logits.

Absent crops: their slices are still encoded (static shapes) but excluded from BatchNorm statistics, their
crop vector is replaced by zeros, and their token is masked as an attention key, so nothing of their pixels
reaches any output. Their logits still come out: the token is the target's embeddings alone, attending to the
study's present crops (a prior conditioned on the rest of the study). A study without any present crop lets
every token attend to every token (embeddings only).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lumbar_jax import labels
from lumbar_jax.labels import NUM_SEVERITIES, NUM_TARGETS
from lumbar_jax.models.efficientnet import EfficientNet, EfficientNetConfig
from lumbar_jax.models.fused import SeriesEncoder, normalize_volumes
from lumbar_jax.models.transformer import TRUNC_NORMAL, Block, BlockConfig, CrossBlock, dense, layer_norm
from lumbar_jax.models.vit import ViTConfig, VisionTransformer

NUM_SIDES = 3  # labels.TARGET_SIDE values: 0 none, 1 left, 2 right


class SlicePooling(nnx.Module):
    """A learned query attends over the K slice vectors of a crop: `[N, K, E]` -> `[N, E]`.

    The slices get a learned position embedding (which slice is the centre one, which side is which: left
    crops are mirrored, so slice order means the same on both sides); one pre-LN cross-attention block (with
    its MLP), then LayerNorm."""

    def __init__(self, num_slices: int, block: BlockConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        """block: the cross-attention block (its `dim` is the width E)."""
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        hidden = block.dim
        self.slice_embed = nnx.Param(TRUNC_NORMAL(rngs.params(), (num_slices, hidden), param_dtype))
        self.query = nnx.Param(TRUNC_NORMAL(rngs.params(), (1, 1, hidden), param_dtype))
        self.block = CrossBlock(block, **kw)
        self.norm = layer_norm(hidden, **kw)

    def __call__(self, slices: jax.Array) -> jax.Array:
        """slices `[N, K, E]` -> crop vectors `[N, E]`."""
        tokens = slices + self.slice_embed[...].astype(slices.dtype)
        query = jnp.broadcast_to(self.query[...].astype(slices.dtype), (slices.shape[0], 1, slices.shape[-1]))
        pooled, _ = self.block(query, tokens)
        return self.norm(pooled[:, 0])


@dataclasses.dataclass(frozen=True)
class CropClassifierConfig:
    """The crop classifier: its 2D slice encoders (at least one), the slice pooling and the study head."""

    crop_shape: tuple[int, int, int]  # (K, P, P) built for: slice embedding per K, ViT positions for P x P
    vit: ViTConfig | None  # the slice ViT (input_shape (P, P), 1 channel, no classes), or None
    effnet: EfficientNetConfig | None  # the slice EfficientNet (ndim 2, 1 channel, no classes), or None
    effnet_pool: int = 1  # average-pooling of the slices before the EfficientNet only (2: P/2 x P/2; CPU speed)
    hidden: int = 256  # width of the slice pooling and the study head
    num_heads: int = 4  # their attention heads
    depth: int = 2  # the study head's self-attention blocks over the 25 crop tokens
    dropout: float = 0.0  # in the pooling and head blocks

    def __post_init__(self):
        object.__setattr__(self, "crop_shape", tuple(int(n) for n in self.crop_shape))
        encoders = [e for e in (self.vit, self.effnet) if e is not None]
        if not encoders:
            raise ValueError("the crop classifier needs a ViT, an EfficientNet or both")
        if any(e.in_channels != 1 or e.num_classes for e in encoders):
            raise ValueError("the slice encoders take 1 channel and return features (num_classes 0)")
        if self.vit is not None and self.vit.input_shape != self.crop_shape[1:]:
            raise ValueError(f"vit.input_shape {self.vit.input_shape} is not the crop's {self.crop_shape[1:]}")
        if self.effnet is not None and self.effnet.ndim != 2:
            raise ValueError("the slice EfficientNet must be 2D (effnet.ndim 2)")

    def block(self) -> BlockConfig:
        """The attention blocks of the slice pooling and the study head."""
        return BlockConfig(self.hidden, self.num_heads, dropout=self.dropout)


class CropClassifier(nnx.Module):
    """crops `[B, 25, K, P, P]` (uint8 scale), crop_present bool `[B, 25]` -> logits float32 `[B, 25, 3]`
    (see the module docstring).

    config: a CropClassifierConfig; kernels: layers.KERNELS ('cpu' | 'xla'), for every convolution and
    attention. On the CPU the EfficientNet's large early feature maps dominate the step, hence
    `config.effnet_pool` (the ViT keeps the detail).
    """

    def __init__(self, config: CropClassifierConfig, *, kernels: str, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.crop_shape = config.crop_shape
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        vit_encoder = effnet_encoder = None
        if config.vit is not None:
            vit_encoder = VisionTransformer(config.vit, kernels=kernels, **kw)
        if config.effnet is not None:
            effnet_encoder = EfficientNet(config.effnet, kernels=kernels, **kw)
        # A list of one shared slice encoder: StudyModel's layout, which pretrained.apply_pretrained loads.
        pool = (config.effnet_pool, config.effnet_pool)
        self.encoders = nnx.List([SeriesEncoder(vit_encoder, effnet_encoder, pool)])
        features, hidden, block = self.encoders[0].num_features, config.hidden, config.block()
        self.slice_norm = layer_norm(features, **kw)
        self.slice_proj = dense(features, hidden, **kw)
        self.pool = SlicePooling(self.crop_shape[0], block, **kw)
        embed = lambda n: nnx.Param(TRUNC_NORMAL(rngs.params(), (n, hidden), param_dtype))  # noqa: E731
        self.condition_embed, self.level_embed = embed(labels.NUM_CONDITIONS), embed(labels.NUM_LEVELS)
        self.side_embed = embed(NUM_SIDES)
        self.blocks = nnx.List([Block(block, kernels=kernels, **kw) for _ in range(config.depth)])
        self.norm_out = layer_norm(hidden, **kw)
        self.classifier = dense(hidden, NUM_SEVERITIES, **kw)
        self.target_bias = nnx.Param(jnp.zeros((NUM_TARGETS, NUM_SEVERITIES), param_dtype))

    def set_output_bias(self, bias: jax.Array) -> None:
        """Set the per-target bias of the logits `[25, 3]` (e.g. the log class prior of the training labels)."""
        self.target_bias[...] = jnp.asarray(bias, self.target_bias.dtype)

    def target_embeddings(self) -> jax.Array:
        """The sum of each target's condition, level and side embeddings `[25, hidden]`."""
        return (self.condition_embed[...][labels.TARGET_CONDITION] + self.level_embed[...][labels.TARGET_LEVEL]
                + self.side_embed[...][labels.TARGET_SIDE])

    def encode_slices(self, crops: jax.Array, crop_present: jax.Array) -> jax.Array:
        """crops `[B, 25, K, P, P]`, crop_present bool `[B, 25]` -> the encoders' pooled features of every slice
        `[B, 25, K, F]` (ViT then EfficientNet; BatchNorm statistics from present crops only)."""
        if crops.ndim != 5 or crops.shape[1] != NUM_TARGETS or crops.shape[2] != self.crop_shape[0]:
            raise ValueError(f"crops {tuple(crops.shape)}: expected [B, {NUM_TARGETS}, {self.crop_shape[0]}, P, P] "
                             f"(the model was built for crop_shape {self.crop_shape})")
        b, t, k = crops.shape[:3]
        x = normalize_volumes(crops, self.dtype).reshape(b * t * k, *crops.shape[3:], 1)
        slice_present = jnp.repeat(crop_present.astype(bool).reshape(-1), k)
        features, _ = self.encoders[0](x, slice_present)
        return features.reshape(b, t, k, -1)

    def __call__(self, crops: jax.Array, crop_present: jax.Array) -> jax.Array:
        """crops `[B, 25, K, P, P]` (uint8 scale), crop_present bool `[B, 25]` -> logits float32 `[B, 25, 3]`."""
        present = crop_present.astype(bool)
        features = self.encode_slices(crops, present)
        b, t, k, _ = features.shape
        slices = self.slice_proj(self.slice_norm(features)).reshape(b * t, k, -1)
        crop_vectors = self.pool(slices).reshape(b, t, -1)
        crop_vectors = jnp.where(present[..., None], crop_vectors, jnp.zeros((), crop_vectors.dtype))
        tokens = crop_vectors + self.target_embeddings().astype(crop_vectors.dtype)
        key_mask = present | ~present.any(axis=1, keepdims=True)
        for block in self.blocks:
            tokens = block(tokens, key_mask)
        logits = self.classifier(self.norm_out(tokens)) + self.target_bias[...].astype(tokens.dtype)
        return logits.astype(jnp.float32)
