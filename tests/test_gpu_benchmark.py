"""`python -m benchmarks.gpu --smoke` runs every section on the CPU and writes its table and JSON.

No timing is asserted: only that each section ran our code with the expected keys, that the short training
logged finite losses and its restored checkpoint scores what the run scored, and that `--help` answers
without importing JAX.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

STEP_KEYS = {"id", "config", "dtype", "batch", "status", "records_per_s", "median_step_s", "compile_s", "params",
             "flops", "compiled_flops", "tflop_per_s", "mfu", "xla_memory_gib", "peak_memory_gib", "timing",
             "target", "target_met"}
PEER_ROW_KEYS = {"id", "name", "unit", "lumbar_jax", "peer", "ratio", "target", "target_met"}
TRAIN_KEYS = {"description", "losses", "first_loss", "last_loss", "run_score", "restored_score", "checks",
              "passed", "train_s", "evaluate_s", "records_per_s"}


def _peer_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "monai"))


def test_smoke_run_writes_every_section(tmp_path, monkeypatch):
    from benchmarks import gpu

    monkeypatch.setenv("TQDM_DISABLE", "1")
    out = tmp_path / "out"
    assert gpu.main(["--smoke", "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    results = json.loads((out / "gpu.json").read_text())
    assert results["smoke"] is True and list(results["sections"]) == list(gpu.SECTIONS)
    sections = results["sections"]
    for name, section in sections.items():
        assert "error" not in section, section.get("traceback")

    machine = sections["machine"]
    assert {"device", "platform", "memory_gib", "versions", "matmul", "host"} <= set(machine)
    assert {"jax", "jaxlib", "flax"} <= set(machine["versions"])
    assert set(machine["matmul"]) == {"bfloat16", "float32"}
    assert all(r["flop_per_s"] > 0 for r in machine["matmul"].values())

    (row,) = sections["steps"]["rows"]
    assert STEP_KEYS <= set(row) and row["status"] == "measured"
    assert row["records_per_s"] > 0 and row["flops"] > 0 and 0 < row["mfu"]

    peer = sections["peer"]
    if _peer_installed():
        assert peer["rows"] and all(PEER_ROW_KEYS <= set(r) and r["ratio"] > 0 for r in peer["rows"])
    else:
        assert peer["rows"] == [] and "not installed" in peer["skipped"]

    train = sections["train"]
    assert TRAIN_KEYS <= set(train)
    assert train["losses"] and all(x is not None and x == x for x in train["losses"])  # finite (null = not)
    assert train["restored_score"] == pytest.approx(train["run_score"], abs=1e-4)
    assert train["passed"] and {c["name"] for c in train["checks"]} >= {"no NaN",
                                                                        "the checkpoint restores and evaluates"}

    table = (out / "gpu.md").read_text()
    assert table.startswith("# lumbar_jax GPU benchmark")
    assert all(f"## {name}" in table for name in gpu.SECTIONS)
    assert "| config | dtype | batch | records/s |" in table and "| vit:smoke | bfloat16 | 2 |" in table
    assert "**PASS** the checkpoint restores and evaluates" in table


def test_help_does_not_import_jax_and_bad_sections_exit_2():
    code = ("import sys, contextlib, io\n"
            "from benchmarks import gpu\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        gpu.main(['--help'])\n    except SystemExit:\n        pass\n"
            "from lumbar_jax import cli\n"
            "print('jax' in sys.modules, cli.run(gpu.main, ['--sections', 'steps,nope']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "2"]
    assert "unknown section" in proc.stderr
