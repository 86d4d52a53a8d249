"""Build a study model from the run config's `model` section.

The section's fields and their defaults are documented once, in `lumbar_jax.train.config.default_config`, and
checked once, by `lumbar_jax.train.config.validate` at the entry point; `create_model` trusts them. This module
holds what the validation needs to know about the models (MODEL_NAMES, MODEL_ENCODERS, DTYPES,
KERNEL_SETTINGS) and the one place where the backend chooses the kernels (`resolve_kernels`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from lumbar_jax.labels import SERIES_TYPES
from lumbar_jax.models import baselines, pretrained
from lumbar_jax.models.crop_classifier import CropClassifier
from lumbar_jax.models.efficientnet import EfficientNet
from lumbar_jax.models.fused import SeriesEncoder, StudyModel
from lumbar_jax.models.heads import fusion_head
from lumbar_jax.models.localiser import Localiser
from lumbar_jax.models.layers import KERNELS
from lumbar_jax.models.vit import VIT_VARIANTS, VisionTransformer

# Model name -> the encoders each series goes through (their features are concatenated).
MODEL_ENCODERS = {"vit": ("vit",), "effnet": ("effnet",), "vit_effnet": ("vit", "effnet")}
# The earlier systems (models/baselines.py): one ViT each, CLS token -> linear head; no fusion head.
BASELINE_MODELS = baselines.BASELINE_MODELS
MODEL_NAMES = tuple(MODEL_ENCODERS) + BASELINE_MODELS
DTYPES = ("float32", "bfloat16")
# `model.kernels` settings: an implementation of layers.KERNELS, or 'auto' (see resolve_kernels).
KERNEL_SETTINGS = ("auto", *KERNELS)


def resolve_kernels(setting: str) -> str:
    """The layers.KERNELS implementation of a `model.kernels` setting: 'auto' = 'cpu' on the CPU backend (the
    XLA:CPU-friendly convolutions and attention), 'xla' on GPU / TPU; 'cpu' and 'xla' as they are."""
    if setting == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "xla"
    return setting


def encoders_of(config: Mapping) -> tuple[str, ...]:
    """The encoder kinds ('vit', 'effnet') of a `model` section's name; a baseline is one ViT."""
    return MODEL_ENCODERS.get(config["name"], ("vit",))


def uses_query_attention(config: Mapping) -> bool:
    """Whether the model of a `model` section has target queries (a study model with the 'target_query'
    fusion head): what the coordinate loss and the attention-peak metrics read."""
    return config["name"] in MODEL_ENCODERS and config["fusion"] == "target_query"


def create_model(config: Mapping, rngs: nnx.Rngs, load_pretrained: bool = False):
    """The model of a validated `model` section (`config.model` of the run config): `model(volumes
    [B, 3, D, H, W], present [B, 3]) -> logits [B, 25, 3]`; a StudyModel, or for a BASELINE_MODELS name a
    models.baselines model (same call, `head.set_output_bias`; no fusion head). Built in training mode; call
    `model.eval()` for inference. `model.kernels` is resolved here, once, for every layer.
    `load_pretrained`: load `pretrained_vit` / `pretrained_effnet` into the encoders (training start; the
    heads keep their initialisation)."""
    kernels = resolve_kernels(config["kernels"])
    kw = dict(dtype=jnp.dtype(config["dtype"]), param_dtype=jnp.dtype(config["param_dtype"]), rngs=rngs)
    encoders = encoders_of(config)
    vit_variant = _vit_variant(config) if "vit" in encoders else None
    if config["name"] in BASELINE_MODELS:
        model = baselines.create_baseline(config, vit_variant, kernels=kernels, **kw)
    else:
        model = _study_model(config, encoders, vit_variant, kernels, kw)
    if load_pretrained:
        pretrained.apply_pretrained(model, config)
    return model


def _vit_variant(config: Mapping):
    """The `model.vit` variant, `model.vit_depth` blocks deep when that is set."""
    variant = VIT_VARIANTS[config["vit"]]
    return variant._replace(depth=config["vit_depth"]) if config["vit_depth"] else variant


def create_localiser(config: Mapping, model_config: Mapping, volume_shape, rngs: nnx.Rngs) -> Localiser:
    """Stage 1 of the two-stage pipeline from the run config's `localiser` section: `model(volumes [B, 3, D, H,
    W], present [B, 3]).points -> [B, 25, 3]`. Kernels and dtypes are the `model` section's."""
    return Localiser(config["variant"], volume_shape=tuple(volume_shape),
                     kernels=resolve_kernels(model_config["kernels"]), dtype=jnp.dtype(model_config["dtype"]),
                     param_dtype=jnp.dtype(model_config["param_dtype"]), rngs=rngs)


def create_crop_classifier(config: Mapping, crop_shape, rngs: nnx.Rngs, load_pretrained: bool = False
                           ) -> CropClassifier:
    """Stage 2 of the two-stage pipeline from a validated `model` section: `model(crops [B, 25, K, P, P],
    crop_present [B, 25]) -> logits [B, 25, 3]`, each crop slice through the 2D encoders of `model.name` (the
    EfficientNet's input average-pooled by the [h, w] of `model.effnet_pool`).
    `load_pretrained`: timm weights into the 2D encoders, 1:1 (no inflation)."""
    encoders = encoders_of(config)
    model = CropClassifier(
        crop_shape=tuple(crop_shape), vit=_vit_variant(config) if "vit" in encoders else None,
        effnet=config["effnet"] if "effnet" in encoders else None, effnet_pool=config["effnet_pool"][1],
        vit_patch=tuple(config["slice_patch"]),
        vit_pool=config["pool"], hidden=config["head_hidden"], num_heads=config["head_heads"],
        depth=config["head_depth"], dropout=config["dropout"], drop_path=config["drop_path"],
        dtype=jnp.dtype(config["dtype"]), param_dtype=jnp.dtype(config["param_dtype"]),
        kernels=resolve_kernels(config["kernels"]), effnet_padding=config["effnet_padding"], rngs=rngs)
    if load_pretrained:
        pretrained.apply_pretrained(model, config)
    return model


def _study_model(config: Mapping, encoders: tuple[str, ...], vit_variant, kernels: str, kw: dict) -> StudyModel:
    """Per-series encoders (one set shared by the series types, or one set per type) and the fusion head."""
    volume_shape = tuple(config["volume_shape"])

    def series_encoder() -> SeriesEncoder:
        vit = effnet = None
        if "vit" in encoders:
            vit = VisionTransformer(vit_variant, input_shape=volume_shape, patch=tuple(config["patch"]),
                                    pool=config["pool"], dropout=config["encoder_dropout"],
                                    drop_path=config["drop_path"], kernels=kernels, **kw)
        if "effnet" in encoders:
            effnet = EfficientNet(config["effnet"], ndim=3, drop_path=config["drop_path"],
                                  padding=config["effnet_padding"], kernels=kernels, **kw)
        return SeriesEncoder(vit, effnet, tuple(config["effnet_pool"]))

    series = [series_encoder() for _ in range(1 if config["share_encoders"] else len(SERIES_TYPES))]
    head = fusion_head(config["fusion"], series[0].num_features, len(SERIES_TYPES), hidden=config["head_hidden"],
                       num_heads=config["head_heads"], dropout=config["dropout"], kernels=kernels,
                       sources=series[0].token_sources(volume_shape), volume_shape=volume_shape,
                       depth=config["head_depth"], **kw)
    return StudyModel(series, head, dtype=kw["dtype"])
