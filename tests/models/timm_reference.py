"""timm as the reference of the pretrained-weight tests: import it on a CPU-only torch (`import_timm`, shared
with the benchmark peers), build randomly initialised models whose every parameter and BatchNorm statistic is
non-trivial, and build our models abstractly.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from lumbar_jax.models import pretrained


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
