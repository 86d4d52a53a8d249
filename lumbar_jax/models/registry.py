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
from lumbar_jax.models.crop_classifier import CropClassifier, CropClassifierConfig
from lumbar_jax.models.efficientnet import EfficientNet, EfficientNetConfig
from lumbar_jax.models.fused import SeriesEncoder, StudyModel
from lumbar_jax.models.heads import FusionHeadConfig, fusion_head
from lumbar_jax.models.localiser import Localiser
from lumbar_jax.models.layers import KERNELS
from lumbar_jax.models.vit import ViTConfig, VisionTransformer

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
    kw = _runtime(config, rngs)
    if config["name"] in BASELINE_MODELS:
        vit = _vit_config(config, in_channels=3, dropout=config["encoder_dropout"])
        model = baselines.create_baseline(config, vit, **kw)
    else:
        model = _study_model(config, kw)
    if load_pretrained:
        pretrained.apply_pretrained(model, config)
    return model


def _runtime(config: Mapping, rngs: nnx.Rngs) -> dict:
    """The keyword arguments every model constructor takes besides its config record: the `model` section's
    kernels (resolved), dtype and param_dtype, and `rngs`."""
    return dict(kernels=resolve_kernels(config["kernels"]), dtype=jnp.dtype(config["dtype"]),
                param_dtype=jnp.dtype(config["param_dtype"]), rngs=rngs)


def _vit_config(config: Mapping, **fields) -> ViTConfig:
    """The `model.vit` preset, `model.vit_depth` blocks deep when that is set, with `pool`, `drop_path` and
    `fields`."""
    depth = dict(depth=config["vit_depth"]) if config["vit_depth"] else {}
    return ViTConfig.preset(config["vit"], **depth, pool=config["pool"], drop_path=config["drop_path"], **fields)


def _effnet_config(config: Mapping, ndim: int) -> EfficientNetConfig:
    """The `model.effnet` preset, `ndim`-D, with `drop_path` and `effnet_padding`."""
    return EfficientNetConfig.preset(config["effnet"], ndim=ndim, drop_path=config["drop_path"],
                                     padding=config["effnet_padding"])


def create_localiser(config: Mapping, model_config: Mapping, volume_shape, rngs: nnx.Rngs) -> Localiser:
    """Stage 1 of the two-stage pipeline from the run config's `localiser` section: `model(volumes [B, 3, D, H,
    W], present [B, 3]).points -> [B, 25, 3]`. Kernels and dtypes are the `model` section's."""
    return Localiser(config["variant"], volume_shape=tuple(volume_shape), **_runtime(model_config, rngs))


def crop_classifier_config(config: Mapping, crop_shape) -> CropClassifierConfig:
    """The CropClassifierConfig of a validated `model` section for crops `[K, P, P]` (crop_shape): the 2D
    encoders of `model.name` per crop slice (the EfficientNet's input average-pooled by the [h, w] of
    `model.effnet_pool`), the slice pooling and study head of `model.head_*`."""
    encoders, crop_shape = encoders_of(config), tuple(crop_shape)
    vit = _vit_config(config, input_shape=crop_shape[1:], patch=config["slice_patch"]) if "vit" in encoders else None
    return CropClassifierConfig(
        crop_shape, vit=vit, effnet=_effnet_config(config, ndim=2) if "effnet" in encoders else None,
        effnet_pool=config["effnet_pool"][1], hidden=config["head_hidden"], num_heads=config["head_heads"],
        depth=config["head_depth"], dropout=config["dropout"])


def create_crop_classifier(config: Mapping, crop_shape, rngs: nnx.Rngs, load_pretrained: bool = False
                           ) -> CropClassifier:
    """Stage 2 of the two-stage pipeline from a validated `model` section (`crop_classifier_config`):
    `model(crops [B, 25, K, P, P], crop_present [B, 25]) -> logits [B, 25, 3]`.
    `load_pretrained`: timm weights into the 2D encoders, 1:1 (no inflation)."""
    model = CropClassifier(crop_classifier_config(config, crop_shape), **_runtime(config, rngs))
    if load_pretrained:
        pretrained.apply_pretrained(model, config)
    return model


def _study_model(config: Mapping, kw: dict) -> StudyModel:
    """Per-series encoders (one set shared by the series types, or one set per type) and the fusion head;
    `kw`: kernels, dtype, param_dtype, rngs."""
    volume_shape, encoders = tuple(config["volume_shape"]), encoders_of(config)
    vit = effnet = None
    if "vit" in encoders:
        vit = _vit_config(config, input_shape=volume_shape, patch=config["patch"], dropout=config["encoder_dropout"])
    if "effnet" in encoders:
        effnet = _effnet_config(config, ndim=3)

    def series_encoder() -> SeriesEncoder:
        return SeriesEncoder(VisionTransformer(vit, **kw) if vit is not None else None,
                             EfficientNet(effnet, **kw) if effnet is not None else None, tuple(config["effnet_pool"]))

    series = [series_encoder() for _ in range(1 if config["share_encoders"] else len(SERIES_TYPES))]
    head = FusionHeadConfig(config["fusion"], hidden=config["head_hidden"], num_heads=config["head_heads"],
                            dropout=config["dropout"], num_series=len(SERIES_TYPES),
                            features=series[0].num_features, sources=series[0].token_sources(volume_shape),
                            volume_shape=volume_shape, depth=config["head_depth"])
    return StudyModel(series, fusion_head(head, **kw), dtype=kw["dtype"])
