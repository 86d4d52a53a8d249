"""What one CUDA GPU does with lumbar_jax's GPU variants: one command, under 10 minutes, one table.

    python -m benchmarks.gpu [--smoke] [--out benchmarks/results/gpu] [--sections machine,steps,peer,train]

Why: the CPU suite (`python -m benchmarks.run`) measures the CPU default. The `:r128` / `:r256` variants are
sized for accelerators; whether they use one well (MFU), how they compare with MONAI there, and whether a real
training run works on one can only be measured on a GPU. Sections:

- machine: device name and memory; jax, jaxlib, flax (and the peer's) versions; the device's bf16 and f32
  matmul rate, measured now (one square matmul, 16384 on a side, JAX's default precision: TF32 for f32 on
  NVIDIA tensor cores). Every MFU figure is read against the rate of its own dtype from the same run.
- steps (benchmarks/gpu_steps.py): train-step throughput of configs/vit_effnet_one_stage.py `:r128` and `:r256`, then
  (within a time budget) configs/vit.py and configs/effnet.py, in bfloat16 and float32: records/s, median step
  time, compile time, device memory, achieved FLOP/s (XLA's cost analysis) and MFU. Target: the r256 ViT-B
  step (configs/vit.py:r256) at >= 40 % MFU in bfloat16.
- peer (benchmarks/gpu_steps.py): where torch and monai import, benchmarks/models.py's MONAI ViT and
  EfficientNetBN on the same device against the same lumbar_jax encoders, as ratios; target >= 1.5x.
- train (benchmarks/gpu_train.py): about 200 steps of one fold of `configs/vit_effnet_one_stage.py:r128` on a
  synthetic r128 set in bfloat16, through the main job (`cross_validate`); then the best checkpoint is restored
  and evaluated (`evaluate_run`). Pass/fail lines: the loss falls, no NaN, the restored score is the run's.

Timing: benchmarks/common.py's method (warm-up calls untimed, median of timed repetitions; every call ends in
`jax.block_until_ready` / `torch.cuda.synchronize`). Run order: machine, train, peer, steps; no row starts
after `--budget-s` (default 8 minutes), optional rows are left out earlier. Writes OUT/gpu.json and OUT/gpu.md
after every row (a run cut short keeps what it measured) and prints the table. `--smoke` (automatic when JAX has no GPU
backend) runs every section on tiny shapes, in about a minute on a 2-core CPU: CI checks that it all runs; its
figures mean nothing. Exit status 1 when a section failed (its error is in both files), else 0.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback

from lumbar_jax import cli

SECTIONS = ("machine", "steps", "peer", "train")  # report order
# The training check first (its pass/fail lines matter most); the peer before the steps: torch's memory is
# released before JAX's allocator grows to the largest step (the allocator keeps what it grew to).
RUN_ORDER = ("machine", "train", "peer", "steps")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "benchmarks", "results", "gpu")
MATMUL_N = {"full": 16384, "smoke": 256}
MATMUL_REPEATS = {"full": 10, "smoke": 2}
VERSIONS = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint",
            "numpy", "torch", "monai")


def _sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise ValueError(f"--sections: unknown section(s) {unknown or text!r}; choose from {','.join(SECTIONS)}")
    return names


def parse_args(argv):
    parser = cli.argument_parser("python -m benchmarks.gpu", __doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes, about a minute on a CPU (automatic when JAX has no GPU backend)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory for gpu.json and gpu.md")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated sections to run")
    parser.add_argument("--cache", default="",
                        help="scratch directory for the train section's synthetic set and run "
                             "(default: a temporary directory, deleted at the end)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="wall-clock seconds of the whole command: no row starts after them, and the optional "
                             "rows (peer: after half of them, steps: after 85 %%) are left out first")
    parser.add_argument("--batch", default="",
                        help="per-variant train-step batch overrides of the steps section, e.g. r128=16,r256=2")
    args = parser.parse_args(argv)
    args.sections = _sections(args.sections)
    try:
        args.batch = {k: int(v) for k, v in (item.split("=") for item in args.batch.split(",") if item)}
    except ValueError:
        raise ValueError(f"--batch {args.batch!r}: expected VARIANT=N[,VARIANT=N]") from None
    return args


# ------------------------------------------------------------------------------------------------ machine
def machine_section(ctx) -> dict:
    import jax

    from benchmarks import common

    device = jax.devices()[0]
    stats = device.memory_stats() or {}  # None on CPU
    limit = stats.get("bytes_limit")
    return {
        "device": device.device_kind, "platform": device.platform, "backend": jax.default_backend(),
        "device_count": jax.device_count(), "memory_gib": limit / 2**30 if limit else None,
        "versions": {p: common._version(p) for p in VERSIONS},
        "matmul": {dtype: ctx.matmul(dtype) for dtype in ("bfloat16", "float32")},
        "host": {k: v for k, v in common.machine_info(REPO).items() if k != "gpu"},
    }


class Context:
    """What the sections share: mode, directories, the time budget, the matmul rates, progress reports."""

    def __init__(self, smoke: bool, cache: str, budget_s: float, batch: dict[str, int], record=None):
        self.smoke, self.cache, self.batch = smoke, cache, batch
        self.budget_s, self.started = budget_s, time.perf_counter()
        self.section = ""  # the running section
        self._record = record or (lambda name, section: None)
        self._matmul: dict[str, dict] = {}

    def matmul(self, dtype: str) -> dict:
        from benchmarks import common

        if dtype not in self._matmul:
            mode = "smoke" if self.smoke else "full"
            self._matmul[dtype] = common.matmul_rate(dtype, MATMUL_N[mode], MATMUL_REPEATS[mode])
        return self._matmul[dtype]

    def may_start(self, required: bool, optional_share: float) -> bool:
        """Whether a row may start now: a required one while the command's time budget lasts, an optional one
        while less than `optional_share` of it is spent."""
        return time.perf_counter() - self.started < self.budget_s * (1.0 if required else optional_share)

    def progress(self, partial: dict) -> None:
        """The running section so far (written out, so that a run cut short keeps its finished rows)."""
        self._record(self.section, {**partial, "partial": True})


# ----------------------------------------------------------------------------------------------- Markdown
def _fmt(value, spec: str = ".3g", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _machine_md(m: dict) -> list[str]:
    v, host = m["versions"], m["host"]
    rates = ", ".join(f"{dtype} {r['tflop_per_s']:.4g} TFLOP/s" for dtype, r in m["matmul"].items())
    n = next(iter(m["matmul"].values()))["n"]
    return [f"- device: {m['device']} ({m['backend']}, {m['device_count']} device(s)), memory "
            f"{_fmt(m['memory_gib'], '.1f', 'not reported')} GiB; host {host['cpu_model']}, {host['cores']} cores",
            "- versions: " + ", ".join(f"{p} {ver}" for p, ver in v.items() if ver != "not installed"),
            f"- matmul rate now ({n}x{n} @ {n}x{n}, median): {rates}"]


def _steps_md(section: dict) -> list[str]:
    lines = ["| config | dtype | batch | records/s | step ms (median) | compile s | memory GiB (XLA step / "
             "process peak) | TFLOP/s | MFU | target |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in section["rows"]:
        if r["status"] != "measured":
            status = r["status"].replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['config']} | {r['dtype']} | {r['batch']} | {status} | | | | | | |")
            continue
        target = "-" if not r["target_text"] else r["target_text"] + (
            "" if r["target_met"] is None else (" met" if r["target_met"] else " MISSED"))
        lines.append(f"| {r['config']} | {r['dtype']} | {r['batch']} | {r['records_per_s']:.4g} "
                     f"| {r['median_step_s'] * 1e3:.4g} | {r['compile_s']:.1f} "
                     f"| {_fmt(r['xla_memory_gib'], '.2f')} / {_fmt(r['peak_memory_gib'], '.2f')} "
                     f"| {_fmt(r['tflop_per_s'])} | {_fmt(r['mfu'], '.1%')} | {target} |")
    return lines + [""] + [f"- {note}" for note in section.get("notes", [])]


def _peer_md(section: dict) -> list[str]:
    from benchmarks import common

    lines = [f"| benchmark | lumbar_jax | peer ({section['peer_name']}) | ratio | target |", "|---|---|---|---|---|"]
    for r in section["rows"]:
        lines.append(f"| {r['name']} | {common._cell(r['lumbar_jax'], r['unit'])} | "
                     f"{common._cell(r['peer'], r['unit'])} | {common._ratio_cell(r)} "
                     f"| {common._target_cell(r, section['smoke'])} |")
    return lines + [""] + [f"- {note}" for note in section.get("notes", [])]


def _train_md(section: dict) -> list[str]:
    lines = [f"- {section['description']}"]
    lines += [f"- **{'PASS' if c['passed'] else 'FAIL'}** {c['name']}: {c['detail']}" for c in section["checks"]]
    return lines


def markdown(results: dict) -> str:
    title = "# lumbar_jax GPU benchmark" + (" (smoke: tiny shapes, figures meaningless)" if results["smoke"] else "")
    lines = [title, "", f"- command: `{results['command']}`",
             f"- date: {results['date']}; git {results['git_commit'] or 'unknown'}; {results['total_seconds']} s",
             "- method: warm-up calls untimed, then the median of timed repetitions (`time.perf_counter`, every "
             "call synchronised); MFU = FLOPs per step (XLA's cost analysis of the lowered step) / median step "
             "time / the matmul rate of the same dtype measured in this run", ""]
    render = {"machine": _machine_md, "steps": _steps_md, "peer": _peer_md, "train": _train_md}
    for name in SECTIONS:
        section = results["sections"].get(name)
        if section is None:
            continue
        lines += [f"## {name}", ""]
        if section.get("error"):
            lines += [f"**failed**: `{section['error']}`", ""]
            continue
        if section.get("partial"):
            lines += ["*partial: the command stopped during this section*", ""]
        if section.get("skipped"):
            lines += [f"skipped: {section['skipped']}", ""]
        else:
            lines += render[name](section) + [""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------------- run
def _run_section(name: str, ctx: Context) -> dict:
    from benchmarks import gpu_steps, gpu_train

    run = {"machine": machine_section, "steps": gpu_steps.steps_section, "peer": gpu_steps.peer_section,
           "train": gpu_train.train_section}[name]
    start = time.perf_counter()
    print(f"[benchmarks.gpu] {name} ...", file=sys.stderr, flush=True)
    try:
        section = run(ctx)
    except Exception as err:  # report the failure, run the other sections
        traceback.print_exc()
        section = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    section["seconds"] = round(time.perf_counter() - start, 1)
    print(f"[benchmarks.gpu] {name} done in {section['seconds']} s", file=sys.stderr, flush=True)
    return section


def _write(results: dict, out: str) -> str:
    from benchmarks.run import _json_default

    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu.json"), "w") as f:
        json.dump(results, f, indent=1, default=_json_default)
        f.write("\n")
    table = markdown(results)
    with open(os.path.join(out, "gpu.md"), "w") as f:
        f.write(table)
    return table


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    cli.setup_logging()
    os.environ.setdefault("TQDM_DISABLE", "1")
    # Grow JAX's device memory as needed instead of taking 75 % at start: the peer (torch) shares the device.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    from benchmarks import common

    smoke = args.smoke or jax.default_backend() != "gpu"
    if smoke and not args.smoke:
        print(f"[benchmarks.gpu] no GPU backend ({jax.default_backend()}): smoke mode", file=sys.stderr)
    started = time.perf_counter()
    results = {"schema_version": common.SCHEMA_VERSION, "command": " ".join(["python -m benchmarks.gpu", *argv]),
               "smoke": smoke, "sections_run": args.sections, "git_commit": common._git_commit(REPO),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sections": {}}
    def record(name: str, section: dict) -> str:
        results["sections"][name] = section
        results["sections"] = {s: results["sections"][s] for s in SECTIONS if s in results["sections"]}
        results["total_seconds"] = round(time.perf_counter() - started, 1)
        return _write(results, args.out)

    with tempfile.TemporaryDirectory(prefix="lumbar_jax_gpu_") as scratch:
        ctx = Context(smoke, args.cache or scratch, args.budget_s, args.batch, record)
        for name in [s for s in RUN_ORDER if s in args.sections]:
            ctx.section = name
            table = record(name, _run_section(name, ctx))
    print(table)
    print(f"[benchmarks.gpu] wrote {os.path.join(args.out, 'gpu.json')} and gpu.md in {results['total_seconds']} s",
          file=sys.stderr)
    return 1 if any("error" in s for s in results["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
