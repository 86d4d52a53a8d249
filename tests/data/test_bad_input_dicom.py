"""Bad input in DICOM series costs at most its own file, and every problem is named (lumbar_jax.data.problems).

Each test damages a copy of one series of a clean synthetic study (`quirks=False`) by editing its files (raw
header values written as stored bytes, so that pydicom's own validation does not stand in the way), reads it
with `read_series` and compares it with the clean series: the damaged file is reported (file, reason, field,
value), and everything else, voxels, slice positions and label points, is what the clean series gives. A
file skipped from the middle of a series leaves a gap that is filled by interpolation at the true positions.
"""

from __future__ import annotations

import csv
import os
import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.datadict import tag_for_keyword
from pydicom.tag import Tag

from lumbar_jax.data import dicom, dicom_header, problems, synthetic
from lumbar_jax.data.dicom import DicomSkipWarning, read_series

SENTINELS = ("PHI-SENTINEL", "SYNTHETIC^")  # in PatientName, PatientID, InstitutionName of the synthetic files


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """{series description: (series dir, {instance: [(row, col), ...]} of its label points)} of one clean study."""
    root = str(tmp_path_factory.mktemp("bad_input") / "kaggle")
    synthetic.write_synthetic_dataset(root, synthetic.DatasetSpec(1, seed=4, quirks=False), progress=False)
    with open(os.path.join(root, "train_series_descriptions.csv")) as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(root, "train_label_coordinates.csv")) as f:
        points = list(csv.DictReader(f))
    series = {}
    for row in rows:
        directory = os.path.join(root, "train_images", row["study_id"], row["series_id"])
        labelled: dict[int, list] = {}
        for p in points:
            if p["series_id"] == row["series_id"]:
                labelled.setdefault(int(p["instance_number"]), []).append((float(p["y"]), float(p["x"])))
        series[row["series_description"]] = (directory, labelled)
    return series


def copy_series(clean, tmp_path, description="Sagittal T2/STIR"):
    """(a damageable copy of a clean series, its label points)."""
    directory, labelled = clean[description]
    target = tmp_path / "series"
    shutil.copytree(directory, target)
    return target, labelled


def set_raw(path, keyword: str, value: bytes, vr: str | None = None) -> None:
    """Store `value` as the raw bytes of element `keyword` of a file (explicit VR little endian)."""
    ds = pydicom.dcmread(path)
    tag = Tag(tag_for_keyword(keyword))
    vr = vr or pydicom.datadict.dictionary_VR(tag)
    value += b" " * (len(value) % 2)
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    ds.save_as(path)


def read(directory):
    """(volume, geometry, problems reported) of a series, other warnings silenced."""
    with problems.collect() as found, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        volume, geometry = read_series(directory)
    return volume, geometry, found


def middle_unlabelled(labelled, count: int) -> int:
    """An instance number in the middle of a series (slices in instance order) carrying no label point."""
    return next(n for n in sorted(range(2, count), key=lambda n: abs(n - count // 2)) if n not in labelled)


def assert_only_slices_lost(clean_read, damaged_read, labelled, missing: set[int]):
    """The damaged series equals the clean one but for the slices of the `missing` instance numbers, which
    are interpolated between their neighbours at the clean slices' positions; label points on the other
    instances map to the same normalised coordinates."""
    (clean_volume, clean_geometry, _), (volume, geometry, _) = clean_read, damaged_read
    assert volume.shape == clean_volume.shape
    lost = [int(k) for k in np.flatnonzero(np.isin(clean_geometry.instance_numbers, sorted(missing)))]
    assert geometry.interpolated_slices == tuple(lost)
    assert np.all(geometry.instance_numbers[lost] == dicom.INTERPOLATED)
    kept = np.setdiff1d(np.arange(volume.shape[0]), lost)
    np.testing.assert_array_equal(volume[kept], clean_volume[kept])
    np.testing.assert_array_equal(geometry.instance_numbers[kept], clean_geometry.instance_numbers[kept])
    # the headers store positions to 0.1 micrometre: a missing slice is placed within that of where it was
    np.testing.assert_allclose(geometry.slice_positions, clean_geometry.slice_positions, atol=1e-3)
    np.testing.assert_allclose(geometry.pixel_to_world, clean_geometry.pixel_to_world, atol=1e-3)
    np.testing.assert_allclose(geometry.spacing, clean_geometry.spacing, atol=1e-3)
    for k in lost:  # linear between the nearest slices read
        below, above = kept[kept < k].max(), kept[kept > k].min()
        t = (k - below) / (above - below)
        np.testing.assert_allclose(volume[k], (1 - t) * volume[below] + t * volume[above], rtol=1e-5, atol=1e-3)
    for instance, points in labelled.items():
        for row, col in points:
            if instance in missing:
                continue
            np.testing.assert_allclose(geometry.normalized(instance, row, col),
                                       clean_geometry.normalized(instance, row, col), atol=1e-9)


def assert_named(found, path, *texts):
    """One file_skipped problem for `path`, whose message holds every text (field, value, ...)."""
    (problem,) = [p for p in found if p.kind == "file_skipped"]
    assert problem.where == str(path)
    message = str(problem)
    for text in texts:
        assert text in message, (text, message)
    for secret in SENTINELS:
        assert secret not in message
    return problem


# ------------------------------------------------------------------ 1. one unusable header value: its file
# field: (the reason a file is refused for, values stored that refuse it); "999999999999" and "1e999" are
# clean tokens read by the fast path, the others go through pydicom's path
UNUSABLE = {
    "InstanceNumber": ("InstanceNumber not an integer in range",
                       [str(10**30).encode(), b"999999999999", b"3.5", b"seven"]),
    "ImagePositionPatient": ("ImagePositionPatient not 3 numbers within 1e5 mm",
                             [b"nan\\12.5\\40", b"left\\up\\in", b"1.5\\2.5", b"1e999\\0\\0"]),
    "ImageOrientationPatient": ("ImageOrientationPatient not two orthogonal directions", [b"1\\0\\0\\1\\0\\0"]),
    "PixelSpacing": ("PixelSpacing not 2 positive numbers up to 1e5 mm", [b"0.7", b"abc", b"-1\\1"]),
    "SliceThickness": ("SliceThickness not a number within 1e5 mm", [b"inf"]),
    "RescaleSlope": ("RescaleSlope not a number within 1e20", [b"nan"]),
    "NumberOfFrames": ("NumberOfFrames not a positive integer", [str(10**20).encode()]),
    "Rows": ("Rows not an integer in 1..65535", [b"\x00\x00"]),
    "BitsAllocated": ("BitsAllocated not 1 or a multiple of 8 up to 64", [b"\x07\x00"]),
    "PixelRepresentation": ("PixelRepresentation not 0 or 1", [b"\x05\x00"]),
    "PhotometricInterpretation": ("PhotometricInterpretation not MONOCHROME1/MONOCHROME2", [b"PALETTE COLOR"]),
}


@pytest.mark.parametrize("keyword, raw", [(keyword, raw) for keyword, (_, raws) in UNUSABLE.items() for raw in raws])
def test_an_unusable_header_value_costs_only_its_file(clean, tmp_path, keyword, raw):
    directory, labelled = copy_series(clean, tmp_path)
    count = len(os.listdir(directory))
    instance = middle_unlabelled(labelled, count)
    damaged = directory / f"{instance}.dcm"
    set_raw(damaged, keyword, raw)
    shown = raw.decode("latin-1").strip() if raw.isascii() and raw.decode().isprintable() else str(
        int.from_bytes(raw, "little"))
    damaged_read = read(directory)
    problem = assert_named(damaged_read[2], damaged, keyword, shown.split("\\")[0])
    assert problem.reason == UNUSABLE[keyword][0] and problem.detail.startswith(f"{keyword} = ")
    assert_only_slices_lost(read(clean["Sagittal T2/STIR"][0]), damaged_read, labelled, {instance})


def test_both_header_paths_refuse_a_file_alike(clean, tmp_path, monkeypatch):
    """The raw-element fast path hands every file the checks refuse to pydicom's path, which names the value
    as stored: forcing pydicom's path gives the same message."""
    directory, _ = copy_series(clean, tmp_path)
    damages = {"3.dcm": ("InstanceNumber", b"999999999999"), "4.dcm": ("ImagePositionPatient", b"1e999\\0\\0"),
               "5.dcm": ("PixelSpacing", b"0\\1"), "6.dcm": ("RescaleSlope", b"0")}
    for name, (keyword, raw) in damages.items():
        set_raw(directory / name, keyword, raw)
    _, _, fast = read(directory)
    monkeypatch.setattr(dicom, "_plain_header", lambda *args: None)
    _, _, slow = read(directory)
    assert [str(p) for p in fast] == [str(p) for p in slow]
    assert {p.where for p in fast if p.kind == "file_skipped"} == {str(directory / n) for n in damages}


def test_a_value_pydicom_cannot_convert_is_named(clean, tmp_path, monkeypatch):
    """With pydicom set to raise on invalid values, its conversion error is one file's problem too."""
    directory, labelled = copy_series(clean, tmp_path)
    instance = middle_unlabelled(labelled, len(os.listdir(directory)))
    set_raw(directory / f"{instance}.dcm", "InstanceNumber", b"seven")
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.RAISE)
    _, geometry, found = read(directory)
    problem = assert_named(found, directory / f"{instance}.dcm", "InstanceNumber", "seven")
    assert problem.reason == "InstanceNumber not readable"
    assert geometry.interpolated_slices


def test_patient_values_never_appear_in_messages(clean, tmp_path):
    """Broken patient fields are never read; the problems of other fields name only those fields."""
    directory, _ = copy_series(clean, tmp_path)
    damages = {"2.dcm": ("InstanceNumber", b"2e40"), "3.dcm": ("ImagePositionPatient", b"x\\y"),
               "4.dcm": ("Rows", b"\xff\xfe\xfd"), "5.dcm": ("PixelData", b"")}
    for name, (keyword, raw) in damages.items():
        set_raw(directory / name, "PatientName", b"PHI-SENTINEL^Broken\\Name\\\xff")
        set_raw(directory / name, "PatientBirthDate", b"PHI-SENTINEL")
        set_raw(directory / name, keyword, raw, "OW" if keyword == "PixelData" else None)
    with pytest.warns(DicomSkipWarning) as record:
        read_series(directory)
    messages = [str(w.message) for w in record if issubclass(w.category, DicomSkipWarning)]
    assert len(messages) == len(damages) + 1  # and the gap they leave
    for message in messages:
        assert not any(secret in message for secret in SENTINELS), message


# ------------------------------------------------------------------------------------- 6a. truncated files
def test_a_file_cut_in_its_header_is_reported_truncated(clean, tmp_path):
    directory, labelled = copy_series(clean, tmp_path)
    instance = middle_unlabelled(labelled, len(os.listdir(directory)))
    path = directory / f"{instance}.dcm"
    path.write_bytes(path.read_bytes()[:400])
    found = read(directory)[2]
    problem = assert_named(found, path, "truncated", "file ends at byte 400 inside ")
    assert problem.reason == "truncated" and "no pixel data" not in str(problem)
    # cut in the header of an element: named by the tag that starts there
    element = pydicom.dcmread(clean["Sagittal T2/STIR"][0] + f"/{instance}.dcm").get_item("ImagePositionPatient",
                                                                                         keep_deferred=True)
    cut = element.value_tell - 3
    path.write_bytes((clean_bytes := open(clean["Sagittal T2/STIR"][0] + f"/{instance}.dcm", "rb").read())[:cut])
    found = read(directory)[2]
    assert_named(found, path, f"file ends at byte {cut} inside ImagePositionPatient (0020,0032)")
    assert len(clean_bytes) > cut


def test_a_file_cut_in_its_pixel_data_keeps_its_header(clean, tmp_path):
    """Its slice is interpolated, and its label points still land where they belong (its header is whole)."""
    directory, labelled = copy_series(clean, tmp_path)
    instance = min(labelled)
    path = directory / f"{instance}.dcm"
    size = len(path.read_bytes()) - 500
    path.write_bytes(path.read_bytes()[:size])
    clean_read, damaged_read = read(clean["Sagittal T2/STIR"][0]), read(directory)
    assert_named(damaged_read[2], path, f"truncated (file ends at byte {size} inside PixelData (7FE0,0010)")
    assert_only_slices_lost(clean_read, damaged_read, labelled, {instance})
    for row, col in labelled[instance]:
        np.testing.assert_allclose(damaged_read[1].normalized(instance, row, col),
                                   clean_read[1].normalized(instance, row, col), atol=1e-9)


# ------------------------------------------------------------------------ 3. slices missing from the middle
@pytest.mark.parametrize("description, removed", [("Sagittal T2/STIR", 1), ("Sagittal T1", 2), ("Axial T2", 3)])
def test_missing_middle_slices_are_interpolated_at_their_true_positions(clean, tmp_path, description, removed):
    directory, labelled = copy_series(clean, tmp_path, description)
    count = len(os.listdir(directory))
    clean_read = read(clean[description][0])
    first = count // 2  # the label points of the removed slices are lost with them
    missing = set(range(first, first + removed))
    for n in missing:
        os.remove(directory / f"{n}.dcm")
    damaged_read = read(directory)
    (gap,) = damaged_read[2]
    spacing = clean_read[1].spacing[0]
    assert (gap.kind, gap.where, gap.reason) == ("series_gap", str(directory), "gap in the slice positions")
    depth = np.flatnonzero(np.isin(clean_read[1].instance_numbers, sorted(missing)))
    below, above = clean_read[1].instance_numbers[[depth.min() - 1, depth.max() + 1]]
    assert f"{(removed + 1) * spacing:.1f} mm between instances {below} and {above}" in gap.detail
    assert f"{removed} slice(s) interpolated" in gap.detail
    assert_only_slices_lost(clean_read, damaged_read, labelled, missing)
    # a point of a missing slice, located in patient space, lands where it was in the clean volume
    clean_geometry, geometry = clean_read[1], damaged_read[1]
    for k in depth:
        world = clean_geometry.pixel_to_world[k] @ np.array([10.0, 20.0, 1.0])
        np.testing.assert_allclose(geometry.world_to_canonical(world), clean_geometry.world_to_canonical(world),
                                   atol=1e-3)


def test_an_evenly_spaced_series_reports_nothing(clean):
    for directory, _ in clean.values():
        _, geometry, found = read(directory)
        assert found == [] and geometry.interpolated_slices == () and geometry.read_slices == geometry.shape[0]


def test_a_gap_too_large_to_be_a_missing_slice_is_reported_not_filled(clean, tmp_path):
    directory, _ = copy_series(clean, tmp_path)
    count = len(os.listdir(directory))
    for n in range(count // 2 + 1, count + 1):  # the right half moved far to the left of the patient
        ds = pydicom.dcmread(directory / f"{n}.dcm")
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]) + 500.0, *ds.ImagePositionPatient[1:]]
        ds.save_as(directory / f"{n}.dcm")
    volume, geometry, found = read(directory)
    (gap,) = found
    assert gap.reason == "gap in the slice positions too large to fill" and "not filled" in gap.detail
    assert volume.shape[0] == count and geometry.interpolated_slices == ()


def test_truncation_is_not_claimed_for_a_whole_file(clean):
    path = os.path.join(clean["Sagittal T1"][0], "1.dcm")
    assert dicom_header._truncation(path) is None
