"""The build report: a build of a synthetic folder with quirks writes `build_report.json` beside the dataset,
counting what it wrote and what the readers dropped exactly as the generator's `synthetic_summary.json` says it
placed them, and prints a short summary naming the report; warnings are one log line each.

The folder is a synthetic set with every quirk (a truncated and a junk DICOM file, a missing series, ...) and
one extra train_label_coordinates.csv row with a NaN x, built with two decoding processes (the problems travel
back from the workers beside the examples).
"""

import contextlib
import io
import json
import logging
import os

import pytest

from lumbar_jax import labels
from lumbar_jax.data import build, problems, synthetic
from lumbar_jax.data.rsna_lumbar_spine.rsna_lumbar_spine_dataset_builder import REPORT_FILE

NUM_TRAIN, NUM_TEST = 8, 2


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(synthetic summary, build report, printed output, report path)."""
    root = tmp_path_factory.mktemp("build_report")
    manual_dir, data_dir = str(root / "kaggle"), str(root / "tfds")
    spec = synthetic.DatasetSpec(NUM_TRAIN, 3, NUM_TEST)
    summary = synthetic.write_synthetic_dataset(manual_dir, spec, progress=False)
    coordinates = os.path.join(manual_dir, "train_label_coordinates.csv")
    with open(coordinates) as f:
        last = f.read().splitlines()[-1].split(",")
    with open(coordinates, "a") as f:  # the last point again, with no x: dropped, and reported
        f.write(",".join(last[:5] + ["nan", last[6]]) + "\n")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert build.main(["--manual_dir", manual_dir, "--data_dir", data_dir, "--workers", "2"]) == 0
    path = os.path.join(data_dir, "rsna_lumbar_spine", "r64", "1.0.0", REPORT_FILE)
    with open(path) as f:
        report = json.load(f)
    return summary, report, printed.getvalue(), path


def test_report_beside_the_dataset_counts_the_studies_written(built):
    summary, report, _, path = built
    assert os.path.exists(os.path.join(os.path.dirname(path), "dataset_info.json"))
    assert report["dataset"] == "rsna_lumbar_spine/r64/1.0.0"
    assert report["studies"] == {"train": summary["num_train_studies"], "test": NUM_TEST}
    assert set(report["problems"]) == set(problems.KINDS)
    assert len(report["source"]["fingerprint"]) == 64


def test_absent_series_are_the_generators_missing_series(built):
    summary, report, _, _ = built
    expected = {split: dict.fromkeys(labels.SERIES_TYPES, 0) for split in ("train", "test")}
    for quirk in summary["quirks"].get("missing_series", []):
        expected[quirk["split"]][labels.SERIES_TYPES[labels.SERIES_DESCRIPTIONS.index(quirk["detail"])]] += 1
    assert report["series_absent_in_records"] == expected
    absent = report["problems"]["series_absent"]
    assert absent["count"] == sum(n for split in expected.values() for n in split.values()) >= 1


def test_skipped_files_are_the_generators_unreadable_files(built):
    summary, report, _, _ = built
    skipped = report["problems"]["file_skipped"]
    assert summary["unreadable_files"] and skipped["count"] == len(summary["unreadable_files"])
    for path in summary["unreadable_files"]:  # e.g. train_images/STUDY/SERIES/23.dcm, named in its example
        study_id, series_id, name = path.split("/")[1:]
        assert any(series_id in e and name in e for e in skipped["examples"]), (path, skipped["examples"])


def test_the_nan_coordinate_is_the_one_dropped_label_point(built):
    _, report, _, _ = built
    dropped = report["problems"]["label_point_dropped"]
    assert dropped["count"] == 1 and list(dropped["reasons"]) == ["NaN coordinate"]
    assert "train_label_coordinates.csv" in dropped["examples"][0]


def test_summary_printed_with_counts_reasons_and_the_report_path(built):
    _, report, printed, path = built
    assert f"report: {path}" in printed
    assert f"train {NUM_TRAIN} studies, test {NUM_TEST} studies" in printed
    for kind, entry in report["problems"].items():
        if entry["count"]:
            top_reason = max(entry["reasons"], key=entry["reasons"].get)
            line = next(li for li in printed.splitlines() if li.strip().startswith(f"{kind}:"))
            assert f"{kind}: {entry['count']} (" in line and top_reason in line


def test_format_of_a_report_with_nothing_dropped():
    report = {"dataset": "rsna_lumbar_spine/r64/1.0.0", "source": {"manual_dir": "/k", "fingerprint": "0" * 64},
              "studies": {"train": 3}, "series_absent_in_records": {"train": dict.fromkeys(labels.SERIES_TYPES, 0)},
              "problems": problems.summarize([])}
    assert build.format_build_report(report, "/d/build_report.json").splitlines() == [
        "built rsna_lumbar_spine/r64/1.0.0 from /k: train 3 studies", "  no input dropped",
        "  report: /d/build_report.json"]


def test_a_warning_is_one_log_line(caplog):
    with caplog.at_level(logging.WARNING), problems.warnings_in_one_line():
        problems.report("file_skipped", "train_images/1/2/3.dcm", "truncated pixel data", "5184 of 10368 bytes")
    [record] = [r for r in caplog.records if r.name == "lumbar_jax.warnings"]
    assert record.getMessage() == ("DataProblemWarning: train_images/1/2/3.dcm: truncated pixel data "
                                   "(5184 of 10368 bytes)")


def test_a_file_reported_again_for_each_label_point_on_it_counts_once():
    """The reader reports an unreadable file each time it is read (once for its series, again for every label
    point annotated on it); the report counts files."""
    bad = problems.Problem("file_skipped", "train_images/1/2/3.dcm", "truncated", "12 bytes")
    other = problems.Problem("file_skipped", "train_images/1/2/4.dcm", "truncated", "12 bytes")
    point = problems.Problem("label_point_dropped", "train_label_coordinates.csv line 5", "annotated file unreadable")
    summary = problems.summarize([bad, bad, other, bad, point, point])
    assert summary["file_skipped"]["count"] == 2 and summary["file_skipped"]["reasons"] == {"truncated": 2}
    assert len(summary["file_skipped"]["examples"]) == 2
    assert summary["label_point_dropped"]["count"] == 1
