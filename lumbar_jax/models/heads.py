"""Fusion heads: per-series encoder outputs + `present [B, S]` -> logits `[B, 25, 3]`.

Pooled heads (`concat_mlp`, `attention`) read one feature vector per series, `[B, S, F]`. The spatial head
(`target_query`) reads every spatial token of every series, a list (one entry per token source: ViT patches,
EfficientNet feature-map cells) of `[B, S, T_i, F_i]`: one learned query per target attends over them, so the
L4/L5 queries can look at L4/L5 wherever it lies, instead of reading a per-series summary vector in which
25 small findings must share a few hundred numbers. `head.spatial` says which input a head takes.

Every head adds a learned series-type embedding (which of labels.SERIES_TYPES an input comes from; the spatial
head a per-series-type, per-position one) and makes an absent series unable to influence the output: its
features are replaced by zeros after normalisation (`concat_mlp`, which also sees the present mask) or it is
masked out as an attention key (`attention`, `target_query`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumbar_jax import labels
from lumbar_jax.data.dicom_geometry import index_to_normalized
from lumbar_jax.labels import NUM_SEVERITIES, NUM_TARGETS
from lumbar_jax.models.transformer import TRUNC_NORMAL, Block, BlockConfig, CrossBlock, Mlp, dense, layer_norm

FUSIONS = ("concat_mlp", "attention", "target_query")
NUM_OUTPUTS = NUM_TARGETS * NUM_SEVERITIES
# The target-query location bias is stored divided by this: Adam moves every parameter by about the learning
# rate per step, and a logit bias must travel several units within a few hundred steps (a per-parameter
# learning-rate multiplier that survives checkpointing and needs no optimizer partition).
LOCATION_BIAS_SCALE = 16.0


@dataclasses.dataclass(frozen=True)
class FusionHeadConfig:
    """A fusion head and the encoder outputs it reads."""

    kind: str  # one of FUSIONS
    hidden: int  # head width (the MLP's hidden layer, the attention blocks' tokens)
    num_heads: int  # attention heads ('attention', 'target_query')
    dropout: float  # in the head's blocks and MLP
    num_series: int = len(labels.SERIES_TYPES)  # series per study S
    features: int = 0  # pooled feature width F of a series (pooled heads)
    sources: tuple[tuple[tuple[int, ...], int], ...] = ()  # (token grid, width) per token source ('target_query')
    volume_shape: tuple[int, ...] = ()  # [D, H, W] the token grids cover ('target_query')
    depth: int = 1  # cross-attention blocks ('target_query')

    def __post_init__(self):
        if self.kind not in FUSIONS:
            raise ValueError(f"fusion {self.kind!r} is not one of {FUSIONS}")
        sources = tuple((tuple(int(n) for n in grid), int(width)) for grid, width in self.sources)
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "volume_shape", tuple(int(n) for n in self.volume_shape))

    def block(self) -> BlockConfig:
        """The head's attention blocks."""
        return BlockConfig(self.hidden, self.num_heads, dropout=self.dropout)


def _present_features(features: jax.Array, present: jax.Array) -> jax.Array:
    """Zero the features `[B, S, F]` of absent series (jnp.where: not even NaN / inf values reach the output)."""
    return jnp.where(present[..., None], features, jnp.zeros((), features.dtype))


class _PooledHead(nnx.Module):
    """Shared by the pooled heads: one vector per series in, logits from the last layer of `self.mlp`."""

    spatial = False

    def set_output_bias(self, bias: jax.Array) -> None:
        """Set the bias of the logits `[25, 3]` (e.g. the log class prior of the training labels)."""
        self.mlp.fc2.bias[...] = jnp.asarray(bias, self.mlp.fc2.bias.dtype).reshape(-1)


class ConcatMLPHead(_PooledHead):
    """LayerNorm each series' features, add the series-type embedding, zero absent series, concatenate the S
    vectors and the present mask, MLP -> 25 x 3."""

    def __init__(self, config: FusionHeadConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        features, num_series = config.features, config.num_series
        self.norm = layer_norm(features, **kw)
        self.series_embed = nnx.Param(TRUNC_NORMAL(rngs.params(), (num_series, features), param_dtype))
        self.mlp = Mlp((num_series * (features + 1), config.hidden, NUM_OUTPUTS), dropout=config.dropout,
                       out_dropout=0.0, **kw)

    def __call__(self, features: jax.Array, present: jax.Array) -> jax.Array:
        """features `[B, S, F]`, present bool `[B, S]` -> logits `[B, 25, 3]`."""
        x = self.norm(features) + self.series_embed[...].astype(features.dtype)
        x = _present_features(x, present).reshape(x.shape[0], -1)
        x = jnp.concatenate([x, present.astype(x.dtype)], axis=-1)
        return self.mlp(x).reshape(-1, NUM_TARGETS, NUM_SEVERITIES)


class AttentionHead(_PooledHead):
    """A learned query token attends over the projected series tokens (+ series-type embedding) in one
    pre-LN transformer block whose key mask hides absent series; the query's output -> MLP -> 25 x 3.

    The query is itself a key, so a study with no series present still has a well-defined output. `kernels`:
    the block's attention implementation (layers.KERNELS)."""

    def __init__(self, config: FusionHeadConfig, *, kernels: str, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        hidden = config.hidden
        self.norm = layer_norm(config.features, **kw)
        self.proj = dense(config.features, hidden, **kw)
        self.series_embed = nnx.Param(TRUNC_NORMAL(rngs.params(), (config.num_series, hidden), param_dtype))
        self.query = nnx.Param(TRUNC_NORMAL(rngs.params(), (1, 1, hidden), param_dtype))
        self.block = Block(config.block(), kernels=kernels, **kw)
        self.norm_out = layer_norm(hidden, **kw)
        self.mlp = Mlp((hidden, hidden, NUM_OUTPUTS), dropout=config.dropout, out_dropout=0.0, **kw)

    def __call__(self, features: jax.Array, present: jax.Array) -> jax.Array:
        """features `[B, S, F]`, present bool `[B, S]` -> logits `[B, 25, 3]`."""
        tokens = self.proj(self.norm(features)) + self.series_embed[...].astype(features.dtype)
        tokens = _present_features(tokens, present)
        query = jnp.broadcast_to(self.query[...].astype(tokens.dtype), (tokens.shape[0], 1, tokens.shape[-1]))
        tokens = jnp.concatenate([query, tokens], axis=1)
        mask = jnp.concatenate([jnp.ones_like(present[:, :1]), present], axis=1)
        out = self.norm_out(self.block(tokens, mask)[:, 0])
        return self.mlp(out).reshape(-1, NUM_TARGETS, NUM_SEVERITIES)


def token_centres(grid: Sequence[int], volume_shape: Sequence[int]) -> np.ndarray:
    """Normalised (depth, row, col) centres `[prod(grid), len(grid)]` (grid order) of the cells of a token grid laid
    over a volume of `volume_shape`, in the records' coordinates (0 / 1 = centre of the first / last voxel):
    cell g of G over n voxels spans voxels [g n / G, (g + 1) n / G), centre (g + 0.5) n / G - 0.5."""
    axes = []
    for g, n in zip(grid, volume_shape):
        centre = (np.arange(g) + 0.5) * n / g - 0.5
        axes.append(index_to_normalized(centre, n))
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))


def sincos_3d(points: np.ndarray, dim: int, max_frequency: float = 32.0) -> np.ndarray:
    """Fixed 3D position encoding `[N, dim]` of normalised points `[N, 3]`: per axis, sin and cos at
    dim // 6 frequencies spaced geometrically from 1/2 to `max_frequency` cycles per volume; zero-padded."""
    per_axis = dim // 6
    freqs = np.pi * np.geomspace(1.0, 2.0 * max_frequency, max(per_axis, 1))[:per_axis]
    angles = points[:, :, None] * freqs  # [N, 3, F]
    enc = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).reshape(len(points), -1)
    return np.pad(enc, ((0, 0), (0, dim - enc.shape[1]))).astype(np.float32)


class TargetQueryHead(nnx.Module):
    """One learned query per target attends over all spatial tokens of the present series.

    Keys: each token source i (`sources[i] = (token grid, feature width)`, e.g. the ViT's patch grid and the
    EfficientNet's last feature map) is LayerNormed and projected to `hidden`, then gets the fixed 3D
    position encoding of its cell centre in the volume and a learned series-type embedding. Queries: the sum
    of learned condition-group, side, level and per-target embeddings (so "L4/L5" is one vector shared by the
    five L4/L5 targets). `depth` cross-attention blocks whose attention logits also get a learned
    location bias per (target, key), zero at start: a per-target map of where to look, which content-based
    attention alone learns slowly from few studies (the bias is what a flatten + dense layer of a small CNN
    has for free). Then a classifier shared by all targets plus a per-target bias gives each query its 3
    severity logits. Absent series are masked as keys.

    `key_layout()` gives each key's series and normalised centre, so that the query attention can be
    compared with (and trained toward) the annotated label coordinates (train/loss.py).
    """

    spatial = True

    def __init__(self, config: FusionHeadConfig, *, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        sources, num_series, hidden = config.sources, config.num_series, config.hidden
        self.grids = tuple(grid for grid, _ in sources)
        self.volume_shape = config.volume_shape
        self.num_series = num_series
        self.norms = nnx.List([layer_norm(width, **kw) for _, width in sources])
        self.projs = nnx.List([dense(width, hidden, **kw) for _, width in sources])
        self.series_embed = nnx.Param(TRUNC_NORMAL(rngs.params(), (num_series, hidden), param_dtype))
        embed = lambda n: nnx.Param(TRUNC_NORMAL(rngs.params(), (n, hidden), param_dtype))  # noqa: E731
        self.group_embed, self.side_embed = embed(len(labels.CONDITION_GROUPS)), embed(3)
        self.level_embed, self.target_embed = embed(labels.NUM_LEVELS), embed(NUM_TARGETS)
        self.blocks = nnx.List([CrossBlock(config.block(), **kw) for _ in range(config.depth)])
        num_keys = num_series * sum(math.prod(grid) for grid in self.grids)
        self.location_bias = nnx.Param(jnp.zeros((NUM_TARGETS, num_keys), param_dtype))
        self.norm_out = layer_norm(hidden, **kw)
        self.classifier = dense(hidden, NUM_SEVERITIES, **kw)
        self.target_bias = nnx.Param(jnp.zeros((NUM_TARGETS, NUM_SEVERITIES), param_dtype))

    def key_layout(self) -> tuple[np.ndarray, np.ndarray]:
        """(series index int `[K]`, normalised centre float `[K, 3]`) of every key, in key order: series-major
        within each source, sources in order."""
        series, centres = [], []
        for grid in self.grids:
            cells = token_centres(grid, self.volume_shape)
            series.append(np.repeat(np.arange(self.num_series), len(cells)))
            centres.append(np.tile(cells, (self.num_series, 1)))
        return np.concatenate(series), np.concatenate(centres)

    def set_output_bias(self, bias: jax.Array) -> None:
        """Set the bias of the logits `[25, 3]` (e.g. the log class prior of the training labels)."""
        self.target_bias[...] = jnp.asarray(bias, self.target_bias.dtype)

    def queries(self) -> jax.Array:
        """The target queries `[25, hidden]`."""
        return (self.group_embed[...][labels.TARGET_GROUP] + self.side_embed[...][labels.TARGET_SIDE]
                + self.level_embed[...][labels.TARGET_LEVEL] + self.target_embed[...])

    def __call__(self, tokens: Sequence[jax.Array], present: jax.Array, return_attention: bool = False):
        """tokens: per source `[B, S, T_i, F_i]`; present bool `[B, S]` -> logits `[B, 25, 3]`; with
        `return_attention` also the query attention float32 `[B, 25, K]` (mean over blocks and heads)."""
        keys, masks = [], []
        for x, norm, proj, grid in zip(tokens, self.norms, self.projs, self.grids):
            b, s, t, _ = x.shape
            if t != math.prod(grid):
                raise ValueError(f"the target_query head was built for {math.prod(grid)} tokens per series "
                                 f"(grid {grid} over model.volume_shape {self.volume_shape}), got {t}: "
                                 "volumes must have the shape the model was built for")
            pos = sincos_3d(token_centres(grid, self.volume_shape), self.series_embed.shape[-1])
            x = proj(norm(x)) + jnp.asarray(pos, x.dtype) + self.series_embed[...][:, None].astype(x.dtype)
            keys.append(x.reshape(b, s * t, -1))
            masks.append(jnp.repeat(present, t, axis=1))  # series-major, as the reshape
        keys, mask = jnp.concatenate(keys, axis=1), jnp.concatenate(masks, axis=1)
        keys = _present_features(keys, mask)
        queries = jnp.broadcast_to(self.queries().astype(keys.dtype), (keys.shape[0], NUM_TARGETS, keys.shape[-1]))
        weights = []
        for block in self.blocks:
            queries, w = block(queries, keys, mask, LOCATION_BIAS_SCALE * self.location_bias[...])
            weights.append(w.mean(axis=1))
        logits = self.classifier(self.norm_out(queries)) + self.target_bias[...].astype(queries.dtype)
        return (logits, sum(weights) / len(weights)) if return_attention else logits


def fusion_head(config: FusionHeadConfig, *, kernels: str, dtype=None, param_dtype=jnp.float32,
                rngs: nnx.Rngs) -> nnx.Module:
    """The head of `config.kind`. `kernels`: layers.KERNELS (the `attention` head's self-attention; the
    target-query head computes its attention weights explicitly)."""
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if config.kind == "concat_mlp":
        return ConcatMLPHead(config, **kw)
    if config.kind == "attention":
        return AttentionHead(config, kernels=kernels, **kw)
    return TargetQueryHead(config, **kw)
