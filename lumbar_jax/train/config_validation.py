"""The checks of the run config (`lumbar_jax.train.config`), run once at the entry point, before any data is
generated or a model is built; after them the library trusts the config.

Every refusal is a ConfigError whose message starts with the field: `config.<section>.<field>: problem`.
`lumbar_jax.train.config.validate` is the entry; it passes the schema (`default_config()`) to
`validate_config`, so that this module does not import the schema it checks against.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import ml_collections

from lumbar_jax import rundir
from lumbar_jax.dataset_configs import DATASET_SHAPES, GRID_DATASETS, NATIVE_MAX_SIZE
from lumbar_jax.models import registry
from lumbar_jax.pipelines import NAMES as PIPELINES
from lumbar_jax.models.efficientnet import EFFNET_VARIANTS, PADDINGS
from lumbar_jax.models.heads import FUSIONS
from lumbar_jax.models.localiser import LOCALISER_VARIANTS
from lumbar_jax.models.pretrained import INFLATIONS, PRETRAINED_EFFNETS, PRETRAINED_VIT_PATCH, PRETRAINED_VITS
from lumbar_jax.models.vit import POOLS, VIT_VARIANTS
from lumbar_jax.train.loss import LOSSES

CROP_POINTS = ("predicted", "annotated")


class ConfigError(ValueError):
    """A config field that cannot work; the message starts with `config.<section>.<field>: `."""


def _require(ok: bool, field: str, problem: str) -> None:
    """Refuse the config unless `ok`: ConfigError `config.<field>: <problem>` (`field` = 'section.name')."""
    if not ok:
        raise ConfigError(f"config.{field}: {problem}")


def _value(c, field: str):
    section, _, name = field.rpartition(".")
    return (c[section] if section else c)[name]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choice(c, field: str, choices) -> None:
    value = _value(c, field)
    _require(value in tuple(choices), field, f"{value!r} is not one of {tuple(choices)}")


def _positive_int(c, field: str) -> None:
    value = _value(c, field)
    _require(_is_int(value) and value > 0, field, f"{value!r} is not a positive integer")


def _positive_ints(c, field: str, length: int) -> tuple[int, ...]:
    value = _value(c, field)
    ok = isinstance(value, (tuple, list)) and len(value) == length and all(_is_int(v) and v > 0 for v in value)
    _require(ok, field, f"{value!r} is not {length} positive integers")
    return tuple(value)


def _rate(c, field: str) -> None:
    value = _value(c, field)
    _require(_is_number(value) and 0.0 <= value < 1.0, field, f"{value!r} is not a rate in [0, 1)")


def _range(c, field: str) -> None:
    value = _value(c, field)
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_number(v) for v in value)
    _require(ok and 0.0 < value[0] <= value[1], field, f"must be (lo, hi) with 0 < lo <= hi, got {value!r}")


def check_fields(c, schema: ml_collections.ConfigDict, prefix: str = "") -> None:
    """Every field of `schema` is in `c` and nothing else is (a typo, or a field of another version)."""
    for name in c.keys():
        _require(name in schema, prefix + name, f"unknown field; valid fields: {tuple(schema.keys())}")
    for name in schema.keys():
        _require(name in c, prefix + name, "missing")
        if isinstance(schema[name], ml_collections.ConfigDict):
            _require(isinstance(c[name], Mapping | ml_collections.ConfigDict), prefix + name, "is not a section")
            check_fields(c[name], schema[name], f"{prefix}{name}.")


def validate_config(c, schema: ml_collections.ConfigDict, *, check_paths: bool = True) -> None:
    """Refuse an impossible run config `c`, naming the field. `schema`: the config every field must be in
    (`default_config()`). `check_paths`: also refuse a `data.manual_dir` that is not a directory and
    pretrained weight files that do not exist (training; a restored run reads neither)."""
    check_fields(c, schema)
    _require(_is_int(c.seed) and 0 <= c.seed < 2**32, "seed", f"{c.seed!r} is not an integer in [0, 2**32)")
    _choice(c, "pipeline", PIPELINES)
    _check_data_and_folds(c, check_paths)
    _check_train(c, check_paths)
    _check_augment(c)
    _check_model(c, check_paths)
    _check_combinations(c)
    if c.pipeline == "two_stage":
        _check_two_stage(c)


def _check_data_and_folds(c, check_paths: bool) -> None:
    if c.pipeline == "two_stage":  # offer only the dataset configs it reads
        _require(c.data.config in NATIVE_MAX_SIZE, "data.config",
                 f"{c.data.config!r}: pipeline='two_stage' cuts crops from native-resolution series: needs one of "
                 f"{tuple(NATIVE_MAX_SIZE)}")
    else:
        _choice(c, "data.config", DATASET_SHAPES)
    if check_paths and c.data.manual_dir:
        _require(os.path.isdir(c.data.manual_dir), "data.manual_dir", f"{c.data.manual_dir} is not a directory")
    _require(_is_int(c.cv.num_folds) and c.cv.num_folds >= 2, "cv.num_folds", "needs at least 2 folds")
    _require(_is_int(c.cv.fold) and -1 <= c.cv.fold < c.cv.num_folds, "fold",  # `fold`, as typed; cv.fold is its alias
             f"{c.cv.fold!r} is not a fold of this run: with cv.num_folds={c.cv.num_folds} use one of "
             f"0..{c.cv.num_folds - 1}, or -1 for every fold")
    _require(c.data.record_cache_mb >= 0, "data.record_cache_mb",
             f"must be >= 0 (0 = never), got {c.data.record_cache_mb}")
    _require(c.data.synthetic_studies >= 2 * c.cv.num_folds, "data.synthetic_studies",
             f"{c.data.synthetic_studies} is too few for {c.cv.num_folds} folds")


def _check_train(c, check_paths: bool) -> None:
    t = c.train
    _choice(c, "train.loss", LOSSES)
    for name in ("batch_size", "eval_batch_size", "steps", "eval_every", "checkpoint_every", "log_every"):
        _require(t[name] > 0, f"train.{name}", f"must be positive, got {t[name]}")
    _require(t.lr > 0, "train.lr", f"must be positive, got {t.lr}")
    _require(0 <= t.warmup_steps <= t.steps, "train.warmup_steps", f"must be in 0..train.steps ({t.steps})")
    _require(0 <= t.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
    _require(_is_number(t.label_smoothing) and 0 <= t.label_smoothing < 1, "train.label_smoothing",
             f"must be in [0, 1), got {t.label_smoothing!r}")
    _require(_is_number(t.drop_labels_below) and 0 < t.drop_labels_below < 1, "train.drop_labels_below",
             f"must be in (0, 1), got {t.drop_labels_below!r}")
    if check_paths and t.drop_labels_from:
        _require(os.path.isfile(rundir.oof_path(t.drop_labels_from)), "train.drop_labels_from",
                 f"{t.drop_labels_from} has no {rundir.OOF_FILE}: give the directory of a finished run")
    _require(t.coord_loss_weight >= 0, "train.coord_loss_weight", f"must be >= 0, got {t.coord_loss_weight}")
    _require(t.coord_sigma > 0, "train.coord_sigma", f"must be positive, got {t.coord_sigma}")


def _check_augment(c) -> None:
    a = c.augment
    _require(isinstance(a.enabled, bool), "augment.enabled", f"{a.enabled!r} is not a bool")
    _require(_is_number(a.flip_lr_prob) and 0.0 <= a.flip_lr_prob <= 1.0, "augment.flip_lr_prob",
             f"must be in [0, 1], got {a.flip_lr_prob!r}")
    _range(c, "augment.scale")
    _range(c, "augment.intensity_scale")
    for name in ("shift", "intensity_shift", "noise_std"):
        _require(_is_number(a[name]) and a[name] >= 0, f"augment.{name}", f"must be >= 0, got {a[name]!r}")


def _check_model(c, check_paths: bool) -> None:
    """The `model` section alone; fields of an encoder the model does not have are not looked at."""
    m = c.model
    _choice(c, "model.name", registry.MODEL_NAMES)
    encoders = registry.encoders_of(m)
    volume_shape = _positive_ints(c, "model.volume_shape", 3)
    if "vit" in encoders:
        _check_vit(c, volume_shape)
    if "effnet" in encoders:
        _choice(c, "model.effnet", EFFNET_VARIANTS)
        _choice(c, "model.effnet_padding", PADDINGS)
        pool = _positive_ints(c, "model.effnet_pool", 3)
        _require(not any(v % p for v, p in zip(volume_shape, pool)), "model.effnet_pool",
                 f"{pool} does not divide model.volume_shape {volume_shape}")
    _choice(c, "model.kernels", registry.KERNEL_SETTINGS)
    _require(isinstance(m.share_encoders, bool), "model.share_encoders", f"{m.share_encoders!r} is not a bool")
    _choice(c, "model.fusion", FUSIONS)
    _positive_int(c, "model.head_hidden")
    if m.fusion in ("attention", "target_query"):
        _positive_int(c, "model.head_heads")
        _require(m.head_hidden % m.head_heads == 0, "model.head_heads",
                 f"{m.head_heads} does not divide model.head_hidden {m.head_hidden}")
    if m.fusion == "target_query":
        _positive_int(c, "model.head_depth")
    _rate(c, "model.dropout")
    _rate(c, "model.drop_path")
    _choice(c, "model.dtype", registry.DTYPES)
    _choice(c, "model.param_dtype", registry.DTYPES)
    _check_pretrained(c, encoders, check_paths)


def _check_vit(c, volume_shape: tuple[int, ...]) -> None:
    m = c.model
    _choice(c, "model.vit", VIT_VARIANTS)
    patch = _positive_ints(c, "model.patch", 3)
    if m.name == "vit2d":
        image_size = _positive_ints(c, "model.image_size", 2)
        _require(patch[0] == 1 and not any(s % p for s, p in zip(image_size, patch[1:])), "model.patch",
                 f"{patch} is not (1, h, w) with h, w dividing model.image_size {image_size} (vit2d sees one slice)")
    else:
        _require(not any(v % p for v, p in zip(volume_shape, patch)), "model.patch",
                 f"{patch} does not divide model.volume_shape {volume_shape}")
    _require(_is_int(m.vit_depth) and m.vit_depth >= 0, "model.vit_depth",
             f"{m.vit_depth!r} is not a non-negative integer")
    _choice(c, "model.pool", POOLS)
    _rate(c, "model.encoder_dropout")


def _check_pretrained(c, encoders: tuple[str, ...], check_paths: bool) -> None:
    """`model.pretrained_vit`, `model.pretrained_effnet` (timm checkpoint files, models/pretrained.py) and
    `model.inflation`."""
    m = c.model
    _choice(c, "model.inflation", INFLATIONS)
    for field, kind, variants in (("pretrained_vit", "vit", PRETRAINED_VITS),
                                  ("pretrained_effnet", "effnet", PRETRAINED_EFFNETS)):
        path = m[field]
        _require(isinstance(path, str), f"model.{field}", f"{path!r} is not a path ('' = no pretrained weights)")
        if not path:
            continue
        _require(kind in encoders, f"model.{field}", f"set, but model.name={m.name!r} has no {kind} encoder")
        _require(m[kind] in variants, f"model.{kind}",
                 f"{m[kind]!r} has no timm ImageNet checkpoint (model.{field} is set); one of {variants}")
        if kind == "vit" and c.pipeline == "two_stage":
            _require(tuple(m.slice_patch) == PRETRAINED_VIT_PATCH, "model.slice_patch",
                     f"{tuple(m.slice_patch)}: a patch-16 checkpoint (model.pretrained_vit) needs [16, 16]")
        elif kind == "vit":
            _require(tuple(m.patch)[1:] == PRETRAINED_VIT_PATCH, "model.patch",
                     f"{tuple(m.patch)}: a patch-16 checkpoint (model.pretrained_vit) needs [d, 16, 16]")
        if kind == "effnet" and "efficientnet" in path.lower():
            tf_port = "tf_efficientnet" in path.lower()
            _require(tf_port == (m.effnet_padding == "same"), "model.effnet_padding",
                     f"{m.effnet_padding!r} does not fit {path}: timm tf_efficientnet_b* weights need 'same', "
                     "efficientnet_b* weights 'symmetric'")
        if check_paths:
            _require(os.path.isfile(os.path.expanduser(path)), f"model.{field}", f"{path} is not a file")


def _check_combinations(c) -> None:
    """Fields that are fine alone but not together (the sections are each valid by now)."""
    t, m = c.train, c.model
    if t.coord_loss_weight:
        _require(m.fusion == "target_query", "train.coord_loss_weight",
                 f"needs model.fusion='target_query' (got {m.fusion!r}); set it to 0 for the pooled heads")
        _require(registry.uses_query_attention(m), "train.coord_loss_weight",
                 f"model {m.name!r} has no target queries to supervise; set it to 0")
        _require(t.loss == "metric", "train.coord_loss_weight",
                 f"must be 0 with train.loss={t.loss!r} (got {t.coord_loss_weight})")
    grid = c.data.config in GRID_DATASETS
    _require(grid or m.name != "vit3d_grid", "data.config",
             f"model.name='vit3d_grid' reads the three series as aligned channels: needs one of {GRID_DATASETS}, "
             f"got {c.data.config!r}")
    if grid:  # the per-series spatial augmentations assume canonical layouts
        a = c.augment
        for name, neutral in (("flip_lr_prob", a.flip_lr_prob == 0), ("shift", a.shift == 0),
                              ("scale", tuple(a.scale) == (1.0, 1.0))):
            _require(neutral, f"augment.{name}", f"{a[name]!r}: {c.data.config!r} volumes share one patient "
                     "grid, and the per-series spatial augmentations assume canonical layouts; set "
                     "flip_lr_prob=0, shift=0, scale=(1, 1)")
    shape = DATASET_SHAPES[c.data.config]
    _require(tuple(m.volume_shape) == shape, "model.volume_shape",
             f"{tuple(m.volume_shape)} differs from the {c.data.config} volumes {shape}")


def check_dataset(c, source) -> None:
    """The built dataset must hold volumes of the shape the model was configured for."""
    shape = tuple(source[0]["sagittal_t2"].shape)
    _require(shape == tuple(c.model.volume_shape), "model.volume_shape",
             f"{tuple(c.model.volume_shape)} but the dataset's volumes are {shape}")


def _check_two_stage(c) -> None:
    """The localiser and crops sections, and what the two-stage pipeline needs of the others."""
    _require(c.model.name in registry.MODEL_ENCODERS, "model.name",
             f"pipeline='two_stage' reads crops with {tuple(registry.MODEL_ENCODERS)}, got {c.model.name!r}")
    _require(not c.train.coord_loss_weight, "train.coord_loss_weight",
             "must be 0 with pipeline='two_stage' (the localiser is trained on the coordinates instead)")
    loc = c.localiser
    _choice(c, "localiser.variant", LOCALISER_VARIANTS)
    for name in ("steps", "batch_size", "eval_every"):
        _positive_int(c, f"localiser.{name}")
    _require(_is_number(loc.lr) and loc.lr > 0, "localiser.lr", f"must be positive, got {loc.lr!r}")
    _require(_is_int(loc.warmup_steps) and 0 <= loc.warmup_steps <= loc.steps, "localiser.warmup_steps",
             f"must be in 0..localiser.steps ({loc.steps})")
    cr = c.crops
    for name in ("slices", "pixels"):
        _positive_int(c, f"crops.{name}")
    _require(_is_number(cr.size_mm) and cr.size_mm > 0, "crops.size_mm", f"must be positive, got {cr.size_mm!r}")
    _require(_is_number(cr.jitter_scale) and cr.jitter_scale >= 0, "crops.jitter_scale",
             f"must be >= 0, got {cr.jitter_scale!r}")
    _choice(c, "crops.points", CROP_POINTS)
    _require(_is_number(cr.tta_shift_mm) and 0 <= cr.tta_shift_mm < cr.size_mm / 2, "crops.tta_shift_mm",
             f"must be in [0, crops.size_mm / 2 = {cr.size_mm / 2:g}), got {cr.tta_shift_mm!r}")
    if "effnet" in registry.encoders_of(c.model):
        pool = tuple(c.model.effnet_pool)
        _require(pool[1] == pool[2] and cr.pixels % pool[1] == 0, "model.effnet_pool",
                 f"{pool}: with pipeline='two_stage' its [h, w] pools each crop slice, so h == w dividing "
                 f"crops.pixels {cr.pixels}")
    if "vit" in registry.encoders_of(c.model):
        patch = _positive_ints(c, "model.slice_patch", 2)
        _require(not any(cr.pixels % p for p in patch), "model.slice_patch",
                 f"{patch} does not divide crops.pixels {cr.pixels}")
