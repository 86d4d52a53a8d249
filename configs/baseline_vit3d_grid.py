"""Earlier system B: a 3D ViT on one multi-series voxel grid per study.

  python -m lumbar_jax.main --config configs/baseline_vit3d_grid.py [--workdir runs/baseline_vit3d_grid]

The original: every series of a study resampled into ONE 3-channel volume in patient coordinates (channel =
series type), a 3D ViT with 16^3 patches, width 768, 12 blocks, CLS token, one classifier over the 25 targets
x 3 severities. It collapsed the labels to one majority label per study and reported 0.955 validation
accuracy: the share of that majority label, i.e. what a constant prediction scores. Here it is trained with
our loss (the competition metric as a loss, per target), cross-validation and metric, and shown next to the
class-prior baseline and the best constant.

Its scores, time and memory are in the README (Earlier systems).

Kept: the volume construction and the model. The `grid32` / `grid64` / `grid128` dataset configs (data/grid.py)
resample every series (trilinear) into one shared axis-aligned grid in patient coordinates (LPS) per study,
covering the union of the series' extents, N^3 voxels, axes in the sagittal layout (right -> left, superior ->
inferior, anterior -> posterior); absent series are all-zero channels (`present` False). The model
(models/baselines.py `GridViT`) reads `volumes [B, 3, N, N, N]` as the 3 channels of one volume: a 3D ViT with
cubic patches, CLS token, one linear layer to 25 x 3.
Ours: the metric loss per target instead of one majority label per study, the repo's optimiser settings (AdamW,
warmup + cosine, weight decay 0.05, clipping at 1), logit bias at the log class prior, best held-out checkpoint
per fold. No spatial augmentation: the per-series flips / shifts assume canonical layouts (config validation
refuses them on grid data); contrast / brightness jitter stays. The grid records' `coords` are normalised
coordinates in the grid (unused here: no target queries).

Variants (`--config configs/baseline_vit3d_grid.py:VARIANT`):
  (default)  CPU-sized, same budget as configs/vit_effnet_one_stage.py (320 steps of batch 12 per fold, 5 folds,
             seed 0, the same 300 synthetic studies), to fit that budget on a 2-core CPU: a 32^3 grid
             (`grid32`) instead of 128^3 with 8^3-voxel patches (each patch covers the same share of the grid
             as 16^3 of 64^3: 4^3 = 64 tokens instead of 8^3 = 512), and a ViT of width 192 (3 heads) with 6
             blocks instead of width 768 with 12. On `grid64` with 16^3 patches the patch embedding alone
             (12 x 64 x 12288 x 192 multiply-adds forward) makes a step about twice as slow, which would not
             fit the budget; on synthetic studies (field of view about 70 mm) a grid32 voxel is about 2.3 mm,
             a lumbar level about 5 voxels.
  full       the original: `grid128` (128^3), 16^3 patches, ViT-B (width 768, 12 blocks), batch 32, 3000
             steps, lr 3e-4, bfloat16 compute, EMA. GPU-sized.
  smoke      a few steps, 2 folds, few studies: the whole job end to end in about a minute.
"""

from lumbar_jax.train.config import DATASET_SHAPES, ConfigError, apply_variant, default_config

VARIANTS = (None, "smoke", "full")  # what get_config accepts (tests/test_configs.py)


def get_config(arg: str | None = None):
    config = default_config()
    config.data.config = "grid32"
    config.model.update(name="vit3d_grid", vit="vit_ti", vit_depth=6, patch=(8, 8, 8),
                        volume_shape=DATASET_SHAPES["grid32"])
    config.augment.update(flip_lr_prob=0.0, shift=0.0, scale=(1.0, 1.0))
    config.train.update(loss="metric", coord_loss_weight=0.0)
    if arg == "full":
        config.data.config = "grid128"
        config.model.update(vit="vit_b", vit_depth=0, patch=(16, 16, 16), volume_shape=DATASET_SHAPES["grid128"],
                            dtype="bfloat16")
        config.train.update(batch_size=32, eval_batch_size=64, steps=3000, warmup_steps=300, lr=3e-4,
                            eval_every=500, checkpoint_every=500, log_every=50, ema_decay=0.999)
        return config
    if arg not in (None, "", "smoke"):
        raise ConfigError(f"config variant {arg!r} unknown; use one of '', 'smoke', 'full'")
    return apply_variant(config, arg)
