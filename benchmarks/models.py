"""Section `models`: lumbar_jax's 3D encoders against MONAI's (train step, inference); lumbar_jax's own train steps.

Peers, CPU, float32, batch 4 of 1 x 32 x 128 x 128 (smoke: batch 2 of 1 x 32 x 32 x 32, tiny lumbar_jax variants):
  - lumbar_jax `vit_s` 3D (`VisionTransformer('vit_s', patch 4x16x16, 1 channel, 75 classes)`) vs MONAI
    `ViT(in_channels=1, img_size=(32, 128, 128), patch_size=(4, 16, 16), hidden_size=384, mlp_dim=1536,
    num_layers=12, num_heads=6, classification=True, num_classes=75)`;
  - lumbar_jax `effnet_b0` 3D (`EfficientNet('effnet_b0', ndim=3, 1 channel, 75 classes)`) vs MONAI
    `EfficientNetBN('efficientnet-b0', spatial_dims=3, in_channels=1, num_classes=75, pretrained=False)`.
Train step = forward + softmax cross-entropy on 75 classes + backward + AdamW update (optax / torch.optim),
models in training mode (dropout, BatchNorm batch statistics); inference = forward in eval mode
(`jax.jit` / `torch.inference_mode()`). Rates are volumes/s, median of interleaved timed repetitions after
one untimed warm-up call (for JAX that call compiles; its time is reported as compile_s). Parameter counts
are printed side by side (they must agree within 1 %), and the achieved FLOP/s of the lumbar_jax steps
(XLA's cost analysis of the compiled step / median step time) against the machine's f32 matmul rate
measured in the same run.

lumbar_jax's own train step of the one-stage fused model (no peer; `configs/vit_effnet_one_stage.py` at batch 12
and its `:r128` variant in float32 at batch 2; smoke: `:smoke` at batch 4; 3 series per record, coordinate loss
on), each `train.step.make_train_step` jitted on a fixed random batch, rate in studies/s (one study = one
record), with its compile time (the first call) and the benchmark process's peak resident memory while the
model was built, compiled and stepped (Linux: VmHWM reset before each; elsewhere ru_maxrss since the process
started, an upper bound). The two-stage default's models are the `two_stage` section's (against PyTorch +
timm); their train steps as built here (`TRAIN_STEPS`) are what the pipeline section compares the input
pipelines with (`train_step_consumption`: how many studies/s training consumes).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from benchmarks import common

FULL = dict(batch=4, shape=(32, 128, 128), vit="vit_s", effnet="effnet_b0", vit_patch=(4, 16, 16), repeats=5,
            fused_batch={"": 12, "r128": 2}, two_stage="", step_repeats=3, matmul=2048)
SMOKE = dict(batch=2, shape=(32, 32, 32), vit="vit_cpu", effnet="effnet_cpu", vit_patch=(4, 16, 16),
             repeats=1, fused_batch={"smoke": 4}, two_stage="smoke", step_repeats=1, matmul=256)
NUM_CLASSES = 75  # 25 targets x 3 severities
MONAI_VIT = dict(hidden_size=384, mlp_dim=1536, num_layers=12, num_heads=6)  # = vit_s
TARGET = 1.5  # the goal: lumbar_jax at least 1.5x MONAI, train and inference
PARAM_TOLERANCE = 0.01


# ------------------------------------------------------------------------------------------------ lumbar_jax
def jax_encoder(kind: str, variant: str, p: dict, dtype: str = "float32"):
    """lumbar_jax's 3D encoder of the comparison (1 channel, NUM_CLASSES outputs), computing in `dtype`, with
    the kernels `model.kernels='auto'` picks on this backend."""
    import jax.numpy as jnp
    from flax import nnx

    from lumbar_jax.models import resolve_kernels
    from lumbar_jax.models.efficientnet import EfficientNet, EfficientNetConfig
    from lumbar_jax.models.vit import ViTConfig, VisionTransformer

    kw = dict(kernels=resolve_kernels("auto"), dtype=jnp.dtype(dtype), rngs=nnx.Rngs(params=0, dropout=1))
    if kind == "vit":
        config = ViTConfig.preset(variant, input_shape=p["shape"], patch=p["vit_patch"], num_classes=NUM_CLASSES)
        return VisionTransformer(config, **kw)
    return EfficientNet(EfficientNetConfig.preset(variant, ndim=3, num_classes=NUM_CLASSES), **kw)


def _jax_steps(model, batch: int, shape) -> tuple[Any, Any, dict]:
    """(train step thunk, inference thunk, {'params', 'train_flops', 'infer_flops', 'compile_s', 'compiled':
    {'train', 'inference'}: the compiled XLA programs, for profiling})."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, *shape, 1), np.float32))
    y = jnp.asarray(rng.integers(0, NUM_CLASSES, batch))
    params = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def train(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        model.train()

        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    def infer(state, x):
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        return model(x)

    train_jit, infer_jit = jax.jit(train, donate_argnums=0), jax.jit(infer)
    start = time.perf_counter()
    train_compiled = train_jit.lower(state, x, y).compile()
    infer_compiled = infer_jit.lower(state, x).compile()
    compile_s = time.perf_counter() - start
    box = {"state": state}

    def train_step():
        box["state"], loss = train_compiled(box["state"], x, y)
        jax.block_until_ready(loss)

    def inference():
        jax.block_until_ready(infer_compiled(box["state"], x))

    info = {"params": int(params), "compile_s": compile_s, "train_flops": _flops(train_compiled),
            "infer_flops": _flops(infer_compiled), "compiled": {"train": train_compiled, "inference": infer_compiled}}
    return train_step, inference, info


def _flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older JAX: one dict per device program
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


# ----------------------------------------------------------------------------------------------------- MONAI
def _torch_model(kind: str, p: dict):
    from monai.networks.nets import ViT, EfficientNetBN

    if kind == "vit":
        if p["vit"] != "vit_s":  # smoke: a MONAI ViT as small as vit_cpu
            from lumbar_jax.models.vit import VIT_VARIANTS

            v = VIT_VARIANTS[p["vit"]]
            sizes = dict(hidden_size=v.width, mlp_dim=int(v.width * v.mlp_ratio), num_layers=v.depth,
                         num_heads=v.num_heads)
        else:
            sizes = MONAI_VIT
        return ViT(in_channels=1, img_size=p["shape"], patch_size=p["vit_patch"], classification=True,
                   num_classes=NUM_CLASSES, **sizes)
    return EfficientNetBN("efficientnet-b0", spatial_dims=3, in_channels=1, num_classes=NUM_CLASSES,
                          pretrained=False)


def _torch_steps(model, batch: int, shape) -> tuple[Any, Any, dict]:
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, 1, *shape), np.float32))
    y = torch.from_numpy(rng.integers(0, NUM_CLASSES, batch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def logits(out):
        return out[0] if isinstance(out, tuple) else out  # MONAI's ViT returns (logits, hidden states)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(logits(model(x)), y)
        loss.backward()
        optimizer.step()

    def inference():
        model.eval()
        with torch.inference_mode():
            logits(model(x))

    return train_step, inference, {"params": int(sum(t.numel() for t in model.parameters()))}


# ---------------------------------------------------------------------------------------------------- rows
def _encoder_rows(ctx: common.Context, kind: str, p: dict, matmul_flops: float) -> tuple[list[dict], dict]:
    variant = p[kind]
    batch, shape = p["batch"], p["shape"]
    train_ours, infer_ours, ours = _jax_steps(jax_encoder(kind, variant, p), batch, shape)
    fns = {"train_ours": train_ours, "infer_ours": infer_ours}
    extra = {"lumbar_jax_params": ours["params"], "compile_s": ours["compile_s"]}
    if ctx.peer["available"]:
        common.setup_torch()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"monai(\.|$)")
            train_peer, infer_peer, peer = _torch_steps(_torch_model(kind, p), batch, shape)
        fns |= {"train_peer": train_peer, "infer_peer": infer_peer}
        extra["monai_params"] = peer["params"]
        extra["param_ratio"] = ours["params"] / peer["params"]
    timings = common.measure_interleaved(fns, items={k: batch for k in fns}, repeats=p["repeats"], warmup=1)
    missing = common.status(ctx.peer["reason"] or "not installed")
    shape_text = "x".join(map(str, shape))
    rows = []
    for step, flops_key in (("train_step", "train_flops"), ("inference", "infer_flops")):
        short = "train" if step == "train_step" else "infer"
        flops = ours[flops_key]
        note = ""
        if flops:
            achieved = flops / timings[f"{short}_ours"].median_s
            extra[f"{step}_gflops"] = achieved / 1e9
            note = (f"lumbar_jax {achieved / 1e9:.1f} GFLOP/s = {achieved / matmul_flops:.0%} of the measured "
                    f"matmul rate ({flops / 1e9:.1f} GFLOP per step)")
        rows.append(common.row(f"models.{FULL[kind]}.{step}", f"{variant} 3D {step.replace('_', ' ')}, batch {batch} "
                               f"of 1x{shape_text}", "volumes/s", timings[f"{short}_ours"],
                               timings.get(f"{short}_peer", missing), target=None if ctx.smoke else TARGET,
                               note=note))
    return rows, extra


# ------------------------------------------------------------------------------ lumbar_jax's own train steps
def load_config(name: str, variant: str):
    """`configs/{name}.py:variant` computing in float32 (CPU: the r128 variants' bfloat16 is for accelerators)."""
    import os

    from lumbar_jax import config_overrides

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = config_overrides.load_config(f"{os.path.join(repo, 'configs', name + '.py')}:{variant}")
    config.model.dtype = "float32"
    return config


def two_stage_config(smoke: bool):
    """The two-stage default whose stages the benchmarks measure (`configs/vit_effnet.py`; `:smoke` in smoke)."""
    return load_config("vit_effnet", (SMOKE if smoke else FULL)["two_stage"])


def study_arrays(config, batch: int, rng) -> dict:
    """A random study batch as the r64 pipeline gives it (every target annotated on its own series)."""
    import numpy as np

    from lumbar_jax import labels

    shape = tuple(config.model.volume_shape)
    return {"volumes": rng.integers(0, 256, (batch, 3, *shape), dtype=np.uint8), "present": np.ones((batch, 3), bool),
            "labels": rng.integers(0, 3, (batch, labels.NUM_TARGETS)).astype(np.int32),
            "coords": rng.uniform(0.1, 0.9, (batch, labels.NUM_TARGETS, 3)).astype(np.float32),
            "coords_series": np.tile(labels.TARGET_SERIES, (batch, 1)).astype(np.int32)}


def _fused_parts(config, batch: int, rng):
    """(statics, state, loss_fn, ema_decay, batch arrays, row name) of the one-stage study model."""
    from lumbar_jax.train import mesh as mesh_lib
    from lumbar_jax.train import step as step_lib
    from lumbar_jax.train.init import study_model_state

    statics, state = study_model_state(config, mesh_lib.make_mesh(1))
    tc = config.train
    shape = "x".join(map(str, config.model.volume_shape))
    loss_fn = step_lib.study_loss(tc.loss, tc.coord_loss_weight, tc.coord_sigma, tc.label_smoothing)
    return (statics, state, loss_fn, tc.ema_decay,
            study_arrays(config, batch, rng), f"train step, batch {batch} of 3x{shape} (one study = 3 series)")


def _localiser_parts(config, batch: int, rng):
    """The same for the two-stage localiser (stage 1), built and trained as `train.two_stage` does."""
    from lumbar_jax.train import mesh as mesh_lib
    from lumbar_jax.train.init import localiser_state
    from lumbar_jax.train.two_stage_models import localiser_loss_fn

    shape = tuple(config.model.volume_shape)
    statics, state = localiser_state(config, mesh_lib.make_mesh(1))
    return (statics, state, localiser_loss_fn(shape), 0.0, study_arrays(config, batch, rng),
            f"localiser ({config.localiser.variant}) train step, batch {batch} of 3x{'x'.join(map(str, shape))}")


def _crop_classifier_parts(config, batch: int, rng):
    """The same for the two-stage crop classifier (stage 2) on crops [B, 25, K, P, P], the metric loss."""
    import numpy as np

    from lumbar_jax import labels
    from lumbar_jax.data.crops import CropSpec
    from lumbar_jax.train import mesh as mesh_lib
    from lumbar_jax.train.init import classifier_state
    from lumbar_jax.train.two_stage_models import classifier_loss

    m = config.model
    crop_shape = CropSpec.from_config(config.crops).shape
    statics, state = classifier_state(config, mesh_lib.make_mesh(1))
    arrays = {"crops": rng.integers(0, 256, (batch, labels.NUM_TARGETS, *crop_shape), dtype=np.uint8),
              "crop_present": np.ones((batch, labels.NUM_TARGETS), bool),
              "labels": rng.integers(0, 3, (batch, labels.NUM_TARGETS)).astype(np.int32)}
    return (statics, state, classifier_loss(config.train.label_smoothing), config.train.ema_decay, arrays,
            f"crop classifier ({m.name}: {m.vit} + {m.effnet} per slice) train step, batch {batch} of 25 crops "
            f"{'x'.join(map(str, crop_shape))}")


# model -> (config file, parts builder, batch of a config: what training runs unless the run says otherwise)
TRAIN_STEPS = {
    "fused": ("vit_effnet_one_stage", _fused_parts, lambda c: c.train.batch_size),
    "localiser": ("vit_effnet", _localiser_parts, lambda c: c.localiser.batch_size),
    "crop_classifier": ("vit_effnet", _crop_classifier_parts, lambda c: c.train.batch_size),
}


def _train_step(model: str, variant: str, batch: int | None):
    """(step thunk, compile seconds, config file[:variant], batch, row name) of `TRAIN_STEPS[model]` at `batch`
    (None: the config's own), one jitted `train.step.make_train_step` step per call on a fixed random batch."""
    import jax
    import numpy as np

    from lumbar_jax.train import mesh as mesh_lib
    from lumbar_jax.train import step as step_lib

    name, parts, config_batch = TRAIN_STEPS[model]
    config = load_config(name, variant)
    batch = batch or config_batch(config)
    statics, state, loss_fn, ema_decay, arrays, what = parts(config, batch, np.random.default_rng(0))
    mesh = mesh_lib.make_mesh(1)
    train_step = step_lib.make_train_step(statics, mesh, 0, ema_decay, loss_fn)
    box = {"state": jax.device_put(state, mesh_lib.replicated(mesh)), "step": 0}
    batch_arrays = mesh_lib.shard_batch(arrays, mesh)

    def step():
        box["state"], metrics = train_step(box["state"], batch_arrays, box["step"])
        box["step"] += 1
        jax.block_until_ready(metrics["loss"])

    start = time.perf_counter()
    step()  # compiles
    return step, time.perf_counter() - start, f"{name}{':' + variant if variant else ''}", batch, what


_MEASURED: dict[tuple, tuple[dict, dict]] = {}  # (model, variant, batch, repeats) -> (row, extra): once per run


def train_step_row(model: str, variant: str, batch: int | None, repeats: int) -> tuple[dict, dict]:
    """(row, extra) of `TRAIN_STEPS[model]`'s train step, `configs/<file>.py:variant` at `batch` studies (None:
    the config's); extra holds the compile time and the process's peak memory while it was built and run."""
    key = (model, variant, batch, repeats)
    if key not in _MEASURED:
        rss_before, resets = common.rss_mib("VmRSS"), common.reset_peak_rss()
        step, compile_s, config_name, batch, what = _train_step(model, variant, batch)
        timing = common.measure(step, items=batch, repeats=repeats, warmup=1)
        per_study = f"{3 * timing.rate_median:.1f} volumes/s" if model != "crop_classifier" else (
            f"{25 * timing.rate_median:.0f} crops/s")
        row = common.row(f"models.{model}.{variant or 'default'}", f"{config_name} {what}", "studies/s", timing,
                         common.status("no peer (lumbar_jax's own model)"),
                         note=f"{per_study}; compile {compile_s:.0f} s")
        peak = common.rss_mib("VmHWM") if resets else None
        _MEASURED[key] = row, {"model": config_name, "compile_s": compile_s, "batch": batch, "timing": timing,
                               "rss_before_mib": rss_before, "peak_rss_mib": peak or common.max_rss_mib(),
                               "peak_rss_since": "its build" if peak else "process start"}
    return _MEASURED[key]


def train_step_consumption(ctx: common.Context, model: str) -> dict[str, Any]:
    """Studies/s that training consumes (the pipeline section's peers): the train step of `TRAIN_STEPS[model]`
    as the models section runs it ('fused': the one-stage default, 'localiser', 'crop_classifier': the two-stage
    default's stages, `:smoke` in smoke mode), measured once per run and shared with the models section."""
    p = SMOKE if ctx.smoke else FULL
    if model == "fused":
        variant, batch = next(iter(p["fused_batch"].items()))
    else:
        variant, batch = p["two_stage"], None
    _, extra = train_step_row(model, variant, batch, p["step_repeats"])
    return {**extra["timing"].to_json(), "model": extra["model"]}


def run(ctx: common.Context) -> dict[str, Any]:
    p = SMOKE if ctx.smoke else FULL
    matmul = common.matmul_rate("float32", p["matmul"], max(p["repeats"], 3))["flop_per_s"]
    rows, extra, extra_md = [], {"matmul_gflops": matmul / 1e9}, {}
    params = {}
    for kind in ("vit", "effnet"):
        kind_rows, kind_extra = _encoder_rows(ctx, kind, p, matmul)
        rows += kind_rows
        extra[p[kind]] = kind_extra
        params[p[kind]] = (kind_extra["lumbar_jax_params"], kind_extra.get("monai_params"))
    for model, variant, batch in [("fused", variant, batch) for variant, batch in p["fused_batch"].items()]:
        row, measured = train_step_row(model, variant, batch, p["step_repeats"])
        rows.append(row)
        extra.setdefault("train_steps", {})[row["id"]] = {k: v for k, v in measured.items() if k != "timing"}
        extra_md[f"{row['id']}: peak resident memory of the benchmark process since {measured['peak_rss_since']}"] = (
            f"{measured['peak_rss_mib']:.0f} MiB (resident before it: {measured['rss_before_mib'] or 0:.0f} MiB)")
    extra_md |= {"parameter counts (lumbar_jax / MONAI)": ", ".join(
        f"{name} {ours:,} / {peer:,} ({ours / peer - 1:+.2%})" if peer else f"{name} {ours:,} / -"
        for name, (ours, peer) in params.items()),
        "machine f32 matmul rate (XLA:CPU, measured in this run)": f"{matmul / 1e9:.1f} GFLOP/s",
        "compile time (lumbar_jax, train + inference programs)": ", ".join(
            f"{name} {extra[name]['compile_s']:.1f} s" for name in params)}
    mismatched = [n for n, (o, m) in params.items() if m and abs(o / m - 1) > PARAM_TOLERANCE]
    if mismatched and not ctx.smoke:
        extra_md["PARAMETER COUNTS DIFFER by more than 1 %"] = ", ".join(mismatched)
    return {"params": p, "rows": rows, "peer_name": ctx.peer["name"], "extra": extra, "extra_md": extra_md}
