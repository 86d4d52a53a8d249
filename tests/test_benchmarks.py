"""The benchmark suite (`python -m benchmarks.run --smoke`) runs and writes its table and JSON.

Timings are never asserted (CI machines are shared and noisy): only that every section runs our code, the
files exist with the expected keys, and the peer columns say "not installed" when torch/monai are missing.
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

EXPECTED_ROWS = {
    "data": ["data.load_study", "data.load_study_uint8", "data.load_study_kaggle", "data.cpu_capacity",
             "data.build_1w", "data.build_2w", "data.build_scaling", "data.build_scaling_steady"],
    "pipeline": ["pipeline.in_process", "pipeline.workers", "pipeline.worker_scaling", "pipeline.crop_pipeline"],
    "models": ["models.vit_s.train_step", "models.vit_s.inference", "models.effnet_b0.train_step",
               "models.effnet_b0.inference", "models.fused.smoke"],
    "two_stage": ["two_stage.localiser.train", "two_stage.localiser.infer", "two_stage.crop_classifier.train",
                  "two_stage.crop_classifier.infer", "two_stage.study"],
}
ROW_KEYS = {"id", "name", "unit", "lumbar_jax", "peer", "ratio", "ratio_best", "ratio_of", "peer_label", "target",
            "target_text", "target_met", "note"}
PEER_ROWS = ("data.load_study", "data.load_study_uint8", "data.load_study_kaggle")  # rows whose peer is MONAI
TRAIN_STEP_ROWS = ("models.fused.smoke",)  # no peer
# rows whose peer is one of those train steps (always measured): the pipelines against what training consumes
TRAIN_STEP_PEER_ROWS = ("pipeline.in_process", "pipeline.workers", "pipeline.crop_pipeline")


# rows computed as (N - n0) / (t(N) - t(n0)): "not resolvable" when the timings do not separate
DIFFERENCE_ROWS = {"data.build_scaling_steady"}


def _peer_installed(names=("torch", "monai")) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in names)


def _check_results(out_dir, sections, peer_installed):
    with open(os.path.join(out_dir, "results.json")) as f:
        results = json.load(f)
    assert {"schema_version", "command", "smoke", "machine", "peer", "sections", "total_seconds"} <= set(results)
    assert results["smoke"] is True
    machine = results["machine"]
    assert {"cpu_model", "cores", "date", "versions", "loadavg_start", "loadavg_end", "gpu"} <= set(machine)
    assert {"jax", "torch", "monai", "numpy", "grain", "pydicom"} <= set(machine["versions"])
    assert list(results["sections"]) == sections
    for name in sections:
        section = results["sections"][name]
        assert "error" not in section, section.get("traceback")
        assert [r["id"] for r in section["rows"]] == EXPECTED_ROWS[name]
        for r in section["rows"]:
            assert ROW_KEYS <= set(r), r["id"]
            if r["id"] in DIFFERENCE_ROWS and r["lumbar_jax"]["status"] != "measured":
                # a difference of two timings: at smoke sizes it may be within noise, and the row must say so
                assert r["lumbar_jax"]["status"] == "not resolvable (build times within noise)", r["id"]
                assert r["ratio"] is None, r["id"]
            elif name in ("data", "pipeline", "two_stage"):  # our side is always measured
                assert r["lumbar_jax"]["status"] == "measured", r["id"]
                assert r["lumbar_jax"]["median"] > 0 and r["lumbar_jax"]["repeats"] >= 1
            if r["id"] in TRAIN_STEP_ROWS:
                assert r["lumbar_jax"]["status"] == "measured" and r["lumbar_jax"]["median"] > 0, r["id"]
            if r["id"] in TRAIN_STEP_PEER_ROWS:
                assert r["peer"]["status"] == "measured" and r["ratio"] > 0, r["id"]
            if name == "two_stage":  # the PyTorch + timm peer, built with our weights
                assert (r["peer"]["status"] == "measured") == _peer_installed(("torch", "timm")), r["id"]
            if r["id"] in PEER_ROWS:
                if peer_installed:
                    assert r["peer"]["status"] == "measured" and r["ratio"] is not None
                else:
                    assert r["peer"]["status"] == "not installed" and r["ratio"] is None
    if "data" in sections and peer_installed:  # the peer produced the same volumes (wrong axcodes would not)
        assert results["sections"]["data"]["load"]["agreement"]["min_correlation"] > 0.99
        assert results["sections"]["data"]["load"]["kaggle"]["agreement"]["min_correlation"] > 0.99

    with open(os.path.join(out_dir, "results.md")) as f:
        table = f.read()
    assert table.startswith("# lumbar_jax benchmarks")
    for name in sections:
        assert f"## {name}" in table
        for r in results["sections"][name]["rows"]:
            assert r["name"] in table
    if "data" in sections and not peer_installed:
        assert "not installed" in table
    return results


def test_smoke_command_writes_table_and_json(tmp_path):
    """The real command, in its own process (peer columns filled when torch/monai are installed)."""
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900, env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "| benchmark |" in proc.stdout  # the table is printed too
    results = _check_results(out, ["data", "pipeline", "models", "two_stage"], _peer_installed())
    two_stage = results["sections"]["two_stage"]
    if _peer_installed(("torch", "timm")):  # same architecture: equal parameter counts
        for model in ("localiser", "crop_classifier"):
            assert two_stage["extra"][model]["lumbar_jax_params"] == two_stage["extra"][model]["peer_params"]


def test_smoke_without_peer_still_measures_lumbar_jax(tmp_path, monkeypatch):
    """torch/monai missing (simulated: importing them fails): our side runs, peer cells say "not installed"."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.setitem(sys.modules, "monai", None)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    from benchmarks import run

    assert run.main(["--smoke", "--only", "data", "--out", str(tmp_path)]) == 0
    results = _check_results(tmp_path, ["data"], peer_installed=False)
    assert results["peer"]["available"] is False and results["peer"]["reason"] == "not installed"


def test_only_rejects_unknown_sections():
    from benchmarks import run

    with pytest.raises(SystemExit):
        run.parse_args(["--only", "data,nope"])
    assert run.parse_args(["--only", "models,data"]).only == ["data", "models"]
