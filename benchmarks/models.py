"""Section `models`: PLACEHOLDER, to be filled by the engineer writing `lumbar_jax/models/`.

Nothing here measures anything yet: `run` returns the planned rows with status "not implemented", and
`train_step_consumption` returns None (the pipeline section then shows its peer as pending). No model code
lives here; this file only fixes where the measurements go and what they must return.

What to implement (same timing method as the rest of the suite, `benchmarks.common`):

`run(ctx)` -- lumbar_jax vs MONAI, CPU, batch 4 of 1 x 32 x 128 x 128 float32 (smoke: tiny shapes/variants):
    models: lumbar_jax `vit_s` (3D ViT) and `effnet_b0` (3D EfficientNet), built through
            `lumbar_jax.models.registry`, against `monai.networks.nets.ViT(in_channels=1, img_size=(32, 128, 128),
            patch_size=<same tubelet>, hidden_size=384, mlp_dim=1536, num_layers=12, num_heads=6,
            classification=True, num_classes=75)` and `monai.networks.nets.EfficientNetBN("efficientnet-b0",
            spatial_dims=3, in_channels=1, num_classes=75, pretrained=False)` (no weights are downloaded).
    rows (one per model, `common.row(..., unit="samples/s")`):
      - models.<name>.train_step: forward + backward + optimizer update (optax AdamW / torch.optim.AdamW),
        samples/s = 4 / step time. JAX: `jax.block_until_ready` on the new state; the first (compiling) call
        is warm-up, its time goes in the section's extra as compile_s. torch: `common.setup_torch()` first.
      - models.<name>.inference: forward only (jit / `torch.inference_mode()`), samples/s.
      - parameter counts side by side: section extra `params = {"vit_s": {"lumbar_jax": n, "monai": m}, ...}`
        and a Markdown line in `extra_md` (they are counts, not timings: no ratio target).
    Peer missing (`ctx.peer["available"]` False): peer cells `common.status(ctx.peer["reason"])`, lumbar_jax
    side still measured.

`train_step_consumption(ctx, volume_shape, batch_size)` -- the peer of the pipeline section: how many
    records/s the lumbar_jax train step consumes for records of `volume_shape` ([D, H, W], 3 series per record,
    the pipeline section's dataset config) at `batch_size`, i.e. batch_size / median step time of the default
    training model (`configs/` default) on this machine. Return a measurement dict as produced by
    `common.Timing(...).to_json()` with `items_per_repeat = batch_size` (records) plus `"model": <name>`; the
    pipeline section then reports pipeline records/s / train-step records/s (>= 1: the input pipeline keeps
    the step fed).
"""

from __future__ import annotations

from typing import Any

from benchmarks import common

PLANNED = (
    ("models.vit_s.train_step", "vit_s 3D train step, batch 4 of 1x32x128x128"),
    ("models.vit_s.inference", "vit_s 3D inference, batch 4 of 1x32x128x128"),
    ("models.effnet_b0.train_step", "effnet_b0 3D train step, batch 4 of 1x32x128x128"),
    ("models.effnet_b0.inference", "effnet_b0 3D inference, batch 4 of 1x32x128x128"),
)
NOT_IMPLEMENTED = "not implemented (placeholder)"


def train_step_consumption(ctx: common.Context, volume_shape: tuple[int, int, int],
                           batch_size: int) -> dict[str, Any] | None:
    """Records/s consumed by the lumbar_jax train step (see the module docstring); None until implemented."""
    del ctx, volume_shape, batch_size
    return None


def run(ctx: common.Context) -> dict[str, Any]:
    """The models section; for now the planned rows, every cell "not implemented"."""
    missing = common.status(NOT_IMPLEMENTED)
    rows = [common.row(row_id, name, "samples/s", missing, missing) for row_id, name in PLANNED]
    return {"status": "placeholder", "rows": rows, "peer_name": ctx.peer["name"],
            "summary": "Placeholder: model benchmarks (vit_s, effnet_b0 3D vs MONAI ViT / EfficientNetBN, "
                       "train step and inference, parameter counts) are not implemented yet; see "
                       "`benchmarks/models.py`."}
