"""Earlier system A: a 2D ViT that sees ONE slice per study, the middle sagittal T2 slice.

  python -m lumbar_jax.main --config configs/baseline_vit2d.py [--workdir runs/baseline_vit2d]

The original: ViT-B/16 at 224 x 224 on the middle slice of the Sagittal T2/STIR series (the grey image
repeated over 3 channels), one 3-way classifier per target (a linear layer from the CLS token to 25 x 3
logits), plain unweighted cross-entropy, AdamW lr 1e-4. It reported 95.69 % training accuracy: about what
predicting Normal/Mild for every target gives (most labels are Normal/Mild), so that number says nothing about
whether it read the images. Here it is trained and scored like every other model: 5 folds, held-out
competition score next to the class-prior baseline and the best constant, balanced accuracy.

Its scores, time and memory are in the README (Earlier systems).

Kept: the input (one slice: canonical depth index D // 2 of the record's `sagittal_t2` volume, i.e. the
mid-sagittal plane of the series resampled along right -> left; for an even D the first slice past the
centre), repeated over 3 channels; a 2D ViT (vit.VisionTransformer, 2D) with CLS pooling; one linear layer to
25 x 3; plain unweighted cross-entropy over the labelled targets (`train.loss = 'cross_entropy'`, no coordinate
loss); AdamW at peak lr 1e-4. The slice extraction and resize live in the model (models/baselines.py
`SliceViT`), so the data path is the normal one (`r64` / `r256` records).
Ours, as for every model (the original's settings for these are unknown): linear warmup + cosine decay,
weight decay 0.05, gradient clipping at 1, logit bias started at the training fold's log class prior, the
best held-out checkpoint per fold, the default augmentations (patient left/right mirror with the labels
swapped, which moves the middle slice by one for an even D; contrast / brightness jitter).

Variants (`--config configs/baseline_vit2d.py:VARIANT`):
  (default)  CPU-sized, same data and budget as configs/vit_effnet_one_stage.py (r64, 320 steps of batch 12 per fold,
             5 folds, seed 0). Differs from the original in the model only, to fit that budget on a 2-core
             CPU: the slice is used at the r64 records' own 64 x 64 (resizing it to 224 adds no information,
             only tokens) with 8 x 8 patches (8 x 8 = 64 tokens instead of 14 x 14), and the ViT has ViT-Ti's
             width (192, 3 heads) and 6 blocks instead of ViT-B (768 wide, 12 blocks).
  full       the original model: ViT-B/16 at 224 x 224, on r256 records (the 256 x 256 slice resized to 224),
             batch 32, 3000 steps, bfloat16 compute, EMA, spatial jitter on. GPU-sized.
  smoke      a few steps, 2 folds, few studies: the whole job end to end in about a minute.
"""

from lumbar_jax.train.config import DATASET_SHAPES, SPATIAL_JITTER, ConfigError, apply_variant, default_config

VARIANTS = (None, "smoke", "full")  # what get_config accepts (tests/test_configs.py)


def get_config(arg: str | None = None):
    config = default_config()
    config.model.update(name="vit2d", vit="vit_ti", vit_depth=6, patch=(1, 8, 8), image_size=(64, 64),
                        volume_shape=DATASET_SHAPES["r64"])
    config.train.update(loss="cross_entropy", coord_loss_weight=0.0, lr=1e-4)
    if arg == "full":
        config.data.config = "r256"
        config.model.update(vit="vit_b", vit_depth=0, patch=(1, 16, 16), image_size=(224, 224),
                            volume_shape=DATASET_SHAPES["r256"], dtype="bfloat16")
        config.augment.update(SPATIAL_JITTER)
        config.train.update(batch_size=32, eval_batch_size=64, steps=3000, warmup_steps=300, eval_every=500,
                            checkpoint_every=500, log_every=50, ema_decay=0.999)
        return config
    if arg not in (None, "", "smoke"):
        raise ConfigError(f"config variant {arg!r} unknown; use one of '', 'smoke', 'full'")
    return apply_variant(config, arg)
