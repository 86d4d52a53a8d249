"""The PyTorch peer of the two-stage crop classifier (lumbar_jax/models/crop_classifier.py, `CropClassifier`):
what a PyTorch + timm user would write for the same architecture, so that `benchmarks` can time both on the
same inputs. The package never imports it.

`CropClassifierPeer(config)(crops [B, 25, K, P, P] (uint8 scale), crop_present bool [B, 25])` -> logits float32
`[B, 25, 3]`, layer for layer ours:
1. every slice `[B * 25 * K, 1, P, P]`, normalised as fused.normalize_volumes, through timm's 2D
   `VisionTransformer` (class token / 'token' pooling for pool 'cls', no class token / 'avg' pooling with
   fc_norm for 'mean') and / or timm's `EfficientNet` (built directly from block args that reproduce our
   EfficientNetConfig; its input average-pooled by `config.effnet_pool`), features concatenated `[.., F]`;
2. LayerNorm -> Linear to `hidden`, then SlicePooling (a learned query attends over the K slices plus a
   learned slice embedding in one pre-LN cross-attention block, LayerNorm) -> one vector per crop;
3. crop vectors zeroed where absent, plus condition / level / side embeddings, `depth` pre-LN self-attention
   blocks with absent crops masked as keys, LayerNorm, a shared linear classifier plus a per-target bias.
Attention is `torch.nn.functional.scaled_dot_product_attention`. Attribute names mirror our NNX module paths,
so `pretrained.torch_state_dict(ours)` loads with `load_state_dict(strict=True)` (`benchmarks.peers.load_weights`);
`metric_loss` ports ours, and the train step is `benchmarks.peers.adamw_train_step`.

One difference cannot be matched: our MaskedBatchNorm takes its training statistics (and running averages)
over present crops only, while the peer has timm's plain BatchNorm2d over every slice in the batch (what a
timm user has). In eval mode, and in training with every crop present, the two compute the same outputs (the
running variance then still differs: torch updates it with the unbiased batch variance, ours the biased).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as functional

from benchmarks.peers import import_timm
from lumbar_jax import labels as labels_lib
from lumbar_jax.labels import NUM_SEVERITIES, NUM_TARGETS
from lumbar_jax.models.crop_classifier import NUM_SIDES, CropClassifierConfig
from lumbar_jax.models.efficientnet import BN_EPS, BN_EPS_TF, SE_RATIO, STEM_CHANNELS, EfficientNetConfig
from lumbar_jax.models.fused import INPUT_MEAN, INPUT_STD
from lumbar_jax.models.transformer import LN_EPS
from lumbar_jax.models.vit import ViTConfig

timm = import_timm()

def timm_vit(config: ViTConfig) -> torch.nn.Module:
    """timm's 2D VisionTransformer of our ViTConfig (1 channel, pooled features `[N, width]`)."""
    cls = config.pool == "cls"
    return timm.models.vision_transformer.VisionTransformer(
        img_size=config.input_shape, patch_size=config.patch, in_chans=config.in_channels, num_classes=0,
        global_pool="token" if cls else "avg", class_token=cls, embed_dim=config.width, depth=config.depth,
        num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, pos_drop_rate=config.dropout,
        proj_drop_rate=config.dropout, drop_path_rate=config.drop_path,
        norm_layer=partial(torch.nn.LayerNorm, eps=LN_EPS))


def timm_effnet(config: EfficientNetConfig) -> torch.nn.Module:
    """timm's EfficientNet of our 2D EfficientNetConfig, built as timm's `_gen_efficientnet` builds B0..B7:
    one arch string per stage (depthwise-separable 'ds' for expand ratio 1, else inverted residual 'ir'; SE on
    the block input), repeats scaled by `decode_arch_def`, channels / stem / head by `round_chs_fn`."""
    builder = timm.models._efficientnet_builder
    arch_def = [[f"{'ds' if s.expand_ratio == 1 else 'ir'}_r{s.repeats}_k{s.kernel}_s{s.stride}_e{s.expand_ratio}"
                 f"_c{s.channels}_se{SE_RATIO}"] for s in config.stages]
    round_chs_fn = partial(builder.round_channels, multiplier=config.width, divisor=8)
    bn_eps = config.bn_eps if config.bn_eps is not None else (BN_EPS_TF if config.padding == "same" else BN_EPS)
    return timm.models.efficientnet.EfficientNet(
        block_args=builder.decode_arch_def(arch_def, config.depth), num_classes=config.num_classes,
        num_features=round_chs_fn(config.head_channels), in_chans=config.in_channels, stem_size=STEM_CHANNELS,
        pad_type="same" if config.padding == "same" else "", act_layer=torch.nn.SiLU,
        norm_layer=partial(torch.nn.BatchNorm2d, eps=bn_eps), round_chs_fn=round_chs_fn,
        drop_rate=config.dropout if config.num_classes else 0.0, drop_path_rate=config.drop_path)


class SeriesEncoder(torch.nn.Module):
    """Slices `[N, 1, P, P]` -> the ViT's then the EfficientNet's pooled features `[N, F]` (fused.SeriesEncoder);
    the EfficientNet reads the slices average-pooled by `effnet_pool`."""

    def __init__(self, config: CropClassifierConfig):
        super().__init__()
        self.vit = timm_vit(config.vit) if config.vit is not None else None
        self.effnet = timm_effnet(config.effnet) if config.effnet is not None else None
        self.effnet_pool = config.effnet_pool
        self.num_features = sum(e.num_features for e in (self.vit, self.effnet) if e is not None)

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        features = [self.vit(slices)] if self.vit is not None else []
        if self.effnet is not None:
            pooled = functional.avg_pool2d(slices, self.effnet_pool) if self.effnet_pool > 1 else slices
            features.append(self.effnet(pooled))
        return torch.cat(features, dim=-1)


class Attention(torch.nn.Module):
    """Self-attention with a fused qkv projection (timm layout) and a key mask: x `[B, T, E]`, mask bool
    `[B, T]` (False = key ignored) -> `[B, T, E]`."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.proj_drop = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, e = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, e // self.num_heads).permute(2, 0, 3, 1, 4)
        out = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, t, e)))


class Block(torch.nn.Module):
    """Pre-LN self-attention block: x + Attn(LN(x)), then x + MLP(LN(x)) on tokens `[B, T, E]`."""

    def __init__(self, dim: int, num_heads: int, dropout: float, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = torch.nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = timm.layers.Mlp(dim, int(dim * mlp_ratio), drop=dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class CrossAttention(torch.nn.Module):
    """Queries `[B, Q, E]` attend over tokens `[B, K, E]` (q, kv, proj linears) -> `[B, Q, E]`."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = torch.nn.Linear(dim, dim)
        self.kv = torch.nn.Linear(dim, 2 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.proj_drop = torch.nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        (b, nq, e), nk, h = queries.shape, tokens.shape[1], self.num_heads
        q = self.q(queries).reshape(b, nq, h, e // h).transpose(1, 2)
        k, v = self.kv(tokens).reshape(b, nk, 2, h, e // h).permute(2, 0, 3, 1, 4)
        out = functional.scaled_dot_product_attention(q, k, v)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, nq, e)))


class CrossBlock(torch.nn.Module):
    """q + CrossAttn(LN(q), LN(tokens)), then q + MLP(LN(q)): queries `[B, Q, E]`, tokens `[B, K, E]`."""

    def __init__(self, dim: int, num_heads: int, dropout: float, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_q = torch.nn.LayerNorm(dim, eps=LN_EPS)
        self.norm_kv = torch.nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = CrossAttention(dim, num_heads, dropout)
        self.norm2 = torch.nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = timm.layers.Mlp(dim, int(dim * mlp_ratio), drop=dropout)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        queries = queries + self.attn(self.norm_q(queries), self.norm_kv(tokens))
        return queries + self.mlp(self.norm2(queries))


class SlicePooling(torch.nn.Module):
    """A learned query attends over a crop's K slice vectors (plus a learned slice embedding): `[N, K, E]` ->
    `[N, E]`."""

    def __init__(self, num_slices: int, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.slice_embed = torch.nn.Parameter(torch.zeros(num_slices, dim))
        self.query = torch.nn.Parameter(torch.zeros(1, 1, dim))
        self.block = CrossBlock(dim, num_heads, dropout)
        self.norm = torch.nn.LayerNorm(dim, eps=LN_EPS)
        for embedding in (self.slice_embed, self.query):
            torch.nn.init.trunc_normal_(embedding, std=0.02)

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        query = self.query.expand(slices.shape[0], 1, slices.shape[-1])
        return self.norm(self.block(query, slices + self.slice_embed)[:, 0])


class CropClassifierPeer(torch.nn.Module):
    """crops `[B, 25, K, P, P]` (uint8 scale, any dtype), crop_present bool `[B, 25]` -> logits float32
    `[B, 25, 3]` (the module docstring); built from our CropClassifierConfig."""

    def __init__(self, config: CropClassifierConfig):
        super().__init__()
        self.crop_shape = config.crop_shape
        hidden, heads, dropout = config.hidden, config.num_heads, config.dropout
        self.encoders = torch.nn.ModuleList([SeriesEncoder(config)])
        features = self.encoders[0].num_features
        self.slice_norm = torch.nn.LayerNorm(features, eps=LN_EPS)
        self.slice_proj = torch.nn.Linear(features, hidden)
        self.pool = SlicePooling(self.crop_shape[0], hidden, heads, dropout)
        self.condition_embed = torch.nn.Parameter(torch.zeros(labels_lib.NUM_CONDITIONS, hidden))
        self.level_embed = torch.nn.Parameter(torch.zeros(labels_lib.NUM_LEVELS, hidden))
        self.side_embed = torch.nn.Parameter(torch.zeros(NUM_SIDES, hidden))
        for embedding in (self.condition_embed, self.level_embed, self.side_embed):
            torch.nn.init.trunc_normal_(embedding, std=0.02)
        self.blocks = torch.nn.ModuleList([Block(hidden, heads, dropout) for _ in range(config.depth)])
        self.norm_out = torch.nn.LayerNorm(hidden, eps=LN_EPS)
        self.classifier = torch.nn.Linear(hidden, NUM_SEVERITIES)
        self.target_bias = torch.nn.Parameter(torch.zeros(NUM_TARGETS, NUM_SEVERITIES))
        for name, index in (("target_condition", labels_lib.TARGET_CONDITION),
                            ("target_level", labels_lib.TARGET_LEVEL), ("target_side", labels_lib.TARGET_SIDE)):
            self.register_buffer(name, torch.as_tensor(np.asarray(index), dtype=torch.long), persistent=False)

    def target_embeddings(self) -> torch.Tensor:
        """Each target's condition + level + side embedding `[25, hidden]`."""
        return (self.condition_embed[self.target_condition] + self.level_embed[self.target_level]
                + self.side_embed[self.target_side])

    def forward(self, crops: torch.Tensor, crop_present: torch.Tensor) -> torch.Tensor:
        b, t, k, height, width = crops.shape
        if t != NUM_TARGETS or k != self.crop_shape[0]:
            raise ValueError(f"crops {tuple(crops.shape)}: expected [B, {NUM_TARGETS}, {self.crop_shape[0]}, P, P]")
        present = crop_present.bool()
        slices = ((crops.float() / 255.0 - INPUT_MEAN) / INPUT_STD).reshape(b * t * k, 1, height, width)
        features = self.encoders[0](slices).reshape(b * t, k, -1)
        crop_vectors = self.pool(self.slice_proj(self.slice_norm(features))).reshape(b, t, -1)
        tokens = torch.where(present[..., None], crop_vectors, 0.0) + self.target_embeddings()
        key_mask = present | ~present.any(dim=1, keepdim=True)
        for block in self.blocks:
            tokens = block(tokens, key_mask)
        return (self.classifier(self.norm_out(tokens)) + self.target_bias).float()


def metric_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """lumbar_jax.train.loss.metric_loss in torch (no `valid`, any_severe_spinal weight 1): logits `[B, 25, 3]`,
    labels int `[B, 25]` (-1 missing) -> the scalar loss, the mean of the weighted cross-entropy of each condition
    group and the any_severe_spinal term over the terms the batch has labels for."""
    device = logits.device
    labelled = labels >= 0
    safe = torch.where(labelled, labels, 0)
    log_probs = functional.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, safe[..., None])[..., 0]  # [B, 25]
    severity_weights = torch.as_tensor(labels_lib.SEVERITY_WEIGHTS, dtype=torch.float32, device=device)
    weights = torch.where(labelled, severity_weights[safe], 0.0)
    target_group = torch.as_tensor(labels_lib.TARGET_GROUP, device=device)
    group_onehot = functional.one_hot(target_group, len(labels_lib.CONDITION_GROUPS)).float()  # [25, G]
    group_weight = torch.einsum("bt,tg->g", weights, group_onehot)
    group_loss = torch.einsum("bt,tg->g", nll * weights, group_onehot) / group_weight.clamp_min(1e-9)

    spinal = torch.as_tensor(labels_lib.group_target_indices("spinal"), device=device)
    spinal_labelled = labelled[:, spinal]
    severe_log_prob = torch.where(spinal_labelled, log_probs[:, spinal, 2], -math.inf)
    log_p_any = torch.where(spinal_labelled.any(dim=1), severe_log_prob.amax(dim=1), 0.0)
    log_not_any = torch.log1p(-log_p_any.exp().clamp_max(1.0 - 1e-7))
    target_any = (spinal_labelled & (labels[:, spinal] == 2)).any(dim=1)
    study_weight = weights[:, spinal].amax(dim=1)  # 0 for studies without a labelled spinal row
    any_nll = -torch.where(target_any, log_p_any, log_not_any)
    any_loss = (any_nll * study_weight).sum() / study_weight.sum().clamp_min(1e-9)

    present = torch.cat([group_weight > 0, study_weight.sum()[None] > 0]).float()
    terms = torch.cat([group_loss, any_loss[None]])
    return (terms * present).sum() / present.sum().clamp_min(1e-9)
