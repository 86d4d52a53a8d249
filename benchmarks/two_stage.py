"""Section `two_stage`: the default's two models against their PyTorch + timm peers (benchmarks/peers).

The default (`configs/vit_effnet.py`; smoke: `:smoke`) at its own shapes and batch sizes, CPU, float32:
  - localiser (`localiser.variant`, r64 volumes 3 x 16x64x64): train step (forward, `localiser_loss`,
    backward, AdamW) at `localiser.batch_size`; inference (eval mode, with the left/right flip averaged in, as
    training's held-out evaluation and predict.py run it) at `train.eval_batch_size`;
  - crop classifier (`model.vit` + `model.effnet` per crop slice, crops 25 x K x P x P): train step (forward,
    the metric loss, backward, AdamW) at `train.batch_size`; inference at `train.eval_batch_size`;
  - one study from its DICOM folder to its 25 probabilities along predict.py's path (read the study record
    with its native series, localise, cut the crops, classify), with only the two model calls swapped for the
    peer's (`Localise` / `Classify` of train/two_stage_models.py given a peer-backed step).
Both sides start from the same weights (ours copied into the peer with `load_weights`); random inputs.

The peer runs as a PyTorch user would run it fast on this CPU: `torch.set_num_threads(cores)`, and of eager
and `torch.compile` (inductor), each with contiguous (NCHW) or channels-last tensors, the fastest on a short
trial (smoke: eager only). The trial's rates are in the JSON and the winner is named in each row's note.
Ratios are lumbar_jax / peer from interleaved medians (> 1: lumbar_jax faster); target >= 1.5x.

Notes give the parameter counts side by side (they must be equal) and each of our steps' achieved FLOP/s
(XLA's cost analysis of the step / its median time) against the machine's f32 matmul and convolution rates
measured in the same run: how far from the hardware's limit each step runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from benchmarks import common, models

FULL = dict(variant="", repeats=5, trial_repeats=2, compile_peer=True, matmul=2048, conv=(16, 32, 64),
            studies=4)
SMOKE = dict(variant="smoke", repeats=1, trial_repeats=1, compile_peer=False, matmul=256, conv=(2, 8, 16),
             studies=2)
TARGET = 1.5
MODELS = ("localiser", "crop_classifier")


@dataclasses.dataclass
class Side:
    """One model as one side runs it: a train step and an inference call on fixed inputs (thunks)."""

    train: Callable[[], Any]
    infer: Callable[[], Any]
    train_flops: float | None = None
    infer_flops: float | None = None
    compile_s: float = 0.0
    lowered: dict[str, Any] = dataclasses.field(default_factory=dict)  # ours: {'train' | 'infer': jax Lowered}

    def hlo_text(self, step: str) -> str:
        """The optimised HLO text of our `step` ('train' | 'infer') program, compiled on this call (slow: for
        profiling, which matches the trace's thunks to its instructions)."""
        return self.lowered[step].compile().as_text()


# ---------------------------------------------------------------------------------------------- lumbar_jax
def _flops(lowered) -> float | None:
    """XLA's FLOP count of a lowered step program (`jax.jit(step).lower(*args)`, the step's jitted program
    inside it)."""
    analysis = lowered.cost_analysis()
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def our_side(model: str, config, arrays: dict, eval_arrays: dict) -> tuple[Side, Any]:
    """(Side of our `model` ('localiser' | 'crop_classifier') jitted as training and evaluation run it, its
    initial NNX model for the peer's weights)."""
    import jax

    from lumbar_jax.train import mesh as mesh_lib
    from lumbar_jax.train import step as step_lib
    from lumbar_jax.train import two_stage_models
    from lumbar_jax.train.init import classifier_state, localiser_state
    from lumbar_jax.train.state import merge_model

    mesh = mesh_lib.make_mesh(1)
    if model == "localiser":
        statics, state = localiser_state(config, mesh)
        loss_fn = two_stage_models.localiser_loss_fn(tuple(config.model.volume_shape))
        eval_step = two_stage_models.localiser_eval_step(statics, mesh)
    else:
        statics, state = classifier_state(config, mesh)
        loss_fn = two_stage_models.classifier_loss()
        eval_step = two_stage_models.classifier_eval_step(statics, mesh)
    # a copy: the train step donates the state's buffers
    module = merge_model(statics, statics.rng_state, jax.tree.map(lambda x: x.copy(), state["model"]), train=True)
    train_step = step_lib.make_train_step(statics, mesh, 0, 0.0, loss_fn)
    box = {"state": jax.device_put(state, mesh_lib.replicated(mesh)), "step": 0}
    batch, eval_batch = mesh_lib.shard_batch(arrays, mesh), mesh_lib.shard_batch(eval_arrays, mesh)
    lowered = {"train": jax.jit(train_step).lower(box["state"], batch, 0),
               "infer": jax.jit(eval_step).lower(box["state"], eval_batch)}

    def train():
        box["state"], metrics = train_step(box["state"], batch, box["step"])
        box["step"] += 1
        jax.block_until_ready(metrics["loss"])

    def infer():
        jax.block_until_ready(eval_step(box["state"], eval_batch))

    start = time.perf_counter()
    infer()
    train()
    return Side(train, infer, _flops(lowered["train"]), _flops(lowered["infer"]), time.perf_counter() - start,
                lowered), module


def batch_sizes(model: str, config) -> tuple[int, int]:
    """(train step batch, inference batch) of `model` in the default: the stage's batch and the eval batch."""
    train_batch = config.localiser.batch_size if model == "localiser" else config.train.batch_size
    return train_batch, config.train.eval_batch_size


def model_inputs(model: str, config) -> tuple[dict, dict]:
    """(train batch, eval inputs) of `model`, random (seed 0), at `batch_sizes`: the localiser's volumes uint8
    `[B, 3, D, H, W]`, present, coords, coords_series (eval: volumes, present); the crop classifier's crops uint8
    `[B, 25, K, P, P]`, crop_present, labels (eval: crops, crop_present)."""
    import numpy as np

    train_batch, eval_batch = batch_sizes(model, config)
    rng = np.random.default_rng(0)
    arrays, eval_arrays = _arrays(model, config, train_batch, rng), _arrays(model, config, eval_batch, rng)
    eval_keys = ("volumes", "present") if model == "localiser" else ("crops", "crop_present")
    return arrays, {k: eval_arrays[k] for k in eval_keys}


def _arrays(model: str, config, batch: int, rng) -> dict:
    """A random batch of `model`'s inputs (and labels / annotations) as the pipeline gives it."""
    import numpy as np

    from lumbar_jax import labels
    from lumbar_jax.data.crops import CropSpec

    if model == "localiser":
        return models.study_arrays(config, batch, rng)
    crop_shape = CropSpec.from_config(config.crops).shape
    return {"crops": rng.integers(0, 256, (batch, labels.NUM_TARGETS, *crop_shape), dtype=np.uint8),
            "crop_present": np.ones((batch, labels.NUM_TARGETS), bool),
            "labels": rng.integers(0, 3, (batch, labels.NUM_TARGETS)).astype(np.int32)}


# -------------------------------------------------------------------------------------------------- peer
def peer_status() -> dict[str, Any]:
    """Whether torch and timm import here: {"available", "reason", "name", "torch", "timm"}."""
    try:
        from benchmarks.peers import import_timm

        timm = import_timm()
        import torch
    except ImportError as err:
        return {"available": False, "reason": common.NOT_INSTALLED, "detail": f"{type(err).__name__}: {err}",
                "name": "PyTorch + timm (not installed)"}
    return {"available": True, "reason": None, "torch": torch.__version__, "timm": timm.__version__,
            "name": f"PyTorch {torch.__version__} + timm {timm.__version__}"}


def _peer_module(model: str, config, ours):
    """The peer of our `model` with our initial weights (training mode)."""
    from benchmarks import peers
    from benchmarks.peers import crop_classifier as crop_peer
    from benchmarks.peers import localiser as localiser_peer
    from lumbar_jax.data.crops import CropSpec
    from lumbar_jax.models import registry

    if model == "localiser":
        peer = localiser_peer.LocaliserPeer(config.localiser.variant, volume_shape=tuple(config.model.volume_shape))
    else:
        peer = crop_peer.CropClassifierPeer(
            registry.crop_classifier_config(config.model, CropSpec.from_config(config.crops).shape))
    peers.load_weights(peer, ours)
    return peer


def _peer_loss(model: str, config) -> Callable:
    """forward, train inputs -> the scalar loss our training minimises, on the peer."""
    from benchmarks.peers import crop_classifier as crop_peer
    from benchmarks.peers import localiser as localiser_peer

    if model == "localiser":
        volume_shape = tuple(config.model.volume_shape)
        return lambda forward, volumes, present, coords, coords_series: localiser_peer.localiser_loss(
            forward(volumes, present), coords, coords_series, present, volume_shape)
    return lambda forward, crops, present, labels: crop_peer.metric_loss(forward(crops, present), labels)


def _peer_points(forward, volumes, present):
    """Our localiser's evaluation on the peer: points float32 numpy `[B, 25, 3]`, the mean of the prediction and
    the un-flipped prediction of the left/right-mirrored volumes (models.localiser.predict_points)."""
    import torch

    from lumbar_jax import labels
    from lumbar_jax.data.dicom_geometry import RIGHT_TO_LEFT_AXIS
    from lumbar_jax.models.localiser import unflip_points

    flipped = torch.stack([volumes[:, s].flip(1 + int(RIGHT_TO_LEFT_AXIS[s])) for s in range(len(labels.SERIES_TYPES))],
                          dim=1)
    points = forward(volumes, present).points.numpy()
    return 0.5 * (points + unflip_points(forward(flipped, present).points.numpy()))


def _peer_eval_step(model: str, forward) -> Callable:
    """A drop-in for our eval step (state, batch) -> outputs (`Localise` / `Classify`), running the peer."""
    import numpy as np
    import torch

    def step(state, batch):
        tensors = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
        with torch.inference_mode():
            if model == "localiser":
                return {"points": _peer_points(forward, tensors["volumes"], tensors["present"])}
            return {"probs": torch.softmax(forward(tensors["crops"], tensors["crop_present"]), dim=-1).numpy()}

    return step


def peer_side(model: str, config, ours, arrays: dict, eval_arrays: dict, *, compiled: bool, channels_last: bool
               ) -> Side:
    """Side of the peer of `model`, run eagerly or through `torch.compile`, contiguous or channels-last."""
    import torch

    from benchmarks import peers

    peer = _peer_module(model, config, ours)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    if channels_last:
        peer = peer.to(memory_format=torch.channels_last_3d if model == "localiser" else torch.channels_last)
    forward = torch.compile(peer) if compiled else peer
    schedule = config.localiser if model == "localiser" else config.train
    step = peers.adamw_train_step(peer, _peer_loss(model, config), lr=schedule.lr, forward=forward,
                                  weight_decay=config.train.weight_decay, grad_clip=config.train.grad_clip)
    keys = ("volumes", "present", "coords", "coords_series") if model == "localiser" else ("crops", "crop_present",
                                                                                           "labels")
    train_inputs = [tensors[k] for k in keys]
    predict = _peer_eval_step(model, forward)

    def train():
        step(*train_inputs)

    def infer():
        peer.eval()
        predict(None, eval_arrays)

    start = time.perf_counter()
    infer()
    train()
    return Side(train, infer, compile_s=time.perf_counter() - start)


def _fastest_peer(model: str, config, ours, arrays: dict, eval_arrays: dict, p: dict) -> tuple[dict, dict]:
    """({'train': (variant name, Side), 'infer': ...}: the fastest peer variant per step on a short trial,
    {variant: {step: trial median seconds, "compile_s"}})."""
    variants = [(False, False), (False, True)] + ([(True, False), (True, True)] if p["compile_peer"] else [])
    sides, trial = {}, {}
    for compiled, channels_last in variants:
        name = ("torch.compile" if compiled else "eager") + ("+channels-last" if channels_last else "")
        side = peer_side(model, config, ours, arrays, eval_arrays, compiled=compiled, channels_last=channels_last)
        timings = common.measure_interleaved({"train": side.train, "infer": side.infer}, items={"train": 1, "infer": 1},
                                             repeats=p["trial_repeats"], warmup=0)
        sides[name] = side
        trial[name] = {step: timings[step].median_s for step in timings} | {"compile_s": side.compile_s}
    best = {step: min(trial, key=lambda name: trial[name][step]) for step in ("train", "infer")}
    return {step: (name, sides[name]) for step, name in best.items()}, trial


# ----------------------------------------------------------------------------------------------- section
def _model_rows(ctx: common.Context, model: str, config, p: dict, rates: dict) -> tuple[list[dict], dict]:
    train_batch, eval_batch = batch_sizes(model, config)
    arrays, eval_inputs = model_inputs(model, config)
    ours, module = our_side(model, config, arrays, eval_inputs)
    extra = {"lumbar_jax_params": _param_count(module), "compile_s": ours.compile_s}
    fns = {"train_ours": ours.train, "infer_ours": ours.infer}
    peer_steps = {}
    if ctx.peer["available"]:
        peer_steps, extra["peer_trial"] = _fastest_peer(model, config, module, arrays, eval_inputs, p)
        fns |= {f"{step}_peer": side.train if step == "train" else side.infer
                for step, (_, side) in peer_steps.items()}
        extra["peer_params"] = _peer_param_count(model, config, module)
    items = {k: (train_batch if k.startswith("train") else eval_batch) for k in fns}
    timings = common.measure_interleaved(fns, items=items, repeats=p["repeats"], warmup=1)
    missing = common.status(ctx.peer["reason"] or common.NOT_INSTALLED)
    what = describe(model, config)
    rows = []
    for step, flops, batch in (("train", ours.train_flops, train_batch), ("infer", ours.infer_flops, eval_batch)):
        notes = []
        if step in peer_steps:
            notes.append(f"peer: {peer_steps[step][0]} (fastest of {', '.join(extra['peer_trial'])})")
        if flops:
            achieved = flops / timings[f"{step}_ours"].median_s
            extra[f"{step}_gflops"] = achieved / 1e9
            notes.append(f"lumbar_jax {achieved / 1e9:.1f} GFLOP/s = {achieved / rates['matmul']:.0%} of the "
                         f"measured matmul rate, {achieved / rates['conv']:.0%} of the convolution rate "
                         f"({flops / 1e9:.2f} GFLOP per step)")
        label = "train step" if step == "train" else "inference"
        rows.append(common.row(f"two_stage.{model}.{step}", f"{what} {label}, batch {batch}", "studies/s",
                               timings[f"{step}_ours"], timings.get(f"{step}_peer", missing),
                               target=None if ctx.smoke else TARGET, note="; ".join(notes)))
    return rows, extra


def describe(model: str, config) -> str:
    """The model with its variant and input shape, as rows and profiles name it."""
    from lumbar_jax.data.crops import CropSpec

    if model == "localiser":
        shape = "x".join(map(str, config.model.volume_shape))
        return f"localiser ({config.localiser.variant}, 3 x {shape})"
    m, crop = config.model, "x".join(map(str, CropSpec.from_config(config.crops).shape))
    return f"crop classifier ({m.vit} + {m.effnet}, 25 crops {crop})"


def _param_count(module) -> int:
    import jax
    from flax import nnx

    return int(sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param))))


def _peer_param_count(model: str, config, ours) -> int:
    from benchmarks import peers

    return peers.parameter_count(_peer_module(model, config, ours))


def _study_row(ctx: common.Context, config, p: dict) -> dict:
    """One study DICOM folder -> 25 probabilities along predict.py's path, ours against the peer's models."""
    import numpy as np

    from lumbar_jax import inference, pipelines
    from lumbar_jax.data import study as study_lib
    from lumbar_jax.data.crops import CropSpec
    from lumbar_jax.train import mesh as mesh_lib
    from lumbar_jax.train import two_stage_models
    from lumbar_jax.train.init import classifier_state, localiser_state
    from lumbar_jax.train.state import merge_model

    mesh = mesh_lib.make_mesh(1)
    entries = study_lib.list_studies(ctx.synthetic(p["studies"]), "train")[:1]
    native_max_size = pipelines.get(config.pipeline).native_max_size(config)
    loc_statics, loc_state = localiser_state(config, mesh)
    cls_statics, cls_state = classifier_state(config, mesh)
    crop = CropSpec.from_config(config.crops)
    batch_size = inference.eval_batch_size(config, mesh)
    ours = (two_stage_models.Localise(two_stage_models.localiser_eval_step(loc_statics, mesh), batch_size, mesh),
            two_stage_models.Classify(two_stage_models.classifier_eval_step(cls_statics, mesh), crop, batch_size,
                                      mesh, config.crops.tta_shift_mm))
    fns = {"ours": lambda: _one_study(entries, config, native_max_size, ours, (loc_state, cls_state))}
    peer_name = ""
    if ctx.peer["available"]:
        loc_module = merge_model(loc_statics, loc_statics.rng_state, loc_state["model"], train=False)
        cls_module = merge_model(cls_statics, cls_statics.rng_state, cls_state["model"], train=False)
        loc_peer = _peer_module("localiser", config, loc_module).eval()
        cls_peer = _peer_module("crop_classifier", config, cls_module).eval()
        peer_steps = (two_stage_models.Localise(_peer_eval_step("localiser", loc_peer), batch_size, mesh),
                      two_stage_models.Classify(_peer_eval_step("crop_classifier", cls_peer), crop, batch_size, mesh,
                                                config.crops.tta_shift_mm))
        fns["peer"] = lambda: _one_study(entries, config, native_max_size, peer_steps, (None, None))
        peer_name = f"{batch_size} rows per model call (the eval batch, padded), as predict.py; peer: eager"
    timings = common.measure_interleaved(fns, items={k: 1 for k in fns}, repeats=p["repeats"], warmup=1)
    probs = {k: fn() for k, fn in fns.items()}
    agreement = (f"; max |probability difference| ours vs peer {np.abs(probs['ours'] - probs['peer']).max():.1e}"
                 if "peer" in probs else "")
    return common.row("two_stage.study", "one study: DICOM folder -> 25 probabilities (predict.py's path)",
                      "studies/s", timings["ours"], timings.get("peer", common.status(ctx.peer["reason"] or "-")),
                      note=f"{peer_name}{agreement}")


def _one_study(entries, config, native_max_size: int, steps, states) -> Any:
    """Read `entries[0]` from DICOM, localise, crop and classify it with `steps` (Localise, Classify)."""
    import numpy as np

    from lumbar_jax.data import study as study_lib

    record = study_lib.study_example(entries[0], tuple(config.model.volume_shape), native_max_size=native_max_size)
    indices, study_ids = np.arange(1), np.array([int(record["study_id"])])
    localise, classify = steps
    points = localise(states[0], [record], indices, study_ids)
    return classify(states[1], [record], indices, study_ids, points)


def run(ctx: common.Context) -> dict[str, Any]:
    p = SMOKE if ctx.smoke else FULL
    config = models.two_stage_config(ctx.smoke)
    ctx = dataclasses.replace(ctx, peer=peer_status())
    if ctx.peer["available"]:
        ctx.peer["torch_threads"] = common.setup_torch()
    rates = {"matmul": common.matmul_rate("float32", p["matmul"], 3)["flop_per_s"],
             "conv": common.conv_rate("float32", *p["conv"], repeats=3)["flop_per_s"]}
    rows, extra = [], {"rates_gflops": {k: v / 1e9 for k, v in rates.items()}}
    for model in MODELS:
        model_rows, extra[model] = _model_rows(ctx, model, config, p, rates)
        rows += model_rows
    rows.append(_study_row(ctx, config, p))
    extra_md = {
        "parameter counts (lumbar_jax / peer)": ", ".join(
            f"{model} {extra[model]['lumbar_jax_params']:,} / {extra[model].get('peer_params', '-'):,}"
            if "peer_params" in extra[model] else f"{model} {extra[model]['lumbar_jax_params']:,} / -"
            for model in MODELS),
        "machine rates (XLA:CPU f32, measured in this run)": (
            f"matmul {rates['matmul'] / 1e9:.1f} GFLOP/s, 3x3 convolution {rates['conv'] / 1e9:.1f} GFLOP/s"),
        "compile time (lumbar_jax, train + inference programs)": ", ".join(
            f"{model} {extra[model]['compile_s']:.1f} s" for model in MODELS),
    }
    return {"params": p, "rows": rows, "peer_name": ctx.peer["name"], "peer": ctx.peer, "extra": extra,
            "extra_md": extra_md}
