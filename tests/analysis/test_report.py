"""write_report end to end on a tiny synthetic Kaggle folder and a fake run directory; the CLI's errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from lumbar_jax import labels as labels_lib
from lumbar_jax import cli, metrics
from lumbar_jax.analysis import Drawn, label_stats, write_report
from lumbar_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("analysis") / "kaggle")
    synthetic.write_synthetic_dataset(root, synthetic.DatasetSpec(6, seed=0), workers=1, progress=False)
    return root


def _fake_run(kaggle_dir, workdir, study_ids=None):
    """oof_predictions.csv with random valid probabilities (2 folds) and a matching cv_summary.json."""
    ids, labels = label_stats.read_label_matrix(kaggle_dir)
    ids = np.asarray(study_ids if study_ids is not None else ids)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(len(ids), labels_lib.NUM_TARGETS))
    folds = np.arange(len(ids)) % 2
    os.makedirs(workdir, exist_ok=True)
    rows = [[labels_lib.row_id(s, t), *probs[i, k], folds[i]]
            for i, s in enumerate(ids) for k, t in enumerate(labels_lib.TARGETS)]
    pd.DataFrame(rows, columns=["row_id", *labels_lib.SEVERITY_COLUMNS, "fold"]).to_csv(
        os.path.join(workdir, "oof_predictions.csv"), index=False, float_format="%.6g")
    labels = labels[: len(ids)]
    summary = {
        "oof": metrics.evaluate_predictions(labels, probs, labels),
        "folds": [{"fold": k, "best_step": 5,
                   "val": metrics.evaluate_predictions(labels[folds == k], probs[folds == k], labels[folds != k])}
                  for k in range(2)],
    }
    with open(os.path.join(workdir, "cv_summary.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({}, f)
    return summary


@pytest.mark.filterwarnings("ignore::lumbar_jax.data.dicom.DicomSkipWarning")  # a synthetic quirk, expected
def test_write_report_end_to_end(kaggle, tmp_path):
    workdir = str(tmp_path / "run")
    summary = _fake_run(kaggle, workdir)
    out = str(tmp_path / "report")
    path = write_report(kaggle, out, workdir=workdir, drawn=Drawn(montages=2, attention=0, costly=0))
    assert path == os.path.join(out, "report.md")
    text = open(path).read()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == 2 + 3 + 2  # labels, correlation; folds, calibration, confusion; 2 montages
    for image in images:
        full = os.path.normpath(os.path.join(out, image))
        assert os.path.getsize(full) > len(PNG_MAGIC), image
        with open(full, "rb") as f:
            assert f.read(8) == PNG_MAGIC, image
    assert "Do left and right subarticular stenosis labels correlate?" in text
    # The numbers are the computed ones, not placeholders.
    _, labels = label_stats.read_label_matrix(kaggle)
    lr = label_stats.left_right_table(labels, "subarticular")
    assert f"L1/L2 rho={lr.loc['L1/L2', 'rho']:.2f} (n={lr.loc['L1/L2', 'n']})" in text
    oof_score = summary["oof"]
    assert f"OOF score {oof_score['score']:.4f} vs class-prior baseline {oof_score['baseline']['score']:.4f}" in text
    assert "### 3.4 Worst-predicted studies" in text and "montage_" in text
    # Sections numbered in order; the montages' shared explanation said once, not once per montage.
    assert re.findall(r"^## (\d+)\. ", text, re.M) == ["1", "2", "3", "4"]
    assert re.findall(r"^### (\d+\.\d+) ", text, re.M) == ["2.1", "3.1", "3.2", "3.3", "3.4"]
    assert text.count("canonical orientation") == 1


def test_write_report_without_run_and_montages(kaggle, tmp_path):
    text = open(write_report(kaggle, str(tmp_path / "r"), drawn=Drawn(montages=0))).read()
    assert "Out-of-fold" not in text and "montage_" not in text and "subarticular" in text
    assert re.findall(r"^## (\d+)\. ", text, re.M) == ["1", "2"]


def test_bad_inputs_are_named(kaggle, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope" / "train.csv"))):
        write_report(str(tmp_path / "nope"), str(tmp_path / "r"))
    with pytest.raises(FileNotFoundError, match="run directory .*missing_run"):
        write_report(kaggle, str(tmp_path / "r"), workdir=str(tmp_path / "missing_run"))
    workdir = str(tmp_path / "foreign")
    _fake_run(kaggle, workdir, study_ids=[123, 456])
    with pytest.raises(ValueError, match=r"not in train.csv, e.g. \[123, 456\]"):
        write_report(kaggle, str(tmp_path / "r"), workdir=workdir, drawn=Drawn(montages=0))


def test_cli_missing_train_csv_exits_2_naming_the_path(tmp_path):
    missing = str(tmp_path / "empty")
    os.makedirs(missing)
    proc = subprocess.run([sys.executable, "scripts/analyze.py", "--data_dir", missing, "--out", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert os.path.join(missing, "train.csv") in proc.stderr
    assert not os.path.exists(tmp_path / "o")


def test_cli_bad_workdir_exits_2(kaggle, tmp_path, capsys):
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        import analyze
    finally:
        sys.path.pop(0)
    bad = str(tmp_path / "not_a_run")
    assert cli.run(analyze.main, ["--data_dir", kaggle, "--workdir", bad, "--out", str(tmp_path / "o")]) == 2
    assert bad in capsys.readouterr().err
