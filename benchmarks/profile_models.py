"""Where the model steps spend their time: lumbar_jax (jax.profiler) beside its peer (torch.profiler), to
explain the ratios that `benchmarks.run` measures.

    python -m benchmarks.profile_models [--models localiser,crop_classifier,vit,effnet] [--steps train,inference]
                                        [--smoke] [--out DIR]

Models (default: the default's two):
- `localiser`, `crop_classifier`: the two-stage default's models at its shapes and batch sizes, as the
  `two_stage` section runs them (`benchmarks.two_stage`); peer: their PyTorch + timm peers (benchmarks/peers),
  eager with contiguous tensors, so that the profile lists aten ops (the section's faster variants fuse them).
- `vit`, `effnet`: the one-stage 3D encoders of the `models` section (`benchmarks.models`: vit_s / effnet_b0,
  batch 4 of 1x32x128x128); peer: MONAI.
`--smoke`: the tiny variants. Writes OUT/profile_models.json and .md and prints the tables.

1. Op profile of one whole step. lumbar_jax: after an untimed warm-up, the compiled step runs once under
   `jax.profiler.trace(..., create_perfetto_trace=True)`; every XLA:CPU thunk of it is matched to its HLO
   instruction and grouped by kind (dense matmul, batched matmul such as attention's QK^T and PV, convolution,
   while loop, transpose/copy, other fusion: elementwise and reductions) and listed by (kind, output shape, JAX
   op name). Peer: the step under `torch.profiler`, self CPU time by aten op, grouped into the same kinds.
   Shares are of the summed op time. Caveat: XLA:CPU runs plain Eigen `dot` thunks asynchronously (the trace
   shows their launch; the work overlaps the thunks that follow), so 'dense matmul' is under-counted on the
   lumbar_jax side by what was attributed to its neighbours; the YNN fusions (`ynn_fusion.*`) are synchronous.
2. Component table (with `vit` only): one encoder block and its parts (LayerNorm, attention = qkv +
   softmax(QK^T)V + proj, MLP = fc1 + GELU + fc2) on `[4, 513, 384]` tokens, lumbar_jax's
   `lumbar_jax.models.transformer` modules against MONAI's `TransformerBlock` / `SABlock` / `MLPBlock` /
   `nn.LayerNorm`: forward and forward+backward (sum of squares of the output), interleaved medians.
Without the peer's packages its columns say "not installed".
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

from benchmarks import common, models, two_stage
from lumbar_jax import cli, huge_pages

ONE_STAGE = ("vit", "effnet")  # the one-stage 3D encoders, against MONAI (benchmarks.models)
MODELS = two_stage.MODELS + ONE_STAGE
KINDS = ("dense matmul", "batched matmul", "convolution", "while loop", "transpose/copy", "other fusion")
TOP_OPS = 12
COMPONENT_REPEATS = {"full": 7, "smoke": 1}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------- lumbar_jax
def _hlo_index(hlo_text: str) -> tuple[dict[str, dict], dict[str, str]]:
    """({instruction name: {'shape', 'op_name', 'calls', 'text'}}, {computation name: body text})."""
    instructions, computations, current, body = {}, {}, None, []
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(", line)
        if head:
            current, body = head.group(1), []
        elif current and line.startswith("}"):
            computations[current], current = "\n".join(body), None
        elif current:
            body.append(line)
        inst = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) (.*)$", line)
        if inst:
            op = re.search(r'op_name="([^"]+)"', line)
            calls = re.search(r"calls=%([\w.\-]+)", line)
            instructions[inst.group(1)] = {
                "shape": re.sub(r"\{[\d,]*\}", "", inst.group(2)),
                "op_name": re.sub(r"^jit\(\w+\)/", "", op.group(1)) if op else "",
                "calls": calls.group(1) if calls else None, "text": inst.group(3)}
    return instructions, computations


def _hlo_kind(name: str, instructions: dict, computations: dict) -> str:
    inst = instructions.get(name, {"text": "", "calls": None})
    text = inst["text"] + "\n" + computations.get(inst["calls"] or "", "")
    if name.startswith("while"):
        return "while loop"
    if re.search(r"\bconvolution\(", text):
        return "convolution"
    if re.search(r"\bdot\(", text):
        return "batched matmul" if "lhs_batch_dims" in text else "dense matmul"
    if name.startswith(("copy", "transpose")):
        return "transpose/copy"
    return "other fusion"


def _thunk_times(trace_dir: str, window: str) -> dict[str, float]:
    """{thunk name: seconds} of the XLA:CPU thunks inside the last `window`-named Python event of the trace,
    leaving out thunks nested in a while loop (the loop's own event covers them)."""
    path = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz")))[-1]
    with gzip.open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("ph") == "X" and window in e["name"]]
    start, end = spans[-1]
    per_thread: dict[tuple, list] = collections.defaultdict(list)
    for e in events:
        thread = threads.get((e.get("pid"), e.get("tid")), "")
        if (e.get("ph") == "X" and "XLA" in thread and start <= e["ts"] <= end
                and not e["name"].startswith(("ThunkExecutor", "SlinkyThreadPool", "end: "))):
            per_thread[(e["pid"], e["tid"])].append(e)
    times: dict[str, float] = collections.Counter()
    for thread_events in per_thread.values():
        loop_end = -1.0
        for e in sorted(thread_events, key=lambda e: (e["ts"], -e["dur"])):
            if e["ts"] < loop_end:
                continue  # inside a while loop counted as a whole
            if e["name"].startswith("while"):
                loop_end = e["ts"] + e["dur"]
            times[e["name"]] += e["dur"] / 1e6
    return times


def _jax_profile(fn, hlo_text: str, trace_dir: str) -> dict[str, Any]:
    """Op profile of one call of `fn` (a compiled step, warmed up) whose optimised HLO is `hlo_text`."""
    import jax

    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        start = time.perf_counter()
        with jax.profiler.TraceAnnotation("profiled_step"):
            fn()
        wall = time.perf_counter() - start
    instructions, computations = _hlo_index(hlo_text)
    ops: dict[tuple, float] = collections.Counter()
    counts: dict[tuple, int] = collections.Counter()
    for name, seconds in _thunk_times(trace_dir, "profiled_step").items():
        inst = instructions.get(name, {"shape": "?", "op_name": "?"})
        key = (_hlo_kind(name, instructions, computations), inst["shape"], inst["op_name"])
        ops[key] += seconds
        counts[key] += 1
    return {"wall_s": wall, "ops": [{"kind": k, "shape": s, "op": o, "seconds": t, "count": counts[(k, s, o)]}
                                    for (k, s, o), t in ops.most_common()]}


# --------------------------------------------------------------------------------------------------- peer
def _torch_kind(op: str) -> str:
    name = op.split("::")[-1]
    if name in ("bmm", "baddbmm"):
        return "batched matmul"
    if name in ("mm", "addmm", "matmul", "linear"):
        return "dense matmul"
    if "conv" in name:
        return "convolution"
    if name in ("copy_", "transpose", "permute", "contiguous", "clone"):
        return "transpose/copy"
    return "other fusion"


def _torch_profile(fn) -> dict[str, Any]:
    """Op profile of one call of `fn` (a PyTorch step, warmed up): self CPU time per aten op."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall = time.perf_counter() - start
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0 and e.key.startswith("aten::")]
    return {"wall_s": wall, "ops": sorted(({"kind": _torch_kind(e.key), "shape": "", "op": e.key,
                                            "seconds": e.self_cpu_time_total / 1e6, "count": e.count}
                                           for e in events), key=lambda o: -o["seconds"])}


# ------------------------------------------------------------------------------------------------- models
@dataclasses.dataclass
class ModelSteps:
    """One model's steps on both sides: {'train' | 'inference': thunk}, ours with their compiled HLO."""

    name: str  # the model as the tables name it
    ours: dict[str, Callable[[], Any]]
    hlo_text: Callable[[str], str]  # step -> our step's optimised HLO text
    peer_name: str
    peer: dict[str, Callable[[], Any]] | None  # None: the peer's packages are not installed


def _model_steps(model: str, smoke: bool) -> ModelSteps:
    """The steps of `model` (one of MODELS) as its benchmark section builds them (see the module docstring)."""
    if model in ONE_STAGE:
        p = models.SMOKE if smoke else models.FULL
        train, inference, info = models._jax_steps(models.jax_encoder(model, p[model], p), p["batch"], p["shape"])
        peer = None
        if common.peer_status()["available"]:
            common.setup_torch()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", module=r"monai(\.|$)")
                peer_train, peer_inference, _ = models._torch_steps(models._torch_model(model, p), p["batch"],
                                                                    p["shape"])
            peer = {"train": peer_train, "inference": peer_inference}
        return ModelSteps(p[model], {"train": train, "inference": inference},
                          lambda step: info["compiled"][step].as_text(), "MONAI", peer)
    config = models.two_stage_config(smoke)
    arrays, eval_inputs = two_stage.model_inputs(model, config)
    ours, module = two_stage.our_side(model, config, arrays, eval_inputs)
    peer = None
    if two_stage.peer_status()["available"]:
        common.setup_torch()
        side = two_stage.peer_side(model, config, module, arrays, eval_inputs, compiled=False, channels_last=False)
        peer = {"train": side.train, "inference": side.infer}
    return ModelSteps(two_stage.describe(model, config), {"train": ours.train, "inference": ours.infer},
                      lambda step: ours.hlo_text("train" if step == "train" else "infer"),
                      "PyTorch + timm (eager)", peer)


# ------------------------------------------------------------------------------------------- components
def _component_rows(smoke: bool, peer_available: bool) -> list[dict[str, Any]]:
    """Forward and forward+backward ms of one ViT block and its parts, lumbar_jax vs MONAI (see docstring)."""
    import numpy as np

    from lumbar_jax.models.vit import VIT_VARIANTS

    v = VIT_VARIANTS[models.SMOKE["vit"] if smoke else "vit_s"]
    tokens = 2 if smoke else 1 + 8 * 8 * 8  # cls + (32/4) x (128/16)^2 patches
    width, hidden = v.width, int(v.width * v.mlp_ratio)
    x = np.random.default_rng(0).standard_normal((4, tokens, width), np.float32)
    fns, names = _jax_component_steps(width, hidden, v.num_heads, x)
    if peer_available:
        fns.update(_monai_component_steps(names, width, hidden, v.num_heads, x))
    repeats = COMPONENT_REPEATS["smoke" if smoke else "full"]
    keyed = {"|".join(k): f for k, f in fns.items()}
    timings = common.measure_interleaved(keyed, items={k: 1 for k in keyed}, repeats=repeats, warmup=1)
    rows = []
    for name in names:
        for direction in ("forward", "forward+backward"):
            mine = timings[f"{name}|{direction}|lumbar_jax"].median_s * 1e3
            peer = timings.get(f"{name}|{direction}|MONAI")
            peer_ms = peer.median_s * 1e3 if peer is not None else None
            rows.append({"component": name, "direction": direction, "lumbar_jax_ms": mine, "monai_ms": peer_ms,
                         "ratio": peer_ms / mine if peer_ms else None})
    return rows


def _jax_component_steps(width: int, hidden: int, heads: int, x) -> tuple[dict[tuple, Any], list[str]]:
    """({(component, direction, 'lumbar_jax'): step}, component names): lumbar_jax.models.transformer's
    LayerNorm, Attention, Mlp and Block, jitted forward and gradient of the sum of squares of the output."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lumbar_jax.models import resolve_kernels, transformer

    rngs = nnx.Rngs(0)
    kernels = resolve_kernels("auto")
    block = transformer.BlockConfig(width, heads)
    ours = {
        "layernorm": transformer.layer_norm(width, dtype=None, param_dtype=jnp.float32, rngs=rngs),
        "attention (qkv, softmax(QK^T)V, proj)": transformer.Attention(block, kernels=kernels, rngs=rngs),
        "mlp (fc1, GELU, fc2)": transformer.Mlp((width, hidden, width), rngs=rngs),
        "block (all of the above + residuals)": transformer.Block(block, kernels=kernels, rngs=rngs),
    }
    fns: dict[tuple, Any] = {}
    xj = jnp.asarray(x)
    for name, module in ours.items():
        graphdef, state = nnx.split(module)
        forward = jax.jit(lambda s, x, g=graphdef: nnx.merge(g, s)(x))
        grad = jax.jit(jax.grad(lambda s, x, g=graphdef: (nnx.merge(g, s)(x) ** 2).sum(), argnums=(0, 1)))
        fns[(name, "forward", "lumbar_jax")] = lambda f=forward, s=state: jax.block_until_ready(f(s, xj))
        fns[(name, "forward+backward", "lumbar_jax")] = lambda f=grad, s=state: jax.block_until_ready(f(s, xj))
    return fns, list(ours)


def _monai_component_steps(names: list[str], width: int, hidden: int, heads: int, x) -> dict[tuple, Any]:
    """{(component, direction, 'MONAI'): step}: MONAI's nn.LayerNorm, SABlock, MLPBlock and TransformerBlock
    in the order of `names`, forward under no_grad and backward of the sum of squares of the output."""
    import torch
    from monai.networks.blocks import MLPBlock, SABlock, TransformerBlock

    common.setup_torch()
    theirs = dict(zip(names, (torch.nn.LayerNorm(width), SABlock(width, heads), MLPBlock(width, hidden, 0.0),
                              TransformerBlock(width, hidden, heads))))
    xt = torch.from_numpy(x).requires_grad_()
    fns: dict[tuple, Any] = {}
    for name, module in theirs.items():
        def forward(m=module):
            with torch.no_grad():
                m(xt)

        def grad(m=module):
            m.zero_grad(set_to_none=True)
            xt.grad = None
            (m(xt) ** 2).sum().backward()

        fns[(name, "forward", "MONAI")] = forward
        fns[(name, "forward+backward", "MONAI")] = grad
    return fns


# ---------------------------------------------------------------------------------------------- reporting
def _kind_shares(ops: list[dict]) -> dict[str, float]:
    total = sum(o["seconds"] for o in ops) or 1.0
    shares = collections.Counter()
    for o in ops:
        shares[o["kind"]] += o["seconds"] / total
    return {k: shares.get(k, 0.0) for k in KINDS}


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# Model step profiles (benchmarks/profile_models.py)", "",
             f"{results['machine']['cpu_model']}, {results['machine']['cores']} cores, load average "
             f"{results['machine']['loadavg_start']} at the start, git {results['machine']['git_commit']}, "
             f"{results['machine']['date']}"]
    for prof in results["profiles"]:
        ours, peer, peer_name = prof["lumbar_jax"], prof.get("peer"), prof["peer_name"]
        lines += ["", f"## {prof['model']} {prof['step']}", "",
                  f"Step wall time under the profiler: lumbar_jax {ours['wall_s'] * 1e3:.0f} ms"
                  + (f", {peer_name} {peer['wall_s'] * 1e3:.0f} ms" if peer else f", {peer_name} not installed"), "",
                  f"| kind | lumbar_jax share (ms) | {peer_name} share (ms) |", "|---|---|---|"]
        sums = {side: collections.Counter() for side in ("ours", "peer")}
        for side, data in (("ours", ours), ("peer", peer)):
            for o in (data or {}).get("ops", []):
                sums[side][o["kind"]] += o["seconds"]
        shares = {"ours": _kind_shares(ours["ops"]), "peer": _kind_shares(peer["ops"]) if peer else None}
        for kind in KINDS:
            cell = f"{shares['ours'][kind]:.0%} ({sums['ours'][kind] * 1e3:.0f})"
            peer_cell = f"{shares['peer'][kind]:.0%} ({sums['peer'][kind] * 1e3:.0f})" if peer else "-"
            lines.append(f"| {kind} | {cell} | {peer_cell} |")
        sides = (("ours", ours, "lumbar_jax (XLA:CPU thunks)"), ("peer", peer, f"{peer_name} (aten ops)"))
        for side, data, title in sides:
            if not data:
                continue
            lines += ["", f"Top ops, {title}:", "", "| ms | count | kind | shape | op |", "|---|---|---|---|---|"]
            for o in data["ops"][:TOP_OPS]:
                lines.append(f"| {o['seconds'] * 1e3:.1f} | {o['count']} | {o['kind']} | {o['shape'][:40]} | "
                             f"{o['op'][:70]} |")
    if results.get("components"):
        lines += ["", "## ViT block components, batch 4 x tokens x width (ms, median)", "",
                  "| component | direction | lumbar_jax | MONAI | MONAI / lumbar_jax |", "|---|---|---|---|---|"]
        for r in results["components"]:
            peer = f"{r['monai_ms']:.1f}" if r["monai_ms"] else "not installed"
            ratio = f"**{r['ratio']:.2f}x**" if r["ratio"] else "-"
            lines.append(f"| {r['component']} | {r['direction']} | {r['lumbar_jax_ms']:.1f} | {peer} | {ratio} |")
    return "\n".join(lines) + "\n"


def _names(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        if not names or any(n not in choices for n in names):
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}; got {text!r}")
        return names
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = cli.argument_parser("python -m benchmarks.profile_models", __doc__)
    parser.add_argument("--models", type=_names(MODELS), default=",".join(two_stage.MODELS),
                        help=f"comma-separated models to profile, of {','.join(MODELS)} (the component table: "
                             "with vit only)")
    parser.add_argument("--steps", type=_names(("train", "inference")), default="train,inference",
                        help="comma-separated steps to profile, of train,inference")
    parser.add_argument("--smoke", action="store_true", help="tiny models and sizes: checks that it runs")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"),
                        help="directory for profile_models.json and profile_models.md")
    args = parser.parse_args(argv)
    results = profile(args.models, args.steps, args.smoke)
    os.makedirs(args.out, exist_ok=True)
    text = _markdown(results)
    with open(os.path.join(args.out, "profile_models.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(os.path.join(args.out, "profile_models.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def profile(model_names: list[str], steps: list[str], smoke: bool) -> dict[str, Any]:
    """The op profiles of each model's steps and (with vit) the component table, with the machine's details."""
    results: dict[str, Any] = {"machine": common.machine_info(REPO), "profiles": []}
    with tempfile.TemporaryDirectory(prefix="profile_models_") as workdir:
        for model in model_names:
            m = _model_steps(model, smoke)
            for step in steps:
                print(f"profiling {m.name} {step} ...", flush=True)
                m.ours[step]()  # warm-up: compiled, buffers allocated
                entry = {"model": m.name, "step": step, "peer_name": m.peer_name,
                         "lumbar_jax": _jax_profile(m.ours[step], m.hlo_text(step),
                                                    os.path.join(workdir, f"jax_{model}_{step}"))}
                if m.peer is not None:
                    m.peer[step]()
                    entry["peer"] = _torch_profile(m.peer[step])
                results["profiles"].append(entry)
    if "vit" in model_names:
        print("timing ViT block components ...", flush=True)
        results["components"] = _component_rows(smoke, common.peer_status()["available"])
    return results


if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages("benchmarks.profile_models")  # as benchmarks.run and the main job
    sys.exit(cli.run(main))
