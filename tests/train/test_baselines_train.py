"""The earlier systems' configs (configs/baseline_*.py) through the main job at `:smoke` size, end to end: the
slice model on r64 records with the unweighted cross-entropy, the grid model on grid32 records with the metric
loss; both write the usual run directory, which scripts/compare.py reads."""

import importlib.util
import json
import os

import pandas as pd
import pytest

from lumbar_jax import compare, cross_validation
from lumbar_jax import labels
from lumbar_jax.data import build, synthetic

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def smoke_config(name: str, data_dir: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.data.data_dir = data_dir
    config.model.vit_depth = 1  # --config.model.vit_depth=1: the smoke job checks the plumbing, not the model
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline_data")
    synthetic.write_synthetic_dataset(str(root / "kaggle"), synthetic.DatasetSpec(12, seed=5), progress=False)
    for config in ("r64", "grid32"):
        build.build_dataset(str(root / "kaggle"), str(root / "tfds"), config, workers=1)
    return str(root / "tfds")


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline_runs")
    out = {}
    for name in ("baseline_vit2d", "baseline_vit3d_grid"):
        out[name] = str(root / name)
        out[name + ":summary"] = cross_validation.cross_validate(smoke_config(name, data_dir), out[name])
    return out


@pytest.mark.parametrize("name,model,loss_key", [("baseline_vit2d", "vit2d", "train/cross_entropy"),
                                                 ("baseline_vit3d_grid", "vit3d_grid", "train/spinal")])
def test_smoke_run_writes_the_run_directory(runs, name, model, loss_key):
    workdir, summary = runs[name], runs[name + ":summary"]
    saved = json.load(open(os.path.join(workdir, "cv_summary.json")))
    assert saved["oof"]["score"] == pytest.approx(summary["oof"]["score"])
    assert len(saved["folds"]) == 2 and "peak_distance" not in saved["oof"]  # no target queries
    assert {"baseline", "weighted_prior", "balanced_accuracy"} <= set(saved["oof"])
    assert json.load(open(os.path.join(workdir, "config.json")))["model"]["name"] == model
    oof = pd.read_csv(os.path.join(workdir, "oof_predictions.csv"))
    assert len(oof) == 25 * summary["num_studies"] and list(oof.columns) == ["row_id", *labels.SEVERITY_COLUMNS, "fold"]
    lines = [json.loads(x) for x in open(os.path.join(workdir, "fold_0", "metrics.jsonl"))]
    assert any(loss_key in x for x in lines) and any("val/score" in x for x in lines)
    if name == "baseline_vit2d":  # trained on cross-entropy, the metric loss logged beside it
        assert any("train/metric_loss" in x for x in lines)


def test_compare_reads_both_smoke_runs(runs):
    rows = compare.compare_runs([runs["baseline_vit2d"], runs["baseline_vit3d_grid"]])
    assert [(r["model"], r["data"], r["loss"]) for r in rows] == [("vit2d", "r64", "cross_entropy"),
                                                                  ("vit3d_grid", "grid32", "metric")]
    assert rows[0]["score"] == pytest.approx(runs["baseline_vit2d:summary"]["oof"]["score"])
