"""PyTorch peers of the two-stage default's models: what a PyTorch + timm user would write for the same
architecture (benchmarks/peers/crop_classifier.py, benchmarks/peers/localiser.py). The package never imports
them; `benchmarks.two_stage` times them against ours, and tests check that with our weights loaded they compute
the same outputs.

timm imports torchvision. The only torchvision wheel for torch 2.13 (0.28.0) is a CUDA build whose C extension
cannot load next to the CPU torch; its Python part then fails on `register_fake("torchvision::nms")` (the
op was never defined), a known torch/torchvision mismatch. `import_timm` defines the two op schemas the
import registers fake kernels for (nms, qnms) when that happens, so timm's model code imports; no
torchvision operator is used by the models here.
"""

from __future__ import annotations

import sys

_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def import_timm():
    """`import timm` on the CPU torch (module docstring) -> the timm module."""
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", _NMS_SCHEMA)
        import torchvision  # noqa: F401  (pyflakes: re-import after the op schemas exist)
    import timm

    return timm
