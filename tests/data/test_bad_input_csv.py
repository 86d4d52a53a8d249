"""Bad input in the Kaggle layout (CSVs, series folders): each problem refuses the input naming file, line and
column, or costs only its own row / point / series, reported through `problems`; the rest of the record is the
clean study's record."""

import csv
import os
import shutil

import numpy as np
import pytest

from lumbar_jax import labels
from lumbar_jax.data import problems, study, synthetic

SHAPE = (8, 32, 32)
COORDS = "train_label_coordinates.csv"
DESCRIPTIONS = "train_series_descriptions.csv"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """(root of a clean 3-study synthetic set, {study_id: its record})."""
    root = str(tmp_path_factory.mktemp("bad_input") / "clean")
    synthetic.write_synthetic_dataset(root, synthetic.DatasetSpec(3, seed=5, quirks=False), progress=False)
    records, found = _records(root)
    assert found == []
    return root, records


@pytest.fixture
def damaged(clean, tmp_path):
    """A copy of the clean set to damage."""
    root = str(tmp_path / "kaggle")
    shutil.copytree(clean[0], root)
    return root


def _records(root):
    """({study_id: record}, [Problem]) of every train study."""
    with problems.collect() as found:
        records = {e.study_id: study.study_example(e, SHAPE) for e in study.list_studies(root, "train")}
    return records, found


def _read(root, name):
    with open(os.path.join(root, name), newline="") as f:
        return list(csv.reader(f))


def _write(root, name, rows):
    with open(os.path.join(root, name), "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _assert_same(record, expected, dropped_targets=(), except_keys=()):
    """`record` equals `expected` except the coordinates of `dropped_targets` (absent) and `except_keys`."""
    for key, value in expected.items():
        if key in except_keys:
            continue
        if key in ("coords", "coords_series"):
            keep = np.ones(labels.NUM_TARGETS, bool)
            keep[list(dropped_targets)] = False
            np.testing.assert_array_equal(record[key][keep], value[keep], err_msg=key)
            assert np.all(record[key][~keep] == -1), key
        else:
            np.testing.assert_array_equal(record[key], value, err_msg=key)


def _target(row):
    return labels.target_index(labels.condition_from_csv(row[3]), labels.level_from_csv(row[4]))


def _only(found, kind):
    matching = [p for p in found if p.kind == kind]
    assert len(matching) == 1, found
    return matching[0]


def _axial(root, records):
    """(study_id, used axial series_id, its dir) of the first study."""
    study_id = min(records)
    series_id = int(records[study_id]["series_ids"][2])
    return study_id, series_id, os.path.join(root, "train_images", str(study_id), str(series_id))


def _add_series(root, study_id, series_id, source_dir, description="Axial T2"):
    """A copy of `source_dir` as series `series_id`, listed in the descriptions CSV; returns its dir."""
    target = os.path.join(root, "train_images", str(study_id), str(series_id))
    shutil.copytree(source_dir, target)
    _write(root, DESCRIPTIONS, _read(root, DESCRIPTIONS) + [[str(study_id), str(series_id), description]])
    return target


def _junk(directory, names):
    for name in names:
        with open(os.path.join(directory, name), "wb") as f:
            f.write(b"not a DICOM file")


# ------------------------------------------------------------------------------------ class 2: series choice
def test_junk_files_do_not_make_a_shorter_series_win(clean, damaged):
    _, records = clean
    study_id, used, used_dir = _axial(damaged, records)
    files = sorted(os.listdir(used_dir))
    short = _add_series(damaged, study_id, used - 1, used_dir)  # lower id: it would win a tie
    for name in files:  # the last instances: one end of the stack, no gap
        if int(name.split(".")[0]) > len(files) // 2:
            os.remove(os.path.join(short, name))
    _junk(short, [f"junk{i}.dcm" for i in range(len(files))])  # more .dcm files than the used series
    with pytest.warns(UserWarning):
        got, found = _records(damaged)
    assert [p for p in found if p.kind != "file_skipped"] == []
    for s, expected in records.items():
        _assert_same(got[s], expected)


def test_unreadable_series_falls_back_to_a_readable_one_of_its_type(clean, damaged):
    _, records = clean
    study_id, used, used_dir = _axial(damaged, records)
    broken = _add_series(damaged, study_id, used - 1, used_dir)  # preferred by count and id, but unreadable
    _junk(broken, os.listdir(broken) + ["extra.dcm"])
    got, found = _records(damaged)
    skipped = _only(found, "series_skipped")
    assert skipped.where == broken and skipped.reason == "series unreadable" and str(used) in skipped.detail
    for s, expected in records.items():
        _assert_same(got[s], expected)


def test_points_on_the_fallback_series_are_kept_and_on_the_unreadable_one_reported(clean, damaged):
    _, records = clean
    study_id, used, used_dir = _axial(damaged, records)
    _add_series(damaged, study_id, used + 1, used_dir)
    _junk(used_dir, os.listdir(used_dir))  # the annotated series is now unreadable
    rows = _read(damaged, COORDS)
    moved = [i for i, r in enumerate(rows) if r[:2] == [str(study_id), str(used)]][:3]
    for i in moved:  # these points now name the readable copy; the others stay on the unreadable series
        rows[i][1] = str(used + 1)
    _write(damaged, COORDS, rows)
    got, found = _records(damaged)
    lost = [i for i, r in enumerate(rows) if r[:2] == [str(study_id), str(used)]]
    dropped = [p for p in found if p.kind == "label_point_dropped"]
    assert sorted(p.where for p in dropped) == sorted(f"{COORDS} line {i + 1}" for i in lost)
    assert {p.reason for p in dropped} == {"annotated file unreadable"}
    assert got[study_id]["series_ids"][2] == used + 1
    _assert_same(got[study_id], records[study_id], [_target(rows[i]) for i in lost], except_keys=("series_ids",))


# ------------------------------------------------------------------------------ class 4: unparseable values
@pytest.mark.parametrize("value", ["abc", "", "nan", "12.5"])
def test_train_csv_study_id_not_an_integer_is_refused_naming_line_and_column(damaged, value):
    rows = _read(damaged, "train.csv")
    rows[2][0] = value
    _write(damaged, "train.csv", rows)
    with pytest.raises(ValueError, match=rf"train\.csv line 3, column study_id: '{value}' is not an integer"):
        study.list_studies(damaged, "train")


def test_train_csv_unknown_severity_is_refused_naming_line_and_column(damaged):
    rows = _read(damaged, "train.csv")
    rows[3][7] = "Severe-ish"
    _write(damaged, "train.csv", rows)
    with pytest.raises(ValueError, match=rf"train\.csv line 4, column {rows[0][7]}: 'Severe-ish'"):
        study.list_studies(damaged, "train")


@pytest.mark.parametrize("column, value", [("instance_number", "nan"), ("instance_number", "seven"),
                                           ("series_id", ""), ("study_id", "x1"), ("x", "12,5px"),
                                           ("y", "inf"), ("condition", "Spinal Stenosis")])
def test_coordinate_row_with_a_bad_value_costs_only_its_row(clean, damaged, column, value):
    _, records = clean
    rows = _read(damaged, COORDS)
    index = 9
    study_id, target = int(rows[index][0]), _target(rows[index])
    rows[index][rows[0].index(column)] = value
    _write(damaged, COORDS, rows)
    got, found = _records(damaged)
    problem = _only(found, "csv_row")
    assert problem.where == f"{COORDS} line {index + 1}" and problem.detail == f"{column} = {value!r}"
    for s, expected in records.items():
        _assert_same(got[s], expected, [target] if s == study_id else ())


@pytest.mark.parametrize("column", ["x", "y"])
def test_nan_coordinate_drops_its_point_with_a_warning_naming_the_row(clean, damaged, column):
    _, records = clean
    rows = _read(damaged, COORDS)
    rows[5][rows[0].index(column)] = "NaN"
    _write(damaged, COORDS, rows)
    got, found = _records(damaged)
    problem = _only(found, "label_point_dropped")
    assert (problem.where, problem.reason, problem.detail) == (f"{COORDS} line 6", "NaN coordinate",
                                                               f"{column} = 'NaN'")
    for s, expected in records.items():
        _assert_same(got[s], expected, [_target(rows[5])] if s == int(rows[5][0]) else ())


def test_unquoted_comma_in_a_coordinate_row_costs_its_row(clean, damaged):
    _, records = clean
    with open(os.path.join(damaged, COORDS)) as f:
        lines = f.read().splitlines()
    target = _target(lines[4].split(","))
    lines[4] = lines[4].rsplit(",", 2)[0] + ",12,5px," + lines[4].rsplit(",", 1)[1]
    with open(os.path.join(damaged, COORDS), "w") as f:
        f.write("\n".join(lines) + "\n")
    got, found = _records(damaged)
    problem = _only(found, "csv_row")
    assert problem.where == f"{COORDS} line 5" and problem.reason == "wrong number of fields"
    _assert_same(got[int(lines[4].split(",")[0])], records[int(lines[4].split(",")[0])], [target])


def test_description_row_with_a_bad_series_id_costs_its_series(clean, damaged):
    _, records = clean
    rows = _read(damaged, DESCRIPTIONS)
    study_id, series_id = int(rows[1][0]), rows[1][1]
    rows[1][1] = "3.5e"
    _write(damaged, DESCRIPTIONS, rows)
    got, found = _records(damaged)
    problem = next(p for p in found if p.kind == "csv_row")
    assert problem.where == f"{DESCRIPTIONS} line 2" and problem.detail == "series_id = '3.5e'"
    # the folder is then not described: it is typed by its DICOM header and used, with a warning
    mismatch = _only(found, "study_mismatch")
    assert mismatch.where.endswith(os.path.join(str(study_id), series_id))
    _assert_same(got[study_id], records[study_id])


# --------------------------------------------------------------------------------- class 5: silent merges
def test_conflicting_duplicate_train_row_is_refused_naming_both_lines(damaged):
    rows = _read(damaged, "train.csv")
    copy = list(rows[1])
    copy[5] = "Severe" if copy[5] != "Severe" else "Moderate"
    _write(damaged, "train.csv", rows + [copy])
    with pytest.raises(ValueError, match=rf"train\.csv lines 2 and {len(rows) + 1}: .*column {rows[0][5]}"):
        study.list_studies(damaged, "train")


def test_identical_duplicate_train_row_is_one_warning(clean, damaged):
    _, records = clean
    rows = _read(damaged, "train.csv")
    _write(damaged, "train.csv", rows + [rows[2]])
    got, found = _records(damaged)
    problem = _only(found, "csv_row")
    assert problem.where == f"train.csv line {len(rows) + 1}" and "line 3" in problem.detail
    for s, expected in records.items():
        _assert_same(got[s], expected)


def test_header_only_train_csv_is_refused(damaged):
    _write(damaged, "train.csv", _read(damaged, "train.csv")[:1])
    with pytest.raises(ValueError, match=r"train\.csv: no study rows"):
        study.list_studies(damaged, "train")


@pytest.mark.parametrize("conflicting", [False, True])
def test_duplicate_coordinate_row_warns_naming_both_lines_and_keeps_the_first(clean, damaged, conflicting):
    _, records = clean
    rows = _read(damaged, COORDS)
    copy = list(rows[7])
    if conflicting:
        copy[5] = str(float(copy[5]) + 3.0)
    _write(damaged, COORDS, rows + [copy])
    got, found = _records(damaged)
    problem = _only(found, "csv_row")
    assert problem.where == f"{COORDS} line {len(rows) + 1}" and "line 8 kept" in problem.detail
    assert problem.reason == ("conflicting duplicate" if conflicting else "duplicate row")
    for s, expected in records.items():
        _assert_same(got[s], expected)


def test_study_missing_from_the_descriptions_csv_is_kept_from_its_folder(clean, damaged):
    _, records = clean
    rows = _read(damaged, DESCRIPTIONS)
    study_id = int(rows[1][0])
    _write(damaged, DESCRIPTIONS, [r for r in rows if r[0] != str(study_id)])
    got, found = _records(damaged)
    mismatches = [p for p in found if p.kind == "study_mismatch"]
    assert mismatches[0].where == f"train.csv study {study_id}" and DESCRIPTIONS in mismatches[0].reason
    assert len(mismatches) == 4  # the study, and each of its three folders typed by its header
    for s, expected in records.items():
        _assert_same(got[s], expected)


def test_study_missing_from_train_csv_keeps_its_images_with_labels_missing(clean, damaged):
    _, records = clean
    rows = _read(damaged, "train.csv")
    study_id = int(rows[1][0])
    _write(damaged, "train.csv", [rows[0]] + rows[2:])
    got, found = _records(damaged)
    problem = _only(found, "study_mismatch")
    assert problem.where == f"{DESCRIPTIONS} study {study_id}" and "train.csv" in problem.reason
    assert np.all(got[study_id]["labels"] == labels.MISSING)
    _assert_same(got[study_id], records[study_id], except_keys=("labels",))


def test_image_folder_of_a_study_in_no_csv_is_reported(clean, damaged):
    _, records = clean
    source = os.path.join(damaged, "train_images", str(min(records)))
    shutil.copytree(source, os.path.join(damaged, "train_images", "123"))
    got, found = _records(damaged)
    problem = _only(found, "study_mismatch")
    assert problem.where == os.path.join(damaged, "train_images", "123") and problem.detail == "ignored"
    assert sorted(got) == sorted(records)


def test_coordinate_row_naming_a_series_that_does_not_exist_is_reported(clean, damaged):
    _, records = clean
    rows = _read(damaged, COORDS)
    rows[12][1] = "999"
    _write(damaged, COORDS, rows)
    got, found = _records(damaged)
    problem = _only(found, "label_point_dropped")
    assert problem.where == f"{COORDS} line 13" and problem.reason == "series not in the study"
    assert "series 999" in problem.detail
    _assert_same(got[int(rows[12][0])], records[int(rows[12][0])], [_target(rows[12])])


def test_coordinate_rows_of_a_study_in_no_other_csv_are_reported(clean, damaged):
    _, records = clean
    rows = _read(damaged, COORDS)
    _write(damaged, COORDS, rows + [["777", "1", "1"] + rows[1][3:]])
    got, found = _records(damaged)
    problem = _only(found, "study_mismatch")
    assert problem.where == f"{COORDS} line {len(rows) + 1}" and "study_id = 777" in problem.detail
    assert sorted(got) == sorted(records)


def test_described_series_without_a_folder_is_reported_and_its_type_absent(clean, damaged):
    _, records = clean
    study_id, used, used_dir = _axial(damaged, records)
    shutil.rmtree(used_dir)
    got, found = _records(damaged)
    line = next(i + 1 for i, r in enumerate(_read(damaged, DESCRIPTIONS)) if r[1] == str(used))
    assert _only(found, "study_mismatch").where == f"{DESCRIPTIONS} line {line}"
    assert _only(found, "series_absent").where == f"study {study_id} axial_t2"
    axial = [t for t in range(labels.NUM_TARGETS) if labels.CONDITION_SERIES[t // labels.NUM_LEVELS] == 2]
    assert {p.reason for p in found if p.kind == "label_point_dropped"} == {"series not in the study"}
    assert not got[study_id]["present"][2] and got[study_id]["series_ids"][2] == -1
    _assert_same(got[study_id], records[study_id], axial, except_keys=("axial_t2", "present", "series_ids"))


def test_unknown_series_description_costs_its_series_naming_the_line(clean, damaged):
    _, records = clean
    rows = _read(damaged, DESCRIPTIONS)
    line, study_id = next((i + 1, int(r[0])) for i, r in enumerate(rows) if r[2] == "Sagittal T1")
    rows[line - 1][2] = "Coronal T1"
    _write(damaged, DESCRIPTIONS, rows)
    got, found = _records(damaged)
    problem = _only(found, "csv_row")
    assert (problem.where, problem.detail) == (f"{DESCRIPTIONS} line {line}", "series_description = 'Coronal T1'")
    assert _only(found, "series_absent").where == f"study {study_id} sagittal_t1"
    sagittal_t1 = [t for t in range(labels.NUM_TARGETS) if labels.CONDITION_SERIES[t // labels.NUM_LEVELS] == 0]
    _assert_same(got[study_id], records[study_id], sagittal_t1, except_keys=("sagittal_t1", "present", "series_ids"))


def test_test_image_folder_missing_from_its_csv_is_kept_typed_by_its_headers(tmp_path):
    root = str(tmp_path / "kaggle")
    synthetic.write_synthetic_dataset(root, synthetic.DatasetSpec(1, seed=4, num_test_studies=2, quirks=False),
                                      progress=False)
    clean = study.list_studies(root, "test")
    rows = _read(root, "test_series_descriptions.csv")
    _write(root, "test_series_descriptions.csv", [r for r in rows if r[0] != str(clean[0].study_id)])
    with problems.collect() as found:
        got = study.list_studies(root, "test")
    assert [e.series_dirs for e in got] == [e.series_dirs for e in clean]
    assert found[0].kind == "study_mismatch" and found[0].where.endswith(str(clean[0].study_id))
    assert [p.kind for p in found] == ["study_mismatch"] * 4  # the study, and each of its three series
