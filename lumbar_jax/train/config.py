"""The run config: its one schema (`default_config()`, every field with its meaning), the shared variants of
configs/*.py, and its validation before any work starts.

Files under `configs/` start from `default_config()` and change what they need. `validate` (the checks live
in config_validation.py) refuses a bad config with a ConfigError that names the field, once, at the entry
point (cross_validation.py for training, inference.py for a restored run); the library then trusts the config:
`models.create_model(config.model, ...)`, `data.pipeline.train_batches(..., augment_config=config.augment)`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping

import ml_collections

from lumbar_jax.dataset_configs import DATASET_SHAPES, GRID_DATASETS
from lumbar_jax.train.config_validation import ConfigError, check_dataset, validate_config

__all__ = ["DATASET_SHAPES", "GRID_DATASETS", "RESULT_NEUTRAL_FIELDS", "SPATIAL_JITTER", "ConfigError",
           "apply_two_stage_variant", "apply_variant", "changed_fields", "check_dataset", "default_config",
           "restore_config", "two_stage_config", "validate"]

# The spatial augmentation of the long (GPU-sized) runs; the CPU default trains without it (augment section).
SPATIAL_JITTER = dict(shift=0.1, scale=(0.9, 1.1))


def default_config() -> ml_collections.ConfigDict:
    """The schema: every field of every section, at the one-stage CPU settings (configs/vit_effnet_one_stage.py).
    `two_stage_config()` switches it to the default run's two-stage pipeline (configs/vit_effnet.py)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # model init, dropout, data order, augmentation and folds all derive from it; in [0, 2**32)
    c.pipeline = "one_stage"  # 'one_stage': the model reads whole volumes; 'two_stage': localiser, then crops
    c.data = _data_section()
    c.augment = _augment_section()
    c.model = _model_section()
    c.train = _train_section()
    c.localiser = _localiser_section()
    c.crops = _crops_section()

    c.compilation_cache = True  # keep compiled XLA programs in {data.cache_dir}/xla: later folds and runs load them

    c.cv = ml_collections.ConfigDict()
    c.cv.num_folds = 5  # stratified folds of the labelled studies
    c.fold = -1  # -1 = every fold; k = only fold k (to spread folds over machines); alias of cv.fold
    c.cv.fold = c.get_ref("fold")  # the same value: `--config.fold=k` and `--config.cv.fold=k` both work

    c.mesh = ml_collections.ConfigDict()
    c.mesh.num_devices = ml_collections.FieldReference(None, field_type=int)  # None = every device

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ml_collections.FieldReference(None, field_type=str)  # host:port of process 0
    c.distributed.num_processes = ml_collections.FieldReference(None, field_type=int)  # None = single process / auto
    c.distributed.process_id = ml_collections.FieldReference(None, field_type=int)  # this process's index
    return c


def _data_section() -> ml_collections.ConfigDict:
    d = ml_collections.ConfigDict()
    d.manual_dir = ""  # Kaggle competition folder (train.csv, train_images/); "" = not given
    d.data_dir = ""  # TFDS data dir with a built rsna_lumbar_spine; "" = build into the cache
    d.config = "r64"  # dataset config, one of lumbar_jax.dataset_configs.DATASET_SHAPES (volume size)
    d.cache_dir = "~/.cache/lumbar_jax"  # where the synthetic set, default builds and compiled programs live
    d.synthetic_studies = 300  # studies of the embedded synthetic set (used when no data is given)
    d.synthetic_seed = 0  # seed of the synthetic set
    d.build_workers = 0  # processes decoding DICOM during a build; 0 = every core
    d.worker_count = 0  # grain worker processes for the train pipeline; 0 = in-process
    d.record_cache_mb = 1024  # keep the split's decoded records in memory (read once) if they fit; 0 = never
    return d


def _augment_section() -> ml_collections.ConfigDict:
    """Training augmentations (data/augment.py); every op is skipped when its setting is neutral. Spatial
    jitter (shift, scale) is off: the CPU default's 320 steps learn faster without it (README, Results); the
    long runs turn it on with SPATIAL_JITTER."""
    a = ml_collections.ConfigDict()
    a.enabled = True  # False: records pass unchanged
    a.flip_lr_prob = 0.5  # probability of a patient left/right mirror (labels and coordinates swapped too)
    a.shift = 0.0  # max |translation| per axis, as a fraction of that axis' extent (uniform, per series)
    a.scale = (1.0, 1.0)  # zoom factor range about the volume centre (> 1 magnifies), drawn per series
    a.intensity_scale = (0.8, 1.2)  # contrast factor range, about the volume's mean intensity
    a.intensity_shift = 0.1  # max |brightness offset|, as a fraction of the 0..255 range
    a.noise_std = 0.0  # std of additive Gaussian noise, as a fraction of the 0..255 range; 0 = off
    return a


def _model_section() -> ml_collections.ConfigDict:
    """The study model (models/registry.py `create_model`), or with `pipeline='two_stage'` the crop classifier
    (models/crop_classifier.py); fields of an encoder the model lacks are unused."""
    m = ml_collections.ConfigDict()
    m.name = "vit_effnet"  # 'vit' | 'effnet' | 'vit_effnet': encoders per series (two_stage: per crop slice);
    # 'vit2d' | 'vit3d_grid': one-stage baselines
    m.vit = "vit_cpu"  # ViT variant, one of models.vit.VIT_VARIANTS
    m.effnet = "effnet_cpu"  # EfficientNet variant, one of models.efficientnet.EFFNET_VARIANTS
    m.volume_shape = DATASET_SHAPES["r64"]  # [D, H, W] the model is built for: data.config's volume shape
    m.patch = (4, 8, 8)  # ViT tubelet [d, h, w], divides volume_shape; 4x8x8 = 256 tokens per r64 series
    m.slice_patch = (8, 8)  # two_stage only: ViT patch [h, w] of a crop slice; divides crops.pixels
    m.vit_depth = 0  # ViT blocks; 0 = the variant's own depth (> 0: a shallower ViT of the variant's width)
    m.image_size = (224, 224)  # vit2d only: [H, W] the middle sagittal T2 slice is resized to
    m.pool = "cls"  # ViT pooling: 'cls' token or 'mean' of the patch tokens
    m.share_encoders = True  # one encoder set for all 3 series types (run once on [B*3, ...]) or one per type
    m.fusion = "target_query"  # head: 'target_query' (25 queries over all tokens), 'attention' or 'concat_mlp'
    m.head_hidden = 64  # fusion head width; the target-query head projects every token, so it sets the CPU step
    m.head_heads = 4  # attention heads of the 'attention' / 'target_query' heads; divides head_hidden
    m.head_depth = 1  # cross-attention blocks of the 'target_query' head
    m.dropout = 0.1  # dropout rate in the fusion head
    m.encoder_dropout = 0.0  # dropout rate inside the ViT (after pos-embed, attention projection, MLP)
    m.drop_path = 0.1  # stochastic depth of the deepest encoder block (linear ramp from 0)
    m.dtype = "float32"  # compute dtype: 'float32' (CPU) or 'bfloat16' (GPU / TPU); logits stay float32
    m.param_dtype = "float32"  # parameter dtype ('float32' also under bfloat16 compute: mixed precision)
    m.kernels = "auto"  # convolution / attention kernels: 'cpu' | 'xla'; 'auto' = 'cpu' on the CPU backend, else 'xla'
    m.effnet_padding = "symmetric"  # EfficientNet padding: 'symmetric' (timm efficientnet_b*), 'same' (tf_*)
    m.effnet_pool = (1, 2, 2)  # average-pool [d, h, w] before the EfficientNet, CPU speed (two_stage: [h, w] per slice)
    m.pretrained_vit = ""  # timm ViT checkpoint file loaded when training starts (models/pretrained.py); "" = none
    m.pretrained_effnet = ""  # timm efficientnet_b* / tf_efficientnet_b* checkpoint file; "" = none
    m.inflation = "centre"  # pretrained 2D kernel -> 3D: 'centre' (middle depth slice) or 'average' (over depth)
    return m


def _train_section() -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    t.loss = "metric"  # 'metric' (the competition metric, train/loss.py) or 'cross_entropy' (coord_loss_weight 0)
    t.label_smoothing = 0.0  # metric loss against (1 - e) x label + e / 3 per grade: bounds confidence; 0 = off
    t.drop_labels_from = ""  # a finished run on the same dataset: train without the labels its OOF contradicts
    t.drop_labels_below = 0.2  # ... those whose OOF P(label) there is below this (train/noisy_labels.py)
    t.batch_size = 12  # global batch (all devices, all processes)
    t.eval_batch_size = 32  # global eval batch; the last one is padded and masked
    t.steps = 320  # optimizer steps per fold
    t.lr = 3e-3  # peak AdamW learning rate
    t.warmup_steps = 20  # linear warmup, then cosine decay to 0 at `steps`
    t.weight_decay = 0.05  # AdamW decoupled weight decay
    t.grad_clip = 1.0  # global-norm gradient clipping
    t.ema_decay = 0.0  # EMA of parameters for evaluation; 0 = off
    t.coord_loss_weight = 1.0  # weight of the label-coordinate supervision of the target queries; 0 = off
    t.coord_sigma = 0.08  # std (normalised volume units) of its Gaussian around each annotated point
    t.eval_every = 80  # steps between held-out evaluations (and best-checkpoint updates)
    t.checkpoint_every = 80  # steps between "latest" checkpoints (resume points)
    t.log_every = 10  # steps between metric log lines
    return t


def _localiser_section() -> ml_collections.ConfigDict:
    """Stage 1 of the two-stage pipeline (models/localiser.py): the 25 points from the low-resolution volumes.
    Trained in every fold before the crop classifier, on the fold's training studies; `train.grad_clip`,
    `train.weight_decay`, `train.log_every` and `train.checkpoint_every` apply to it too."""
    loc = ml_collections.ConfigDict()
    loc.variant = "loc_small"  # one of models.localiser.LOCALISER_VARIANTS (3D EfficientNet blocks + decoder)
    loc.steps = 200  # optimizer steps per fold
    loc.batch_size = 12  # global batch
    loc.lr = 3e-3  # peak AdamW learning rate (warmup, then cosine decay)
    loc.warmup_steps = 20  # linear warmup steps
    loc.eval_every = 100  # steps between held-out evaluations (best checkpoint = lowest median error)
    return loc


def _crops_section() -> ml_collections.ConfigDict:
    """The crops the two-stage classifier reads (data/crops.py): per target, neighbouring slices of its series
    at the series' own resolution, around the annotated point (training) or the localiser's (held out)."""
    cr = ml_collections.ConfigDict()
    cr.slices = 5  # K: slices per crop, centred on the point's slice, along the series' own slice axis
    cr.size_mm = 40.0  # in-plane side of a crop in mm (patient space)
    cr.pixels = 32  # P: in-plane samples per side; crops are uint8 [K, P, P]
    cr.jitter_scale = 1.0  # training jitter = this x the localiser's held-out error (std per group and axis)
    cr.points = "predicted"  # held-out crops at the fold's localiser's 'predicted' points, or 'annotated' ones
    cr.tta_shift_mm = 1.0  # held-out probabilities: mean over the crop and 4 moved +-this along rows / cols; 0 = 1 crop
    return cr


def validate(c: ml_collections.ConfigDict, *, check_paths: bool = True) -> None:
    """Refuse an impossible config before any work: ConfigError `config.<section>.<field>: problem` for an
    unknown or missing field, a bad value or an inconsistent combination. `check_paths=False` for a
    restored run: its data folder and pretrained weight files need not exist where it is evaluated."""
    validate_config(c, default_config(), check_paths=check_paths)


def restore_config(stored: Mapping) -> ml_collections.ConfigDict:
    """A run's stored config (the dict of its `config.json`) on this schema: `default_config()` updated with the
    stored values, so tuples are tuples again and fields the run's version did not have take their defaults,
    except `crops.tta_shift_mm`, which such runs did not have: 0 (one crop per target), as they were scored.
    The stored `model.conv_impl` of earlier versions becomes `model.kernels`, and the CPU-sized encoders' earlier
    names ('vit_tiny_test', 'effnet_tiny_test') their current ones. Validate the result."""
    renamed_variants = {"vit_tiny_test": "vit_cpu", "effnet_tiny_test": "effnet_cpu"}  # earlier name -> current
    stored = copy.deepcopy(dict(stored))
    model = stored.get("model")
    if isinstance(model, dict) and "conv_impl" in model:
        impl = model.pop("conv_impl")
        model.setdefault("kernels", {"slices": "cpu", "lax": "xla"}.get(impl, impl))
    if isinstance(model, dict):
        for field in ("vit", "effnet"):
            if isinstance(model.get(field), str):
                model[field] = renamed_variants.get(model[field], model[field])
    crops = stored.get("crops")
    if isinstance(crops, dict):
        crops.setdefault("tta_shift_mm", 0.0)  # runs before the field read one crop per target
    config = default_config()
    try:
        config.update(stored)
    except TypeError as err:  # ml_collections refuses a value of another type than the field's
        raise ConfigError(f"config: a stored value does not fit its field: {err}") from None
    return config


# The fields a re-run in the same workdir may change: they cannot change what is trained or how it scores
# (docs/conventions.md section 5). Every other field that differs from the stored config.json is refused.
RESULT_NEUTRAL_FIELDS = frozenset({
    "data.manual_dir", "data.data_dir", "data.cache_dir",  # where the data is: dataset.json checks its content hash
    "data.build_workers", "data.worker_count",  # worker processes (the data order is a function of seed and step)
    "data.record_cache_mb",  # whether decoded records are kept in memory: the same records either way
    "train.log_every",  # how often train metrics are logged
    "train.eval_batch_size",  # held-out batches are padded and masked: the same predictions
    "compilation_cache",  # whether compiled programs are cached
    "fold", "cv.fold",  # which folds this invocation trains (folds may run on different machines)
    "distributed.coordinator_address", "distributed.num_processes", "distributed.process_id",  # the job's layout
})


def changed_fields(stored: Mapping, config: ml_collections.ConfigDict) -> list[tuple[str, object, object]]:
    """(field, stored value, value in `config`) of every field outside RESULT_NEUTRAL_FIELDS whose value in `config`
    differs from the `stored` config.json (a dict; read as `restore_config` reads it), in schema order."""
    def flat(tree: Mapping, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, Mapping) else {prefix + key: value})
        return out

    old = flat(json.loads(restore_config(stored).to_json_best_effort()))
    new = flat(json.loads(config.to_json_best_effort()))
    fields = [*new, *(f for f in old if f not in new)]
    return [(f, old.get(f), new.get(f)) for f in fields if f not in RESULT_NEUTRAL_FIELDS and old.get(f) != new.get(f)]


def two_stage_config() -> ml_collections.ConfigDict:
    """`default_config()` switched to the two-stage pipeline: the localiser on the r64 volumes, then the crop
    classifier (model.name's 2D encoders per crop slice) on crops of the native series."""
    c = default_config()
    c.pipeline = "two_stage"
    c.data.config = "r64_native"
    c.train.coord_loss_weight = 0.0  # the localiser learns the coordinates; the classifier has no queries
    # the CPU budget (README: score vs steps); held out scored once, after the last step: on the cosine schedule
    # it was the best of the evaluations at steps 100, 200 and 300 in every fold of seed 0 (README, Results)
    c.train.update(steps=300, eval_every=300, checkpoint_every=100)
    c.train.update(lr=2e-3, warmup_steps=50)  # 3e-3 after 20 warm-up steps can leave the classifier at the prior
    c.train.label_smoothing = 0.05  # no held-out P(label) < 0.01 left on the embedded set (README, Results)
    c.localiser.update(steps=150, eval_every=150, lr=2e-2)  # the small localiser learns fastest at a high rate
    return c


def apply_variant(c: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    """The shared `get_config(arg)` variants of configs/*.py: '' (CPU default), smoke, r128, r256."""
    if not variant:
        return c
    if variant == "smoke":  # the whole job end to end on 40 studies: a few minutes, mostly compilation
        c.data.synthetic_studies = 40
        c.cv.num_folds = 2
        c.train.update(batch_size=4, eval_batch_size=8, steps=6, warmup_steps=2, eval_every=3,
                       checkpoint_every=3, log_every=2)
        c.localiser.update(batch_size=4, steps=6, warmup_steps=2, eval_every=3)
    elif variant in ("r128", "r256"):  # GPU / TPU sized
        big = variant == "r256"
        c.data.config = variant
        c.model.update(volume_shape=DATASET_SHAPES[variant], patch=(8, 16, 16) if big else (4, 16, 16),
                       vit="vit_b" if big else "vit_s", effnet="effnet_b3" if big else "effnet_b0",
                       head_hidden=256, effnet_pool=(1, 1, 1), dtype="bfloat16")
        c.augment.update(SPATIAL_JITTER)
        c.train.update(batch_size=64 if big else 32, eval_batch_size=64, steps=3000, warmup_steps=300,
                       lr=3e-4, eval_every=500, checkpoint_every=500, log_every=50, ema_decay=0.999)
    else:
        raise ConfigError(f"config variant {variant!r} unknown; use one of '', 'smoke', 'r128', 'r256'")
    return c


def apply_two_stage_variant(c: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    """The variants of configs/vit_effnet.py: '' (CPU default), smoke, and the GPU-sized r128, which reads
    r128_native records and 40 mm crops sampled to 64x64 (~0.6 mm/px) with ViT-S/16 patches per slice."""
    if variant not in (None, "", "smoke", "r128"):
        raise ConfigError(f"config variant {variant!r} unknown for the two-stage pipeline; use one of '', 'smoke', "
                          "'r128'")
    apply_variant(c, variant)
    if variant == "r128":
        c.data.config = "r128_native"
        c.crops.pixels = 64
        c.model.update(slice_patch=(16, 16), head_depth=2)
        c.localiser.update(batch_size=32, steps=1500, warmup_steps=150, lr=1e-3, eval_every=500)
    return c
