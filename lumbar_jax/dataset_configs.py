"""The configs of the `rsna_lumbar_spine` dataset: name -> volume shape, which ones store a shared grid, and which
ones also store each series at its own resolution (the native volumes the two-stage pipeline crops from).

One table for the TFDS builder (its BUILDER_CONFIGS) and the run config (`data.config`, `model.volume_shape`).
It imports nothing heavy (no tensorflow_datasets), so that loading and validating a run config stays fast.
"""

from __future__ import annotations

from lumbar_jax import labels

# Dataset config -> [D, H, W] of every stored volume.
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "r64": (16, 64, 64),  # CPU runs, tests and the embedded synthetic demo
    "r128": (32, 128, 128),  # GPU runs, benchmarks
    "r256": (64, 256, 256),  # full-resolution GPU / TPU runs
    "grid32": (32, 32, 32),  # earlier system B (configs/baseline_vit3d_grid.py), CPU default
    "grid64": (64, 64, 64),  # earlier system B, mid-sized
    "grid128": (128, 128, 128),  # earlier system B as it was built (its `full` variant, GPU)
    "r64_native": (16, 64, 64),  # r64 + native volumes: two-stage pipeline on CPU, tests
    "r128_native": (32, 128, 128),  # r128 + native volumes: two-stage pipeline on GPU
}
# Configs whose three volumes share one patient-coordinate grid per study (data/grid.py): the series' axes are
# those of the grid, not their canonical layouts, which the spatial augmentations assume.
GRID_DATASETS = ("grid32", "grid64", "grid128")
# Configs whose records also hold every series at its own slices and pixel grid (NATIVE_VOLUMES, NATIVE_AFFINE;
# docs/conventions.md section 4) -> the cap on their in-plane sides, larger ones are resampled down (aspect kept).
NATIVE_MAX_SIZE: dict[str, int] = {
    "r64_native": 256,  # CPU: keeps the synthetic series (64-96 px) whole, halves 512 px Kaggle slices
    "r128_native": 512,  # GPU: keeps Kaggle slices up to 512 px whole, shrinks the rare larger ones
}
# Record features of the native volumes (uint8 [Dn, Hn, Wn], SERIES_TYPES order) and their affines (float32
# [3, 4, 4]: native voxel index (depth, row, col, 1) -> patient mm, LPS), only in NATIVE_MAX_SIZE configs.
NATIVE_VOLUMES = tuple(f"{name}_native" for name in labels.SERIES_TYPES)
NATIVE_AFFINE = "native_affine"
