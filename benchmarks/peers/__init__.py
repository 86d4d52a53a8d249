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

import importlib
import sys
from collections.abc import Callable

_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def import_timm():
    """`import timm` on the CPU torch (module docstring) -> the timm module."""
    import torch

    try:
        importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", _NMS_SCHEMA)
        importlib.import_module("torchvision")  # again, now that the op schemas exist
    import timm

    return timm


def load_weights(peer, model) -> None:
    """Copy the parameters and BatchNorm statistics of our NNX `model` into its peer `peer`
    (`pretrained.torch_state_dict`: the peers mirror our module paths). ValueError listing every missing and
    unexpected key unless the two correspond exactly (BatchNorm's `num_batches_tracked` counters aside); torch
    checks the shapes."""
    import torch

    from lumbar_jax.models import pretrained

    state = {key: torch.tensor(value) for key, value in pretrained.torch_state_dict(model).items()}
    expected = {key for key in peer.state_dict() if not key.endswith("num_batches_tracked")}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(f"our {type(model).__name__} does not match {type(peer).__name__}: missing "
                         f"({len(missing)}): {', '.join(missing)}; unexpected ({len(unexpected)}): "
                         f"{', '.join(unexpected)}")
    peer.load_state_dict(state, strict=False)


def adamw_train_step(peer, loss: Callable, *, lr: float, weight_decay: float, grad_clip: float,
                     forward: Callable | None = None) -> Callable:
    """`step(*inputs) -> loss` (detached): one training step as a PyTorch user writes it: train mode, `loss(forward,
    *inputs)` (forward: `peer` itself, or e.g. `torch.compile(peer)`), backward, global-norm clipping to
    `grad_clip`, `torch.optim.AdamW` over every parameter (ours: optax.adamw; the peer keeps the rate constant
    where ours warms up and decays, which costs nothing per step)."""
    import torch

    forward = peer if forward is None else forward
    optimizer = torch.optim.AdamW(peer.parameters(), lr=lr, weight_decay=weight_decay)

    def step(*inputs):
        peer.train()
        optimizer.zero_grad(set_to_none=True)
        value = loss(forward, *inputs)
        value.backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), grad_clip)
        optimizer.step()
        return value.detach()

    return step


def parameter_count(peer) -> int:
    """Trainable parameter elements (BatchNorm statistics are buffers, as ours are not nnx.Param)."""
    return sum(p.numel() for p in peer.parameters() if p.requires_grad)
