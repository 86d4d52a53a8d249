"""timm as the reference of the pretrained-weight tests: import it on a CPU-only torch, build randomly initialised
models whose every parameter and BatchNorm statistic is non-trivial, and build our models abstractly.

timm imports torchvision. The only torchvision wheel for torch 2.13 (0.28.0) is a CUDA build whose C extension
cannot load next to the CPU torch; its Python part then fails on `register_fake("torchvision::nms")` (the
op was never defined) — a known torch/torchvision mismatch. `import_timm` defines the two op schemas the
import registers fake kernels for (nms, qnms) when that happens, so timm's model code imports; no
torchvision operator is used by the models here.
"""

from __future__ import annotations

import sys

import numpy as np
from flax import nnx

from lumbar_jax.models import pretrained

_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def import_timm():
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


def randomized(model, seed: int = 0):
    """A timm model in eval mode with random BatchNorm statistics and affine parameters, LayerNorm parameters,
    biases and class / position embeddings (timm initialises them to constants, which would hide a swapped
    mean / var or a missing bias)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                module.running_var.copy_(0.75 + 0.5 * torch.rand(n, generator=g))
                module.weight.copy_(0.75 + 0.5 * torch.rand(n, generator=g))
                module.bias.copy_(0.1 * torch.randn(n, generator=g))
            elif isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=g))
            elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and module.bias is not None:
                module.bias.copy_(0.05 * torch.randn(module.bias.shape, generator=g))
        for name, param in model.named_parameters():
            if name in ("cls_token", "pos_embed"):
                param.copy_(0.1 * torch.randn(param.shape, generator=g))
    return model.eval()


def numpy_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def torch_forward(fn, x_nhwc: np.ndarray) -> np.ndarray:
    """fn(torch NCHW input) as numpy, for a channels-last numpy input."""
    import torch

    with torch.no_grad():
        return fn(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def loaded(build, state, **kw):
    """`build()` abstractly (nnx.eval_shape: no slow eager initialisation), every parameter and statistic then
    loaded from `state`; eval mode. Fails if anything stayed abstract (the module must hold no RNG state)."""
    import jax

    module = nnx.eval_shape(build)
    pretrained.load_timm_weights(module, state, **kw)
    abstract = [leaf for leaf in jax.tree.leaves(nnx.state(module)) if isinstance(leaf, jax.ShapeDtypeStruct)]
    assert not abstract, f"{len(abstract)} variables were not loaded"
    module.eval()
    return module
