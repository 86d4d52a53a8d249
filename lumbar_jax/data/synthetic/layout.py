"""The Kaggle layout: a whole synthetic dataset written as the competition's folder, CSVs and images.

    train.csv, train_label_coordinates.csv, train_series_descriptions.csv, train_images/{study}/{series}/{n}.dcm
    [test_series_descriptions.csv, test_images/..., sample_submission.csv]  with num_test_studies > 0
    [test_solution.csv]  the test labels, train.csv-shaped (hidden in the competition; here to score locally)
    synthetic_summary.json  (written last: its presence marks a complete dataset; no PHI in it)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm import tqdm

from lumbar_jax import labels
from lumbar_jax.data.synthetic.dicom_writer import write_study
from lumbar_jax.data.synthetic.labels import KAPPA, draw_study_labels
from lumbar_jax.data.synthetic.plan import DatasetSpec, Study, draw_ids, make_study

VERSION = "1.0.0"
SUMMARY_NAME = "synthetic_summary.json"
_LABELS_HEADER = ",".join(("study_id",) + labels.TARGETS)  # train.csv, test_solution.csv
_DESCRIPTIONS_HEADER = "study_id,series_id,series_description"


def write_synthetic_dataset(out_dir: str, spec: DatasetSpec, *, workers: int = 1, progress: bool = True) -> dict:
    """Write the complete Kaggle-layout dataset `spec` (num_studies train + num_test_studies test studies) to
    out_dir, in `workers` processes, and return its summary, also written as synthetic_summary.json. Same spec
    -> byte-identical files, whatever `workers`. The summary is removed first and written last, so its presence
    marks a complete dataset and an interrupted run can simply be repeated into the same folder (every file is
    rewritten; nothing else there is touched). The summary records `spec.matrix_scale` when it is not 1."""
    os.makedirs(out_dir, exist_ok=True)
    marker = os.path.join(out_dir, SUMMARY_NAME)
    if os.path.exists(marker):
        os.remove(marker)
    start = time.time()
    studies = _plan_studies(spec)
    results = _write_images(studies, out_dir, workers, progress)
    train = sorted((st for st in studies if st.split == "train"), key=lambda st: st.study_id)
    test = sorted((st for st in studies if st.split == "test"), key=lambda st: st.study_id)
    csv_sizes = _write_train_csvs(out_dir, train) + (_write_test_csvs(out_dir, test) if test else [])
    settings = {"seed": spec.seed, "quirks_enabled": spec.quirks, "num_train_studies": spec.num_studies,
                "num_test_studies": spec.num_test_studies}
    summary = _summary(settings, studies, results, csv_sizes)
    if spec.matrix_scale != 1:
        summary["matrix_scale"] = int(spec.matrix_scale)
    with open(marker + ".tmp", "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    os.replace(marker + ".tmp", marker)
    if progress:
        print(f"wrote {len(studies)} studies, {summary['files']} files, {summary['bytes'] / 1e6:.1f} MB to "
              f"{out_dir} in {time.time() - start:.1f} s")
    return summary


def latent_severities(folder: str) -> dict[int, np.ndarray] | None:
    """{train study_id: latent severities int8 [25]} of a folder this generator (this VERSION) wrote, from its
    summary's seed alone; None for any other folder. The latent grade is what the phantom shows, before the label
    noise: for analysis only (which held-out mistakes are the noise no reader can beat), never for training."""
    try:
        with open(os.path.join(folder, SUMMARY_NAME)) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    if summary.get("generator") != "lumbar_jax.data.synthetic" or summary.get("version") != VERSION:
        return None
    seed, num_train = int(summary["seed"]), int(summary["num_train_studies"])
    ids = draw_ids(seed, num_train + int(summary["num_test_studies"]))
    return {int(ids[i, 0]): draw_study_labels(seed, i, bool(summary["quirks_enabled"]))[0] for i in range(num_train)}


def _plan_studies(spec: DatasetSpec) -> list[Study]:
    """Studies 0..num_studies-1 (train), then num_test_studies test ones, in index order."""
    total = spec.num_studies + spec.num_test_studies
    ids = draw_ids(spec.seed, total)
    return [make_study(spec, i, ids[i]) for i in range(total)]


def _write_images(studies: list[Study], out_dir: str, workers: int, progress: bool) -> list[dict]:
    """Every study's DICOM files (`write_study`), in `workers` processes; their `write_study` results."""
    bar = dict(total=len(studies), desc="synthetic studies", unit="study", disable=not progress)
    if workers > 1:  # spawn, not fork: the caller may be a multithreaded (JAX) process
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(tqdm(pool.map(write_study, studies, [out_dir] * len(studies), chunksize=4), **bar))
    return [write_study(st, out_dir) for st in tqdm(studies, **bar)]


def _write_csv(path: str, header: str, rows: list) -> int:
    """Write a CSV of pre-formatted rows (plain ',' joins: none of the values needs quoting); its size."""
    data = "\n".join([header, *(",".join(str(x) for x in row) for row in rows)]) + "\n"
    with open(path, "w", newline="") as f:
        f.write(data)
    return len(data)


def _label_rows(studies: list[Study]) -> list[list]:
    """train.csv rows: study_id, then the written severity name of each target ("" = missing)."""
    return [[st.study_id, *("" if c == labels.MISSING else labels.SEVERITY_NAMES[c] for c in st.labels)]
            for st in studies]


def _description_rows(studies: list[Study]) -> list[list]:
    """*_series_descriptions.csv rows (study_id, series_id, series_description), series by series_id."""
    return [[st.study_id, s.series_id, s.description]
            for st in studies for s in sorted(st.series, key=lambda s: s.series_id)]


def _write_train_csvs(out_dir: str, train: list[Study]) -> list[int]:
    """train.csv, train_label_coordinates.csv, train_series_descriptions.csv; their sizes."""
    coordinate_rows = [[st.study_id, series_id, instance, labels.CONDITION_CSV_NAMES[c], labels.LEVEL_CSV_NAMES[lv],
                        f"{x:.4f}", f"{y:.4f}"] for st in train for c, lv, series_id, instance, x, y in st.coordinates]
    return [
        _write_csv(os.path.join(out_dir, "train.csv"), _LABELS_HEADER, _label_rows(train)),
        _write_csv(os.path.join(out_dir, "train_label_coordinates.csv"),
                   "study_id,series_id,instance_number,condition,level,x,y", coordinate_rows),
        _write_csv(os.path.join(out_dir, "train_series_descriptions.csv"), _DESCRIPTIONS_HEADER,
                   _description_rows(train)),
    ]


def _write_test_csvs(out_dir: str, test: list[Study]) -> list[int]:
    """test_series_descriptions.csv, sample_submission.csv (uniform), test_solution.csv; their sizes."""
    return [
        _write_csv(os.path.join(out_dir, "test_series_descriptions.csv"), _DESCRIPTIONS_HEADER,
                   _description_rows(test)),
        _write_csv(os.path.join(out_dir, "sample_submission.csv"), "row_id," + ",".join(labels.SEVERITY_COLUMNS),
                   [[rid, *["0.333333"] * labels.NUM_SEVERITIES]
                    for st in test for rid in labels.study_row_ids(st.study_id)]),
        # Not in the Kaggle layout (the competition keeps it hidden): the test labels, so that a
        # submission can be scored locally with `python -m lumbar_jax.score --solution test_solution.csv`.
        _write_csv(os.path.join(out_dir, "test_solution.csv"), _LABELS_HEADER, _label_rows(test)),
    ]


def _summary(settings: dict, studies: list[Study], results: list[dict], csv_sizes: list[int]) -> dict:
    """The dataset summary: generator, version and `settings`; what was written (series, files, bytes); the
    train split's moved and missing labels; where each quirk landed (studies in index order); unreadable files."""
    train = [st for st in studies if st.split == "train"]
    occurrences = {}
    for st in studies:
        for name, series_id, detail in st.quirks:
            occurrences.setdefault(name, []).append(
                {"study_id": st.study_id, "split": st.split, "series_id": series_id, "detail": detail})
    return {
        "generator": "lumbar_jax.data.synthetic", "version": VERSION, **settings,
        "num_series": sum(len(st.series) for st in studies),
        "files": sum(r["files"] for r in results) + len(csv_sizes),
        "bytes": sum(r["bytes"] for r in results) + sum(csv_sizes),
        "label_noise": {"kappa": KAPPA, "moved_labels_train": int(sum(
            ((st.latent != st.labels) & (st.labels != labels.MISSING)).sum() for st in train))},
        "missing_label_cells": int(sum((st.labels == labels.MISSING).sum() for st in train)),
        "quirks": {name: occurrences[name] for name in sorted(occurrences)},
        "unreadable_files": sorted(p for r in results for p in r["unreadable"]),
    }
