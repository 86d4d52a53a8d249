"""Build a study model from the `model` config section; validate that section without building anything.

Example `model` section (every field; values other than `name` are the defaults, see MODEL_FIELDS):

    model = dict(
        name='vit_effnet',          # 'vit' | 'effnet' | 'vit_effnet': which encoders see each series;
                                    #   'vit2d' | 'vit3d_grid': the earlier systems (models/baselines.py)
        vit='vit_tiny_test',        # ViT variant (vit.VIT_VARIANTS), when name uses a ViT
        effnet='effnet_tiny_test',  # EfficientNet variant (efficientnet.EFFNET_VARIANTS), when name uses one
        volume_shape=(16, 64, 64),  # [D, H, W] of the training volumes (= dataset config); ViT pos-embed grid
        patch=(4, 16, 16),          # ViT tubelet [d, h, w]; must divide volume_shape
        vit_depth=0,                # ViT blocks; 0 = the variant's own depth
        image_size=(224, 224),      # vit2d: [H, W] its middle sagittal T2 slice is resized to
        pool='cls',                 # ViT pooling: 'cls' token or 'mean' of patch tokens
        share_encoders=True,        # one encoder set for all 3 series types (run once on [B*3, ...]) or 3 sets
        fusion='target_query',      # fusion head: 'target_query' (25 queries over all spatial tokens),
                                    #   'attention' (one query over pooled series vectors) or 'concat_mlp'
        head_hidden=256,            # fusion head width (attention tokens / MLP hidden units)
        head_heads=4,               # attention heads of the attention fusions (must divide head_hidden)
        head_depth=1,               # cross-attention blocks of the 'target_query' fusion
        dropout=0.1,                # dropout in the fusion head
        encoder_dropout=0.0,        # dropout inside the ViT (after pos-embed, attention proj, MLP)
        drop_path=0.1,              # stochastic depth of the deepest encoder block (linear ramp from 0)
        dtype='float32',            # compute dtype: 'float32' (CPU) or 'bfloat16' (GPU/TPU); logits float32
        param_dtype='float32',      # parameter dtype (keep float32 for mixed precision)
        conv_impl='auto',           # EfficientNet convs: 'auto' (shifted slices on CPU, lax on GPU/TPU),
                                    #   'slices' or 'lax' (see layers.py)
        effnet_padding='symmetric', # 'symmetric' (timm efficientnet_b*) or 'same' (TF, tf_efficientnet_b*)
        effnet_pool=(1, 1, 1),      # average-pool window [d, h, w] of the EfficientNet's input (CPU speed)
        pretrained_vit='',          # timm ViT checkpoint file (vit_{tiny,small,base}_patch16_224) loaded into
                                    #   the ViT when training starts; '' = random init (see pretrained.py)
        pretrained_effnet='',       # timm efficientnet_b* / tf_efficientnet_b* checkpoint file; '' = none
        inflation='centre',         # 2D kernel -> 3D: 'centre' (middle depth slice) or 'average' (over depth)
    )
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

from lumbar_jax.labels import SERIES_TYPES
from lumbar_jax.models import baselines, pretrained
from lumbar_jax.models.efficientnet import EFFNET_VARIANTS, PADDINGS, EfficientNet
from lumbar_jax.models.fused import SeriesEncoder, StudyModel
from lumbar_jax.models.heads import FUSIONS, fusion_head
from lumbar_jax.models.layers import CONV_IMPLS
from lumbar_jax.models.vit import POOLS, VIT_VARIANTS, VisionTransformer

# Model name -> the encoders each series goes through (their features are concatenated).
MODEL_ENCODERS = {"vit": ("vit",), "effnet": ("effnet",), "vit_effnet": ("vit", "effnet")}
# The earlier systems of issue 9 (models/baselines.py): one ViT each, CLS token -> linear head; no fusion head.
BASELINE_MODELS = baselines.BASELINE_MODELS
MODEL_NAMES = tuple(MODEL_ENCODERS) + BASELINE_MODELS
DTYPES = ("float32", "bfloat16")

# field -> (default, meaning). `name` has no default.
MODEL_FIELDS: dict[str, tuple[Any, str]] = {
    "name": (None, f"model: one of {MODEL_NAMES}"),
    "vit": ("vit_tiny_test", f"ViT variant, one of {tuple(VIT_VARIANTS)} (used when name has a ViT)"),
    "effnet": ("effnet_tiny_test", f"EfficientNet variant, one of {tuple(EFFNET_VARIANTS)}"),
    "volume_shape": ((16, 64, 64), "[D, H, W] of the training volumes; the ViT position-embedding grid"),
    "patch": ((4, 16, 16), "ViT tubelet [d, h, w]; must divide volume_shape (vit2d: (1, h, w) over image_size)"),
    "vit_depth": (0, "ViT blocks; 0 = the variant's own depth (a shallower ViT of the variant's width)"),
    "image_size": ((224, 224), "vit2d only: [H, W] the middle sagittal T2 slice is resized to (the 2D ViT input)"),
    "pool": ("cls", f"ViT pooling, one of {POOLS}"),
    "share_encoders": (True, "one encoder set for all series types (True) or one per series type"),
    "fusion": ("target_query", f"fusion head, one of {FUSIONS}"),
    "head_hidden": (256, "fusion head width"),
    "head_heads": (4, "attention heads of the attention fusions; must divide head_hidden"),
    "head_depth": (1, "cross-attention blocks of the 'target_query' fusion"),
    "dropout": (0.1, "dropout rate in the fusion head"),
    "encoder_dropout": (0.0, "dropout rate inside the ViT"),
    "drop_path": (0.1, "stochastic depth rate of the deepest encoder block"),
    "dtype": ("float32", f"compute dtype, one of {DTYPES}; logits are float32"),
    "param_dtype": ("float32", f"parameter dtype, one of {DTYPES}"),
    "conv_impl": ("auto", f"EfficientNet convolution implementation, one of {CONV_IMPLS}"),
    "effnet_padding": ("symmetric", f"EfficientNet conv padding, one of {PADDINGS}"),
    "effnet_pool": ((1, 1, 1), "average-pool window [d, h, w] of the EfficientNet's input; must divide volume_shape"),
    "pretrained_vit": ("", "timm ViT checkpoint file (.safetensors or torch state dict) loaded when training starts; "
                           "'' = none"),
    "pretrained_effnet": ("", "timm efficientnet_b* / tf_efficientnet_b* checkpoint file; '' = none"),
    "inflation": ("centre", f"how pretrained 2D kernels become 3D, one of {pretrained.INFLATIONS}"),
}


def default_model_config(name: str = "vit_effnet") -> ml_collections.ConfigDict:
    """A `model` section with every field at its default."""
    config = {field: default for field, (default, _) in MODEL_FIELDS.items()}
    return ml_collections.ConfigDict({**config, "name": name})


def _fail(field: str, problem: str):
    raise ValueError(f"model.{field}: {problem}")


def _choice(cfg: dict, field: str, choices) -> None:
    if cfg[field] not in tuple(choices):
        _fail(field, f"{cfg[field]!r} is not one of {tuple(choices)}")


def _int_tuple(cfg: dict, field: str, length: int) -> tuple[int, ...]:
    value = cfg[field]
    if (not isinstance(value, (tuple, list)) or len(value) != length
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        _fail(field, f"{value!r} is not {length} positive integers")
    return tuple(value)


def _positive_int(cfg: dict, field: str) -> None:
    value = cfg[field]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        _fail(field, f"{value!r} is not a positive integer")


def _rate(cfg: dict, field: str) -> None:
    value = cfg[field]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        _fail(field, f"{value!r} is not a rate in [0, 1)")


def validate_model_config(config: ml_collections.ConfigDict | Mapping, check_files: bool = False) -> dict:
    """The `model` section with defaults filled in, checked without building anything (cheap: call it before
    any data or device work). ValueError naming the offending `model.<field>` for an unknown field, a missing
    name, a bad value or an inconsistent combination (e.g. a patch that does not divide volume_shape).
    `check_files`: also refuse pretrained weight paths that are not files (before training)."""
    given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    for field in given:
        if field not in MODEL_FIELDS:
            raise ValueError(f"model.{field}: unknown field; valid fields: {tuple(MODEL_FIELDS)}")
    cfg = {field: default for field, (default, _) in MODEL_FIELDS.items()} | given
    _choice(cfg, "name", MODEL_NAMES)
    encoders = MODEL_ENCODERS.get(cfg["name"], ("vit",))  # a baseline is one ViT
    cfg["volume_shape"] = volume_shape = _int_tuple(cfg, "volume_shape", 3)
    if "vit" in encoders:
        _choice(cfg, "vit", VIT_VARIANTS)
        cfg["patch"] = patch = _int_tuple(cfg, "patch", 3)
        if cfg["name"] == "vit2d":
            cfg["image_size"] = image_size = _int_tuple(cfg, "image_size", 2)
            if patch[0] != 1 or any(s % p for s, p in zip(image_size, patch[1:])):
                _fail("patch", f"{patch} is not (1, h, w) with h, w dividing model.image_size {image_size} "
                               "(vit2d sees one slice)")
        elif any(v % p for v, p in zip(volume_shape, patch)):
            _fail("patch", f"{patch} does not divide model.volume_shape {volume_shape}")
        if not isinstance(cfg["vit_depth"], int) or isinstance(cfg["vit_depth"], bool) or cfg["vit_depth"] < 0:
            _fail("vit_depth", f"{cfg['vit_depth']!r} is not a non-negative integer")
        _choice(cfg, "pool", POOLS)
        _rate(cfg, "encoder_dropout")
    if "effnet" in encoders:
        _choice(cfg, "effnet", EFFNET_VARIANTS)
        _choice(cfg, "conv_impl", CONV_IMPLS)
        _choice(cfg, "effnet_padding", PADDINGS)
        cfg["effnet_pool"] = pool = _int_tuple(cfg, "effnet_pool", 3)
        if any(v % p for v, p in zip(volume_shape, pool)):
            _fail("effnet_pool", f"{pool} does not divide model.volume_shape {volume_shape}")
    if not isinstance(cfg["share_encoders"], bool):
        _fail("share_encoders", f"{cfg['share_encoders']!r} is not a bool")
    _choice(cfg, "fusion", FUSIONS)
    _positive_int(cfg, "head_hidden")
    if cfg["fusion"] in ("attention", "target_query"):
        _positive_int(cfg, "head_heads")
        if cfg["head_hidden"] % cfg["head_heads"]:
            _fail("head_heads", f"{cfg['head_heads']} does not divide model.head_hidden {cfg['head_hidden']}")
    if cfg["fusion"] == "target_query":
        _positive_int(cfg, "head_depth")
    _rate(cfg, "dropout")
    _rate(cfg, "drop_path")
    _choice(cfg, "dtype", DTYPES)
    _choice(cfg, "param_dtype", DTYPES)
    pretrained.validate_pretrained_fields(cfg, encoders, check_files)
    return cfg


def uses_query_attention(config: ml_collections.ConfigDict | Mapping) -> bool:
    """Whether the model of a `model` section has target queries (a study model with the 'target_query'
    fusion head): what the coordinate loss and the attention-peak metrics read."""
    return config["name"] in MODEL_ENCODERS and config.get("fusion", "target_query") == "target_query"


def create_model(config: ml_collections.ConfigDict | Mapping, rngs: nnx.Rngs, load_pretrained: bool = False
                 ) -> StudyModel:
    """The model named by `config.name` (a validated `model` section): `model(volumes [B, 3, D, H, W],
    present [B, 3]) -> logits [B, 25, 3]`. Built in training mode; call `model.eval()` for inference.
    A BASELINE_MODELS name gives a models.baselines model (same call, `head.set_output_bias`; no fusion head).
    `load_pretrained`: load `pretrained_vit` / `pretrained_effnet` into the encoders (training start; the
    heads keep their initialisation)."""
    cfg = validate_model_config(config)
    kw = dict(dtype=jnp.dtype(cfg["dtype"]), param_dtype=jnp.dtype(cfg["param_dtype"]), rngs=rngs)
    vit_variant = VIT_VARIANTS[cfg["vit"]]
    if cfg["vit_depth"]:
        vit_variant = vit_variant._replace(depth=cfg["vit_depth"])
    if cfg["name"] in BASELINE_MODELS:
        model = baselines.create_baseline(cfg, vit_variant, **kw)
        if load_pretrained:
            pretrained.apply_pretrained(model, cfg)
        return model
    encoders = MODEL_ENCODERS[cfg["name"]]

    def series_encoder() -> SeriesEncoder:
        vit = effnet = None
        if "vit" in encoders:
            vit = VisionTransformer(vit_variant, input_shape=cfg["volume_shape"], patch=cfg["patch"], pool=cfg["pool"],
                                    dropout=cfg["encoder_dropout"], drop_path=cfg["drop_path"], **kw)
        if "effnet" in encoders:
            effnet = EfficientNet(cfg["effnet"], ndim=3, drop_path=cfg["drop_path"], padding=cfg["effnet_padding"],
                                  conv_impl=cfg["conv_impl"], **kw)
        return SeriesEncoder(vit, effnet, cfg["effnet_pool"])

    series = [series_encoder() for _ in range(1 if cfg["share_encoders"] else len(SERIES_TYPES))]
    head = fusion_head(cfg["fusion"], series[0].num_features, len(SERIES_TYPES), hidden=cfg["head_hidden"],
                       num_heads=cfg["head_heads"], dropout=cfg["dropout"],
                       sources=series[0].token_sources(cfg["volume_shape"]), volume_shape=cfg["volume_shape"],
                       depth=cfg["head_depth"], **kw)
    model = StudyModel(series, head, dtype=kw["dtype"])
    if load_pretrained:
        pretrained.apply_pretrained(model, cfg)
    return model
