"""Run the lumbar_jax benchmark suite: one Markdown table and one JSON, every figure a ratio against a peer
measured in the same run on the same machine (MONAI on PyTorch CPU, PyTorch + timm for the two-stage models,
or the 1-worker / in-process baseline).

    python -m benchmarks.run [--smoke] [--only data,pipeline,models,two_stage] [--out benchmarks/results]

Writes OUT/results.json and OUT/results.md and prints the table. `--smoke` runs every section on tiny sizes
in seconds (CI; its figures mean nothing). Without torch/monai installed (`pip install -e ".[bench]"`) the
lumbar_jax side is still measured and the peer columns say "not installed". Exit status 1 when a section
failed (its error is in both files), else 0. Sections: see benchmarks/data.py, pipeline.py, models.py,
two_stage.py. Like the main job, the command re-executes itself once with glibc's huge-page tunable
(lumbar_jax/huge_pages.py), so both sides' step buffers are served as the job's are.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import traceback

from lumbar_jax import cli, huge_pages

SECTIONS = ("data", "pipeline", "models", "two_stage")
PEER_SECTIONS = {"data", "models"}  # sections that run MONAI (pipeline's peer comes from the models section)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "benchmarks", "results")


def _sections(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown or text!r}; choose from {','.join(SECTIONS)}")
    return [s for s in SECTIONS if s in names]  # suite order


def parse_args(argv: list[str] | None):
    parser = cli.argument_parser("python -m benchmarks.run", __doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that everything runs")
    parser.add_argument("--only", type=_sections, default=",".join(SECTIONS),
                        help="comma-separated sections to run, of " + ",".join(SECTIONS))
    parser.add_argument("--out", default=DEFAULT_OUT, help="directory for results.json and results.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the builder's and generator's progress bars (workers inherit)

    from benchmarks import common

    started = time.perf_counter()
    machine = common.machine_info(REPO)
    if PEER_SECTIONS & set(args.only):
        peer = common.peer_status()
        if peer["available"]:
            peer["torch_threads"] = common.setup_torch()
    else:
        peer = {"available": False, "reason": "not used by the selected sections", "name": "MONAI (not used)"}

    sections: dict[str, dict] = {}
    failed = False
    with tempfile.TemporaryDirectory(prefix="lumbar_jax_bench_") as workdir:
        ctx = common.Context(smoke=args.smoke, workdir=workdir, repo=REPO, peer=peer)
        for name in args.only:
            start = time.perf_counter()
            print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
            try:
                section = importlib.import_module(f"benchmarks.{name}").run(ctx)
            except Exception as err:  # report the failure in the results, run the other sections
                failed = True
                traceback.print_exc()
                section = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(), "rows": []}
            section["seconds"] = round(time.perf_counter() - start, 2)
            sections[name] = section
            print(f"[benchmarks] {name} done in {section['seconds']} s", file=sys.stderr, flush=True)

    machine["loadavg_end"] = common.loadavg()
    results = {
        "schema_version": common.SCHEMA_VERSION,
        "command": "python -m benchmarks.run" + (" " + " ".join(argv) if argv else ""),
        "smoke": args.smoke,
        "sections_run": args.only,
        "machine": machine,
        "peer": peer,
        "sections": sections,
        "total_seconds": round(time.perf_counter() - started, 2),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=_json_default)
        f.write("\n")
    table = common.markdown(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"[benchmarks] wrote {os.path.join(args.out, 'results.json')} and results.md "
          f"in {results['total_seconds']} s", file=sys.stderr)
    return 1 if failed else 0


def _json_default(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    # as the main job runs: XLA:CPU's step buffers (and the peer's, in the same process) on huge pages
    huge_pages.reexec_with_huge_pages("benchmarks.run")
    sys.exit(cli.run(main))
