"""Sections `steps` and `peer` of `python -m benchmarks.gpu`: train-step throughput of the GPU variants, and
lumbar_jax's encoders against MONAI's on the same device.

steps: the study model of `configs/{vit_effnet_one_stage,vit,effnet}.py:{r128,r256}` (`registry.create_model`, as the
main job builds it), one jit-compiled train step: forward on uint8 volumes [B, 3, D, H, W] with every series
present, softmax cross-entropy over the 25 x 3 logits, backward, AdamW. (The main job's step adds the
coordinate loss of the target queries and, in these variants, an EMA of the parameters: a few % of the work.)
Batch: the variant's own at r128 (32); 4 at r256 (its 64 is sized for a pod, not one GPU); `--batch` overrides,
and a step that runs out of memory is retried once at half the batch. Per row: records/s and the median step
time (2 warm-up steps, then 5 timed), compile time (lowering + XLA compilation of the step), device memory
(XLA's memory analysis of the compiled step: arguments + outputs + temporaries - donated; and the allocator's
process peak so far, monotonic), FLOPs per step from XLA's cost analysis of the lowered step (the model's own
FLOPs, before the GPU compiler rewrites dots and convolutions into library calls; the compiled program's count
is kept in the JSON beside it), achieved FLOP/s and MFU = achieved / the matmul rate of the same dtype
measured in this run. Order: vit_effnet:r128 bf16, vit:r256 bf16 (the target: >= 40 % MFU), vit_effnet:r256
bf16, vit_effnet r128 / r256 f32 (required: they run while `--budget-s` lasts), then the other ViT-only /
EfficientNet-only rows (optional: they start while less than 85 % of it is spent).

peer: benchmarks/models.py's MONAI `ViT` and `EfficientNetBN('efficientnet-b0')` (3D, 1 channel, 75 classes)
against lumbar_jax's `VisionTransformer` / `EfficientNet` of the same sizes, both on the GPU: train step and
inference (benchmarks/models.py's `_jax_steps` for lumbar_jax; the same loss and optimizer in torch), batch 32
of 1x32x128x128 (vit_s, patch 4x16x16) and batch 4 of 1x64x256x256 (vit_b, patch 8x16x16). bfloat16 =
lumbar_jax's bfloat16 compute against torch autocast(bfloat16); float32 = both at their default GPU precision
(TF32 tensor cores: JAX's default, torch with TF32 allowed). Torch runs eagerly with cudnn.benchmark on; its
inputs live on the device. Target: >= 1.5x MONAI.
"""

from __future__ import annotations

import gc
import sys
import time
import warnings

from benchmarks import common
from benchmarks import models as bench_models

BATCH = {"r128": 32, "r256": 4, "smoke": 2}
STEPS_ROWS = [  # (config file, variant, dtype, required), in this order
    ("vit_effnet_one_stage", "r128", "bfloat16", True), ("vit", "r256", "bfloat16", True),
    ("vit_effnet_one_stage", "r256", "bfloat16", True), ("vit_effnet_one_stage", "r128", "float32", True),
    ("vit_effnet_one_stage", "r256", "float32", True), ("vit", "r128", "bfloat16", False),
    ("effnet", "r128", "bfloat16", False), ("effnet", "r256", "bfloat16", False),
    ("vit", "r128", "float32", False), ("vit", "r256", "float32", False), ("effnet", "r128", "float32", False),
    ("effnet", "r256", "float32", False)]
SMOKE_STEPS_ROWS = [("vit", "smoke", "bfloat16", True)]
# smoke: the smoke variant's tiny model on an even smaller volume, so that CI compiles it in seconds
SMOKE_MODEL = dict(volume_shape=(8, 32, 32), patch=(4, 8, 8), effnet_pool=(1, 1, 1), vit_depth=1, head_hidden=32)
STEPS_OPTIONAL_SHARE = 0.85  # optional rows start while less than this share of `--budget-s` is spent
MFU_TARGET = {("vit", "r256", "bfloat16"): 0.40}  # the goal for the r256 ViT-B train step in bf16
REPEATS = {"full": (2, 5), "smoke": (1, 2)}  # (warm-up, timed)
PEER_SIZES = {  # smoke: the ViT only, float32 (a 3D EfficientNet compiles for a minute on a small CPU, and
    # torch's CPU autocast is slow): CI checks the code path, not the figures
    "r128": dict(batch=32, shape=(32, 128, 128), vit="vit_s", effnet="effnet_b0", vit_patch=(4, 16, 16),
                 kinds=("vit", "effnet")),
    "r256": dict(batch=4, shape=(64, 256, 256), vit="vit_b", effnet="effnet_b0", vit_patch=(8, 16, 16),
                 kinds=("vit", "effnet")),
    "smoke": dict(batch=2, shape=(32, 32, 32), vit="vit_cpu", vit_patch=(4, 16, 16), kinds=("vit",)),
}
PEER_ROWS = [("r128", "bfloat16", True), ("r256", "bfloat16", False), ("r128", "float32", False)]
SMOKE_PEER_ROWS = [("smoke", "float32", True)]
PEER_TARGET = 1.5
PEER_OPTIONAL_SHARE = 0.5  # the steps section runs after the peer: leave it the other half


def load_config(name: str, variant: str):
    """`configs/{name}.py`'s `get_config(variant)`."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_gpu_{name}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def _is_oom(err: Exception) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


# -------------------------------------------------------------------------------------------------- steps
def compile_train_step(config, batch: int):
    """(step thunk, info) of the config's study model at `batch` records; info: params, compile_s, flops (lowered
    step), compiled_flops, xla_memory_bytes."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from lumbar_jax.models.registry import create_model

    model = create_model(config.model, nnx.Rngs(params=config.seed, dropout=config.seed + 1))
    params = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)))
    rng = np.random.default_rng(0)
    inputs = jax.device_put((rng.integers(0, 256, (batch, 3, *config.model.volume_shape), dtype=np.uint8),
                             np.ones((batch, 3), bool), rng.integers(0, 3, (batch, 25)).astype(np.int32)))

    def train_step(state, volumes, present, labels):
        model, optimizer = nnx.merge(graphdef, state)
        loss_of = lambda m: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
            m(volumes, present).astype(jnp.float32), labels).mean()
        loss, grads = nnx.value_and_grad(loss_of)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    start = time.perf_counter()
    lowered = jax.jit(train_step, donate_argnums=0).lower(state, *inputs)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    flops, compiled_flops = _cost(lambda: bench_models._flops(lowered)), _cost(lambda: bench_models._flops(compiled))
    memory = _cost(compiled.memory_analysis)
    box = {"state": state}

    def step():
        box["state"], loss = compiled(box["state"], *inputs)
        jax.block_until_ready(loss)

    return step, {"params": int(params), "compile_s": compile_s, "flops": flops or compiled_flops,
                  "compiled_flops": compiled_flops, "xla_memory_bytes": None if memory is None else (
                      memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
                      - memory.alias_size_in_bytes)}


def _cost(analysis):
    """An XLA analysis, or None where this backend / JAX version has none."""
    try:
        return analysis()
    except Exception:
        return None


def _peak_memory_gib() -> float | None:
    import jax

    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    return peak / 2**30 if peak else None


def _measure_step(ctx, name: str, variant: str, dtype: str, batch: int) -> dict:
    config = load_config(name, variant)
    config.model.dtype = dtype
    if ctx.smoke:
        config.model.update(SMOKE_MODEL)
    step, info = compile_train_step(config, batch)
    warmup, repeats = REPEATS["smoke" if ctx.smoke else "full"]
    timing = common.measure(step, items=batch, repeats=repeats, warmup=warmup)
    achieved = info["flops"] / timing.median_s if info["flops"] else None
    mfu = achieved / ctx.matmul(dtype)["flop_per_s"] if achieved else None
    target = MFU_TARGET.get((name, variant, dtype))
    return {**info, "status": "measured", "records_per_s": timing.rate_median, "median_step_s": timing.median_s,
            "min_step_s": timing.min_s, "timing": timing.to_json(), "tflop_per_s": achieved and achieved / 1e12,
            "mfu": mfu, "xla_memory_gib": info["xla_memory_bytes"] and info["xla_memory_bytes"] / 2**30,
            "peak_memory_gib": _peak_memory_gib(), "volume_shape": list(config.model.volume_shape),
            "target": target, "target_text": target and f">= {target:.0%} MFU",
            "target_met": None if target is None or mfu is None or ctx.smoke else bool(mfu >= target)}


def _step_row(ctx, name: str, variant: str, dtype: str) -> dict:
    batch = ctx.batch.get(variant, BATCH.get(variant, BATCH["smoke"]))
    row = {"id": f"steps.{name}.{variant}.{dtype}", "config": f"{name}:{variant}", "dtype": dtype}
    for attempt in range(2):
        try:
            return {**row, **_measure_step(ctx, name, variant, dtype, batch), "batch": batch}
        except Exception as err:  # one row's failure (out of memory, a kernel) is reported, the rest go on
            if attempt == 0 and _is_oom(err) and batch > 1:
                batch //= 2
                gc.collect()
                continue
            return {**row, "batch": batch, "status": f"failed: {type(err).__name__}: {str(err)[:300]}"}
        finally:
            gc.collect()


def steps_section(ctx) -> dict:
    rows, skipped = [], []
    for name, variant, dtype, required in SMOKE_STEPS_ROWS if ctx.smoke else STEPS_ROWS:
        if not ctx.may_start(required, STEPS_OPTIONAL_SHARE):
            skipped.append(f"{name}:{variant} {dtype}")
            continue
        rows.append(_step_row(ctx, name, variant, dtype))
        print(f"[benchmarks.gpu] steps {rows[-1]['config']} {dtype}: {rows[-1]['status']}", file=sys.stderr,
              flush=True)
        ctx.progress({"rows": rows})
    notes = ["records = studies (3 series each); memory: XLA's analysis of the compiled step / the allocator's "
             "process peak so far (monotonic over the run)"]
    if skipped:
        notes.append("not run (`--budget-s` spent): " + ", ".join(skipped))
    return {"rows": rows, "skipped_rows": skipped, "notes": notes}


# --------------------------------------------------------------------------------------------------- peer
def _torch_device_steps(model, p: dict, dtype: str, device):
    """(train step thunk, inference thunk) of a MONAI model on `device`: inputs on the device, cross-entropy +
    AdamW like benchmarks/models.py's `_torch_steps`, under autocast(bfloat16) for dtype bfloat16; each call
    ends synchronised."""
    import torch

    model = model.to(device)
    x = torch.randn((p["batch"], 1, *p["shape"]), generator=torch.Generator().manual_seed(0)).to(device)
    y = torch.randint(0, bench_models.NUM_CLASSES, (p["batch"],), generator=torch.Generator().manual_seed(1)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def logits():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            out = model(x)
        return (out[0] if isinstance(out, tuple) else out).float()  # MONAI's ViT: (logits, hidden states)

    def train_step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(logits(), y).backward()
        optimizer.step()
        sync()

    def inference():
        model.eval()
        with torch.inference_mode():
            logits()
        sync()

    return train_step, inference


def _peer_rows(ctx, size: str, kind: str, dtype: str, device) -> list[dict]:
    """Train-step and inference rows of one encoder kind at one size and dtype, lumbar_jax against MONAI."""
    p = PEER_SIZES[size]
    variant = p[kind]
    train_ours, infer_ours, ours = bench_models._jax_steps(bench_models.jax_encoder(kind, variant, p, dtype),
                                                           p["batch"], p["shape"])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"monai(\.|$)")
        train_peer, infer_peer = _torch_device_steps(bench_models._torch_model(kind, p), p, dtype, device)
    fns = {"train_ours": train_ours, "infer_ours": infer_ours, "train_peer": train_peer, "infer_peer": infer_peer}
    warmup, repeats = REPEATS["smoke" if ctx.smoke else "full"]
    t = common.measure_interleaved(fns, items={k: p["batch"] for k in fns}, repeats=repeats, warmup=warmup)
    shape = "x".join(map(str, p["shape"]))
    return [common.row(f"peer.{variant}.{size}.{dtype}.{short}", f"{variant} 3D {step}, {dtype}, batch {p['batch']} "
                       f"of 1x{shape}", "volumes/s", t[f"{short}_ours"], t[f"{short}_peer"],
                       target=None if ctx.smoke else PEER_TARGET,
                       note=f"lumbar_jax compile (train + inference) {ours['compile_s']:.1f} s")
            for step, short in (("train step", "train"), ("inference", "infer"))]


def _release_torch() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _peer_device():
    """(torch device, None, peer status) where the peer can run on the device JAX uses, else (None, why not,
    status)."""
    import jax

    peer = common.peer_status()
    if not peer["available"]:
        return None, f"torch/monai {peer['reason']}", peer
    import torch

    on_gpu = jax.default_backend() == "gpu"
    if on_gpu and not torch.cuda.is_available():
        return None, f"torch {peer['torch']} has no CUDA: not the device JAX uses", peer
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True  # float32 at the GPU's default precision, as JAX
    torch.backends.cudnn.allow_tf32 = True
    return torch.device("cuda" if on_gpu else "cpu"), None, peer


def peer_section(ctx) -> dict:
    device, why_not, peer = _peer_device()
    if device is None:
        return {"skipped": why_not, "peer": peer, "rows": []}
    rows, skipped = [], []
    for size, dtype, required in SMOKE_PEER_ROWS if ctx.smoke else PEER_ROWS:
        if not ctx.may_start(required, PEER_OPTIONAL_SHARE):
            skipped.append(f"{size} {dtype} (time budget)")
            continue
        for kind in PEER_SIZES[size]["kinds"]:
            try:
                rows += _peer_rows(ctx, size, kind, dtype, device)
            except Exception as err:  # e.g. out of memory at r256: say so, go on
                skipped.append(f"{kind} {size} {dtype} (failed: {type(err).__name__}: {str(err)[:200]})")
            finally:
                _release_torch()
        ctx.progress({"rows": rows, "peer": peer, "peer_name": peer["name"], "smoke": ctx.smoke})
    notes = [f"peer on {device}; lumbar_jax bfloat16 = bfloat16 compute (float32 parameters), MONAI bfloat16 = "
             "torch.autocast; float32: TF32 allowed on both sides; ratio > 1: lumbar_jax faster"]
    if skipped:
        notes.append("not run: " + ", ".join(skipped))
    return {"rows": rows, "skipped_rows": skipped, "peer": peer, "peer_name": peer["name"], "device": str(device),
            "smoke": ctx.smoke, "notes": notes}
