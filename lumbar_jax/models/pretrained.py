"""ImageNet weights from a timm checkpoint file into the NNX encoders (2D as they are, 3D inflated). No downloads.

Sources: a file the user has, in timm's key layout,
- `.safetensors` (detected by content, whatever the name): read without torch, with the `safetensors` package's
  numpy API when it is installed, else with the small reader here (which also reads bfloat16 / float16);
- a PyTorch state dict (`.pth`, `.pt`, `.bin`): `torch.load(path, weights_only=True)`, which refuses any pickled
  object other than tensors and plain containers; a training checkpoint's `state_dict` (or `model`) entry and
  a DataParallel `module.` prefix are unwrapped.

Layouts (parameter names are timm's, see efficientnet.py / vit.py; torch conv `weight [out, in, *k]` = our
`kernel [*k, in, out]`, torch Linear `weight [out, in]` = our `kernel [in, out]`, BatchNorm running_mean /
running_var = our mean / var):
- EfficientNet B0-B7 (`effnet_b*`) from timm `efficientnet_b*` (model padding 'symmetric') or
  `tf_efficientnet_b*` (padding 'same'; BatchNorm epsilon 1e-3, set by the padding). Both have the same keys,
  so the padding must match the checkpoint (the config validation checks a path naming `tf_efficientnet`).
- ViT patch 16 (`vit_ti`, `vit_s`, `vit_b`, `vit_l`) from timm `vit_{tiny,small,base,large}_patch16_224`
  (class token, final `norm`: our pool 'cls'); a checkpoint without class token and with `fc_norm` (timm
  `class_token=False, global_pool='avg'`) loads into pool 'mean'.

3D models (kernels `[k_d, k_h, k_w, in, out]`) get the 2D kernels inflated over depth by an INFLATIONS rule:
- 'centre': the 2D kernel at depth index `k_d // 2`, zeros elsewhere (scenic ViViT's
  `central_frame_initializer`). Each output slice then sees only its own input slice: on a volume whose slices
  are all one image, every conv reproduces the 2D conv slice by slice, so the 3D EfficientNet's feature map
  at every depth and its pooled features equal the 2D model's on that image, exactly (no boundary effect).
- 'average': the 2D kernel repeated over depth and divided by `k_d` (I3D "inflation"; scenic's
  `average_frame_initializer`). On a depth-constant volume a conv gives the 2D output at depths whose window
  lies inside the volume; at the first / last depths the zero padding scales it down, and these boundary
  effects spread inwards layer by layer.
For the ViT tubelet embedding (no padding) both rules give the 2D patch embedding on a depth-constant volume.

Position embeddings: the checkpoint's square grid (14 x 14 for 224 px) is resized bilinearly (half-pixel
centres, antialiased when shrinking) to the model's (H, W) token grid, then, in 3D, tiled over the depth
tokens (the same 2D embedding at every depth; scenic ViViT's 'resize_tile'): depth order is left for
fine-tuning to learn. The class-token embedding is kept.

Input channels: the first conv (`conv_stem`, `patch_embed.proj`) is adapted to the model's input channels as
timm's `adapt_input_conv`: summed over RGB for 1 channel (a grey image then gives what the RGB model gives on
that grey image repeated 3 times), repeated and rescaled by 3 / C otherwise.

Heads: an encoder without classifier (every encoder of the study model) ignores the checkpoint's
`classifier.*` / `head.*`; a 2D model with a classifier loads it (`head=True`) or keeps its own (`head=False`).
The study model's fusion head is never touched.

Anything else that does not match (a missing or unexpected key, a shape that no rule above explains) raises
`PretrainedMismatchError` listing every missing and unexpected key and every shape mismatch with both shapes.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumbar_jax.models.efficientnet import EfficientNet
from lumbar_jax.models.vit import VisionTransformer

INFLATIONS = ("centre", "average")
# Encoder variants with a timm ImageNet counterpart (timm model names in the docstring above).
PRETRAINED_EFFNETS = tuple(f"effnet_b{i}" for i in range(8))
PRETRAINED_VITS = ("vit_ti", "vit_s", "vit_b", "vit_l")
PRETRAINED_VIT_PATCH = (16, 16)

# Our variable name -> timm's (the last path element of a module's variable).
_TIMM_NAMES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
_IGNORED_SUFFIXES = ("num_batches_tracked",)
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "I64": np.int64, "I32": np.int32, "I16": np.int16,
                       "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "F16": np.float16}


class PretrainedMismatchError(ValueError):
    """A checkpoint does not fit a model: the message lists missing / unexpected keys and shape mismatches."""


class LoadReport(NamedTuple):
    loaded: tuple[str, ...]  # checkpoint keys written into the model
    ignored: tuple[str, ...]  # checkpoint keys deliberately not used (classifier of a headless model, counters)


# ------------------------------------------------------------------------------------------------ reading


def _read_safetensors_fallback(path: str) -> dict[str, np.ndarray]:
    """The safetensors format (8-byte little-endian header size, JSON header, raw little-endian data), read
    with numpy; bfloat16 via ml_dtypes (a jax dependency)."""
    with open(path, "rb") as f:
        (size,) = np.frombuffer(f.read(8), "<u8")
        header = json.loads(f.read(int(size)))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] == "BF16":
            import ml_dtypes

            dtype = np.dtype(ml_dtypes.bfloat16)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype).reshape(info["shape"])
    return out


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        return _read_safetensors_fallback(path)
    try:
        return load_file(path)
    except (TypeError, ValueError, KeyError):  # e.g. bfloat16, which numpy lacks
        return _read_safetensors_fallback(path)


def _unwrap(obj, path: str) -> Mapping:
    """The state dict inside what torch.load returned: the dict itself, or its `state_dict` / `model` entry."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    return obj


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path} is a PyTorch file: reading it needs torch (pip install torch), or convert it "
                          "to .safetensors, which is read without torch") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: refused: it pickles objects other than tensors, which "
                         f"torch.load(weights_only=True) does not run ({first})") from None
    state = _unwrap(obj, path)
    if state and all(str(k).startswith("module.") for k in state):
        state = {str(k).removeprefix("module."): v for k, v in state.items()}
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.is_floating_point() and value.dtype != torch.float64:
                value = value.float()
            out[str(key)] = value.numpy()
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{timm key: array} of a checkpoint file: safetensors (by content) or a torch state dict (weights only)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return _read_safetensors(path)
    return _read_torch(path)


# ------------------------------------------------------------------------------------------------ rules


def inflate_kernel(kernel: np.ndarray, depth: int, rule: str) -> np.ndarray:
    """A 2D kernel `[k_h, k_w, in, out]` -> 3D `[depth, k_h, k_w, in, out]` by an INFLATIONS rule."""
    if rule not in INFLATIONS:
        raise ValueError(f"inflation {rule!r} is not one of {INFLATIONS}")
    if rule == "average":
        return np.repeat(kernel[None] / depth, depth, axis=0).astype(kernel.dtype)
    out = np.zeros((depth, *kernel.shape), kernel.dtype)
    out[depth // 2] = kernel
    return out


def adapt_input_channels(weight: np.ndarray, in_channels: int) -> np.ndarray:
    """A torch conv weight `[out, C, *k]` adapted to `in_channels` inputs as timm's `adapt_input_conv`: summed
    over C for 1 channel; else repeated over channels, cut to `in_channels` and scaled by C / in_channels."""
    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(axis=1, keepdims=True)
    reps = math.ceil(in_channels / c)
    return (np.tile(weight, (1, reps) + (1,) * (weight.ndim - 2))[:, :in_channels] * (c / in_channels)).astype(
        weight.dtype)


def resample_pos_embed_grid(grid: np.ndarray, target_grid) -> np.ndarray:
    """Square 2D grid embeddings `[g, g, E]` -> `[*target_grid, E]`: bilinear to the last two axes of
    `target_grid` (half-pixel centres, antialiased when shrinking), tiled over a leading depth axis."""
    *depth, h, w = (int(n) for n in target_grid)
    if grid.shape[:2] != (h, w):
        grid = np.asarray(jax.image.resize(grid, (h, w, grid.shape[-1]), "linear", antialias=True), grid.dtype)
    return np.broadcast_to(grid, (*depth, h, w, grid.shape[-1])).copy()


# ------------------------------------------------------------------------------------------------ loading


def _variables(module: nnx.Module) -> dict[str, nnx.Variable]:
    """{timm key: variable} of a module's parameters and BatchNorm statistics."""
    flat = nnx.to_flat_state(nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat)))
    out = {}
    for path, var in flat:
        *parents, leaf = (str(p) for p in path)
        out[".".join([*parents, _TIMM_NAMES.get(leaf, leaf) if parents else leaf])] = var
    return out


def _encoder_layout(module: nnx.Module) -> tuple[str, str, bool]:
    """(first conv key, classifier key prefix, has a classifier) of an encoder."""
    if isinstance(module, EfficientNet):
        return "conv_stem.weight", "classifier.", module.classifier is not None
    if isinstance(module, VisionTransformer):
        return "patch_embed.proj.weight", "head.", module.head is not None
    raise TypeError(f"no timm layout for a {type(module).__name__}; expected an EfficientNet or VisionTransformer")


def _torch_shape(key: str, shape: tuple[int, ...], src_ndim: int) -> tuple[int, ...]:
    """The checkpoint shape a model variable of `shape` needs (torch layout, 2D kernels)."""
    if not key.endswith(".weight") or len(shape) < 2:
        return shape
    if len(shape) == 2 and src_ndim == 2:  # Linear
        return shape[::-1]
    if len(shape) >= 3:  # conv [*k, in, out] -> [out, in, k_h, k_w]
        return (shape[-1], shape[-2], *shape[:-2][-2:])
    return shape


def _pos_embed(src: np.ndarray, module: VisionTransformer, has_cls: bool) -> np.ndarray | None:
    """The checkpoint's `pos_embed [1, prefix + g * g, E]` on the model's grid, or None if it has no square grid."""
    if src.ndim != 3 or src.shape[0] != 1:
        return None
    n, width = src.shape[1], src.shape[2]
    prefix = 1 if has_cls and math.isqrt(n - 1) ** 2 == n - 1 else 0
    g = math.isqrt(n - prefix)
    if g * g != n - prefix:
        return None
    patches = resample_pos_embed_grid(src[0, prefix:].reshape(g, g, width), module.grid).reshape(1, -1, width)
    if not module.num_prefix:
        return patches
    cls = src[:, :1] if prefix else np.zeros((1, 1, width), src.dtype)  # no class position stored: zeros
    return np.concatenate([cls, patches], axis=1)


def load_timm_weights(module: EfficientNet | VisionTransformer, state: str | os.PathLike | Mapping[str, np.ndarray],
                      *, inflation: str = "centre", head: bool = True, source: str | None = None) -> LoadReport:
    """Write a timm checkpoint into `module` (an EfficientNet or a VisionTransformer, 2D or 3D) in place.

    state: a checkpoint file (see `read_state_dict`) or its {timm key: array} dict.
    inflation: how 2D kernels become 3D ones (INFLATIONS; ignored for 2D models).
    head: with a classifier in the model, load the checkpoint's (True) or keep the model's own (False).
    source: how to name the checkpoint in errors (default: the path).
    Raises PretrainedMismatchError (missing / unexpected keys, shape mismatches) before writing anything.
    """
    if inflation not in INFLATIONS:
        raise ValueError(f"inflation {inflation!r} is not one of {INFLATIONS}")
    if not isinstance(state, Mapping):
        source = source or os.fspath(state)
        state = read_state_dict(state)
    source = source or "checkpoint"
    first_conv, head_prefix, has_head = _encoder_layout(module)
    targets = _variables(module)
    if not (has_head and head):
        targets = {k: v for k, v in targets.items() if not k.startswith(head_prefix)}
    ignored = {k for k in state
               if k.endswith(_IGNORED_SUFFIXES) or (k.startswith(head_prefix) and not (has_head and head))}
    available = {k: np.asarray(v) for k, v in state.items() if k not in ignored}

    missing = sorted(set(targets) - set(available))
    unexpected = sorted(set(available) - set(targets))
    mismatched, values = [], {}
    for key in sorted(set(targets) & set(available)):
        var = targets[key]
        value, problem = _timm_value(module, key, available[key], tuple(var.get_value().shape), first_conv,
                                     inflation, "cls_token" in state)
        if problem:
            mismatched.append(problem)
        else:
            values[key] = value.astype(var.get_value().dtype)
    if missing or unexpected or mismatched:
        raise _mismatch_error(module, source, missing, unexpected, mismatched)
    for key, value in values.items():
        targets[key].set_value(jnp.asarray(value))
    return LoadReport(tuple(sorted(values)), tuple(sorted(ignored)))


def _timm_value(module: nnx.Module, key: str, src: np.ndarray, shape: tuple[int, ...], first_conv: str,
                inflation: str, has_cls_token: bool) -> tuple[np.ndarray | None, str | None]:
    """(the checkpoint array `src` of `key` in the model's layout and `shape`, None) or (None, why it does not
    fit): position embeddings resampled, input channels adapted, torch conv/linear layouts transposed, 2D
    kernels inflated to 3D."""
    if key == "pos_embed":
        value = _pos_embed(src, module, has_cls_token)
        if value is None or value.shape != shape:
            return None, (f"{key}: checkpoint {tuple(src.shape)} vs model {shape} (resampled from a square "
                          f"grid; the width and the class token must match)")
        return value, None
    value = src
    if key == first_conv and src.ndim >= 3 and len(shape) >= 3 and src.shape[1] != shape[-2]:
        value = adapt_input_channels(value, shape[-2])
    if value.ndim >= 3 and key.endswith(".weight"):  # conv [out, in, *k] -> [*k, in, out]
        value = np.transpose(value, (*range(2, value.ndim), 1, 0))
        if len(shape) == value.ndim + 1:
            value = inflate_kernel(value, shape[0], inflation)
    elif value.ndim == 2 and key.endswith(".weight"):  # Linear [out, in] -> [in, out]
        value = value.T
    if value.shape != shape:
        torch_shape = _torch_shape(key, shape, src.ndim)
        return None, (f"{key}: checkpoint {tuple(src.shape)} vs model {torch_shape}"
                      + (f" (lumbar_jax {shape})" if torch_shape != shape else ""))
    return value, None


def _mismatch_error(module: nnx.Module, source: str, missing: list[str], unexpected: list[str],
                    mismatched: list[str]) -> PretrainedMismatchError:
    """One error listing every missing and unexpected key and every shape mismatch."""
    what = f"{type(module).__name__} {'3D' if _is_3d(module) else '2D'}"
    lines = [f"{source} does not match the {what} (timm layout):"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
    return PretrainedMismatchError("\n".join(lines))


def _is_3d(module: nnx.Module) -> bool:
    if isinstance(module, VisionTransformer):
        return len(module.grid) == 3
    return len(module.conv_stem.kernel.get_value().shape) == 5


def torch_state_dict(module: nnx.Module) -> dict[str, np.ndarray]:
    """The PyTorch-layout state dict of any module (parameters and BatchNorm statistics): keys are the module
    paths joined by '.', with timm's leaf names (kernel / scale -> weight, mean / var -> running_mean /
    running_var); conv kernels `[*k, in, out]` -> `[out, in, *k]` (2D or 3D), Linear kernels `[in, out]` ->
    `[out, in]`. A torch module whose attribute names mirror ours loads it with `load_state_dict`
    (benchmarks/peers)."""
    out = {}
    for key, var in _variables(module).items():
        value = np.asarray(var.get_value())
        if key.endswith(".weight") and value.ndim >= 3:
            value = np.transpose(value, (value.ndim - 1, value.ndim - 2, *range(value.ndim - 2)))
        elif key.endswith(".weight") and value.ndim == 2:
            value = value.T
        out[key] = np.ascontiguousarray(value)
    return out


def timm_state_dict(module: EfficientNet | VisionTransformer) -> dict[str, np.ndarray]:
    """The timm-layout state dict of a 2D encoder (the inverse of `load_timm_weights` for 2D models): for
    exporting, and for tests that need a checkpoint of a variant timm does not have."""
    if _is_3d(module):
        raise ValueError("timm_state_dict exports 2D encoders only")
    return torch_state_dict(module)


# ------------------------------------------------------------------------------------------------ models


def apply_pretrained(model, cfg: Mapping) -> dict[str, LoadReport]:
    """Load `cfg['pretrained_vit']` / `cfg['pretrained_effnet']` (a validated model section) with
    `cfg['inflation']` into every series encoder of a study model (`model.encoders`), or into the `vit` of a
    baseline model; heads keep their initialisation. A ViT shallower than its variant (`cfg['vit_depth']`)
    takes the checkpoint's first blocks. -> {field: LoadReport of the first encoder}."""
    reports = {}
    holders = getattr(model, "encoders", None) or [model]
    for field, kind in (("pretrained_vit", "vit"), ("pretrained_effnet", "effnet")):
        path = cfg[field]
        if not path:
            continue
        state = read_state_dict(os.path.expanduser(path))
        depth = cfg["vit_depth"] if kind == "vit" else 0
        if depth:
            state = {k: v for k, v in state.items()
                     if not (k.startswith("blocks.") and int(k.split(".")[1]) >= depth)}
        for holder in holders:
            module = getattr(holder, kind, None)
            if module is None:
                raise ValueError(f"model.{field}: the model has no {kind} encoder to load it into")
            report = load_timm_weights(module, state, inflation=cfg["inflation"], source=f"model.{field} ({path})")
            reports.setdefault(field, report)
    return reports
