"""The default run config (every field commented) and its validation before any work starts.

Files under `configs/` start from `default_config()` and change what they need; `validate` refuses a bad
config with a ValueError that names the field, before data is generated or a model is built.
"""

from __future__ import annotations

import os

import ml_collections

from lumbar_jax.data import augment
from lumbar_jax.models import registry
from lumbar_jax.train.loss import LOSSES

DATASET_SHAPES = {"r64": (16, 64, 64), "r128": (32, 128, 128), "r256": (64, 256, 256),
                  "grid32": (32, 32, 32), "grid64": (64, 64, 64), "grid128": (128, 128, 128)}
# Dataset configs whose three volumes share one patient-coordinate grid per study (data/grid.py): the series'
# axes are those of the grid, not their canonical layouts, which the spatial augmentations assume.
GRID_DATASETS = ("grid32", "grid64", "grid128")


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # model init, dropout, data order and folds all derive from it

    c.data = ml_collections.ConfigDict()
    c.data.manual_dir = ""  # Kaggle competition folder (train.csv, train_images/); "" = not given
    c.data.data_dir = ""  # TFDS data dir with a built rsna_lumbar_spine; "" = build into the cache
    c.data.config = "r64"  # dataset builder config: r64 / r128 / r256 (volume size)
    c.data.cache_dir = "~/.cache/lumbar_jax"  # where the synthetic set and default builds live
    c.data.synthetic_studies = 300  # studies of the embedded synthetic set (used when no data is given)
    c.data.synthetic_seed = 0  # seed of the synthetic set
    c.data.build_workers = 0  # processes decoding DICOM during a build; 0 = every core
    c.data.worker_count = 0  # grain worker processes for the train pipeline; 0 = in-process

    c.augment = augment.default_config()
    # The CPU default trains 320 steps: spatial jitter there slows learning more than it regularises
    # (fold 0: 0.825 after 250 steps with shift 0.03 / zoom 0.05; 0.758 at step 250 without); the GPU variants
    # train about 10x longer and turn it back on.
    c.augment.shift = 0.0
    c.augment.scale = (1.0, 1.0)

    c.model = registry.default_model_config()
    c.model.patch = (4, 8, 8)  # 4x8x8 tubelets: 256 tokens per series, fine enough to tell the 5 levels apart
    c.model.head_hidden = 64  # the target-query head projects every token: its width dominates the CPU step
    c.model.effnet_pool = (1, 2, 2)  # the EfficientNet sees 16x32x32: 3.7x faster on CPU; the ViT keeps detail

    c.train = ml_collections.ConfigDict()
    c.train.loss = "metric"  # 'metric': the competition metric as a loss (train/loss.py); 'cross_entropy':
    #   plain unweighted cross-entropy over the labelled targets (the earlier systems'; needs coord_loss_weight 0)
    c.train.batch_size = 12  # global batch (all devices, all processes)
    c.train.eval_batch_size = 32  # global eval batch; the last one is padded and masked
    c.train.steps = 320  # optimizer steps per fold
    c.train.lr = 3e-3  # peak AdamW learning rate
    c.train.warmup_steps = 20  # linear warmup, then cosine decay to 0 at `steps`
    c.train.weight_decay = 0.05  # AdamW decoupled weight decay
    c.train.grad_clip = 1.0  # global-norm gradient clipping
    c.train.ema_decay = 0.0  # EMA of parameters for evaluation; 0 = off
    c.train.coord_loss_weight = 1.0  # weight of the label-coordinate supervision of the target queries; 0 = off
    c.train.coord_sigma = 0.08  # std (normalised volume units) of its Gaussian around each annotated point
    c.train.eval_every = 80  # steps between held-out evaluations (and best-checkpoint updates)
    c.train.checkpoint_every = 80  # steps between "latest" checkpoints (resume points)
    c.train.log_every = 10  # steps between metric log lines

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


class ConfigError(ValueError):
    """A config field that cannot work; the message starts with `config.<field>`."""


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field}: {message}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Refuse an impossible config before any work, naming the field."""
    _require(c.data.config in DATASET_SHAPES, "data.config", f"{c.data.config!r} is not one of {list(DATASET_SHAPES)}")
    if c.data.manual_dir:
        _require(os.path.isdir(c.data.manual_dir), "data.manual_dir", f"{c.data.manual_dir} is not a directory")
    _require(c.data.synthetic_studies >= 2 * c.cv.num_folds, "data.synthetic_studies",
             f"{c.data.synthetic_studies} is too few for {c.cv.num_folds} folds")
    _require(c.cv.num_folds >= 2, "cv.num_folds", "needs at least 2 folds")
    _require(-1 <= c.cv.fold < c.cv.num_folds, "cv.fold", f"{c.cv.fold} not in -1..{c.cv.num_folds - 1}")
    t = c.train
    for name in ("batch_size", "eval_batch_size", "steps", "eval_every", "checkpoint_every", "log_every"):
        _require(t[name] > 0, f"train.{name}", f"must be positive, got {t[name]}")
    _require(t.lr > 0, "train.lr", f"must be positive, got {t.lr}")
    _require(0 <= t.warmup_steps <= t.steps, "train.warmup_steps", f"must be in 0..train.steps ({t.steps})")
    _require(0 <= t.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
    _require(t.coord_loss_weight >= 0, "train.coord_loss_weight", f"must be >= 0, got {t.coord_loss_weight}")
    _require(t.coord_sigma > 0, "train.coord_sigma", f"must be positive, got {t.coord_sigma}")
    _require(t.coord_loss_weight == 0 or c.model.get("fusion", "target_query") == "target_query",
             "train.coord_loss_weight", f"needs model.fusion='target_query' (got {c.model.get('fusion')!r}); "
             "set it to 0 for the pooled heads")
    _require(t.coord_loss_weight == 0 or c.model.name not in registry.MODEL_NAMES  # (unknown: refused below)
             or registry.uses_query_attention(c.model), "train.coord_loss_weight",
             f"model {c.model.name!r} has no target queries to supervise; set it to 0")
    loss = t.get("loss", "metric")
    _require(loss in LOSSES, "train.loss", f"{loss!r} is not one of {LOSSES}")
    _require(loss == "metric" or t.coord_loss_weight == 0, "train.coord_loss_weight",
             f"must be 0 with train.loss={loss!r} (got {t.coord_loss_weight})")
    grid = c.data.config in GRID_DATASETS
    _require(grid or c.model.name != "vit3d_grid", "data.config",
             f"model.name='vit3d_grid' reads the three series as aligned channels: needs one of {GRID_DATASETS}, "
             f"got {c.data.config!r}")
    if grid:
        a = c.augment
        _require(a.flip_lr_prob == 0 and a.shift == 0 and tuple(a.scale) == (1.0, 1.0), "augment",
                 f"{c.data.config!r} volumes share one patient grid: the per-series spatial augmentations "
                 f"(flip_lr_prob {a.flip_lr_prob}, shift {a.shift}, scale {tuple(a.scale)}) assume canonical "
                 "layouts; set flip_lr_prob=0, shift=0, scale=(1, 1)")
    _require(tuple(c.model.volume_shape) == DATASET_SHAPES[c.data.config], "model.volume_shape",
             f"{tuple(c.model.volume_shape)} differs from the {c.data.config} volumes {DATASET_SHAPES[c.data.config]}")
    try:
        augment.validate_config(c.augment)
        registry.validate_model_config(c.model, check_files=True)  # pretrained weight files exist
    except ValueError as err:  # their messages already name `augment.<field>` / `model.<field>`
        raise ConfigError(f"config.{str(err).removeprefix('config.')}") from None


def check_dataset(c: ml_collections.ConfigDict, source) -> None:
    """The built dataset must hold volumes of the shape the model was configured for."""
    example = source[0]
    shape = tuple(example["sagittal_t2"].shape)
    _require(shape == tuple(c.model.volume_shape), "model.volume_shape",
             f"{tuple(c.model.volume_shape)} but the dataset's volumes are {shape}")


def apply_variant(c: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    """The shared `get_config(arg)` variants of configs/*.py: '' (CPU default), smoke, r128, r256."""
    if not variant:
        return c
    if variant == "smoke":  # the whole job end to end in about a minute
        c.data.synthetic_studies = 40
        c.cv.num_folds = 2
        c.train.update(batch_size=4, eval_batch_size=8, steps=6, warmup_steps=2, eval_every=3,
                       checkpoint_every=3, log_every=2)
    elif variant in ("r128", "r256"):  # GPU / TPU sized
        big = variant == "r256"
        c.data.config = variant
        c.model.update(volume_shape=DATASET_SHAPES[variant], patch=(8, 16, 16) if big else (4, 16, 16),
                       vit="vit_b" if big else "vit_s", effnet="effnet_b3" if big else "effnet_b0",
                       head_hidden=256, effnet_pool=(1, 1, 1), dtype="bfloat16")
        c.augment.update(shift=0.1, scale=(0.9, 1.1))
        c.train.update(batch_size=64 if big else 32, eval_batch_size=64, steps=3000, warmup_steps=300,
                       lr=3e-4, eval_every=500, checkpoint_every=500, log_every=50, ema_decay=0.999)
    else:
        raise ConfigError(f"config variant {variant!r} unknown; use one of '', 'smoke', 'r128', 'r256'")
    return c
