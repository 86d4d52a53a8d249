"""Tests of lumbar_jax.data.synthetic: Kaggle layout, readable quirky DICOMs, determinism, labels in pixels.

One small quirky dataset (6 train studies: every scheduled quirk lands in study indices 0-5; 2 test
studies) is written once per module; files are read back with plain pydicom (not lumbar_jax.data.dicom).
"""

from __future__ import annotations

import csv
import filecmp
import json
import os

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from scipy import ndimage

from lumbar_jax import labels
from lumbar_jax.data import synthetic
from lumbar_jax.data.synthetic import __main__ as synthetic_cli
from lumbar_jax.data.synthetic.layout import SUMMARY_NAME

SEED, NUM_TRAIN, NUM_TEST = 3, 6, 2
SPEC = synthetic.DatasetSpec(NUM_TRAIN, SEED, NUM_TEST)  # the module's quirky dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(root folder, summary) of the module's quirky dataset."""
    root = str(tmp_path_factory.mktemp("synthetic"))
    summary = synthetic.write_synthetic_dataset(root, SPEC, progress=False)
    return root, summary


@pytest.fixture(scope="module")
def studies():
    """study_id -> the planned Study (phantom, geometry, latent labels) of the module's dataset."""
    ids = synthetic.draw_ids(SEED, NUM_TRAIN + NUM_TEST)
    planned = [synthetic.make_study(SPEC, i, ids=ids[i]) for i in range(NUM_TRAIN + NUM_TEST)]
    return {st.study_id: st for st in planned}


def read_csv(path: str) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def content(ds) -> np.ndarray:
    """Image content of a dataset the way docs/conventions.md section 3 reads it: rescale applied, MONOCHROME1
    inverted (over the BitsStored range)."""
    a = ds.pixel_array.astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        a = (2 ** ds.BitsStored - 1) - a
    return a * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def pixel_to_patient(ds, x: float, y: float) -> np.ndarray:
    iop = np.array(ds.ImageOrientationPatient, float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    return np.array(ds.ImagePositionPatient, float) + x * col_spacing * iop[:3] + y * row_spacing * iop[3:]


def series_files(root: str, split: str, study_id, series_id) -> list[str]:
    folder = os.path.join(root, f"{split}_images", str(study_id), str(series_id))
    return sorted(os.path.join(folder, f) for f in os.listdir(folder))


# ------------------------------------------------------------------------------------------------ layout
def test_csvs_have_kaggle_headers_and_spellings(dataset):
    root, summary = dataset
    header, rows = read_csv(os.path.join(root, "train.csv"))
    assert header == ["study_id", *labels.TARGETS] and len(rows) == NUM_TRAIN
    cells = [c for r in rows for c in r[1:]]
    assert set(cells) <= set(labels.SEVERITY_NAMES) | {""} and "" in cells
    assert any(all(r[1 + c * 5 + lv] == "" for lv in range(5)) for r in rows for c in range(5))

    header, coords = read_csv(os.path.join(root, "train_label_coordinates.csv"))
    assert header == ["study_id", "series_id", "instance_number", "condition", "level", "x", "y"]
    assert {r[3] for r in coords} == set(labels.CONDITION_CSV_NAMES)
    assert {r[4] for r in coords} == set(labels.LEVEL_CSV_NAMES)

    header, series = read_csv(os.path.join(root, "train_series_descriptions.csv"))
    assert header == ["study_id", "series_id", "series_description"]
    assert {r[2] for r in series} == set(labels.SERIES_DESCRIPTIONS)
    per_study = {}
    for sid, _, desc in series:
        per_study.setdefault(sid, []).append(desc)
    assert any(d.count("Axial T2") == 2 for d in per_study.values())  # two axial series in one study
    assert any(len(set(d)) == 2 for d in per_study.values())  # one series type missing in one study

    header, test_series = read_csv(os.path.join(root, "test_series_descriptions.csv"))
    header_sub, sub = read_csv(os.path.join(root, "sample_submission.csv"))
    assert header_sub == ["row_id", *labels.SEVERITY_COLUMNS]
    test_ids = sorted({int(r[0]) for r in test_series})
    assert len(test_ids) == NUM_TEST
    assert [r[0] for r in sub] == [rid for s in test_ids for rid in labels.study_row_ids(s)]

    all_ids = [int(r[0]) for r in rows] + test_ids
    series_ids = [int(r[1]) for r in series + test_series]
    assert len(set(all_ids)) == len(all_ids) and len(set(series_ids)) == len(series_ids)
    assert all(10**6 <= i < 10**10 for i in all_ids + series_ids)


def test_one_coordinate_row_per_labelled_target_on_the_right_series(dataset, studies):
    root, _ = dataset
    _, rows = read_csv(os.path.join(root, "train.csv"))
    _, coords = read_csv(os.path.join(root, "train_label_coordinates.csv"))
    _, series = read_csv(os.path.join(root, "train_series_descriptions.csv"))
    description = {(int(a), int(b)): c for a, b, c in series}
    annotated = {}
    for sid, ser, inst, cond, lv, x, y in coords:
        key = (int(sid), labels.target_index(labels.condition_from_csv(cond), labels.level_from_csv(lv)))
        assert key not in annotated
        annotated[key] = description[int(sid), int(ser)]
    expected_series = ("Sagittal T2/STIR", "Sagittal T1", "Sagittal T1", "Axial T2", "Axial T2")
    for r in rows:
        sid = int(r[0])
        present = {description[k] for k in description if k[0] == sid}
        for t, cell in enumerate(r[1:]):
            wanted = expected_series[t // 5]
            assert ((sid, t) in annotated) == (cell != "" and wanted in present), (sid, labels.TARGETS[t])
            if (sid, t) in annotated:
                assert annotated[sid, t] == wanted
                chosen = studies[sid].annotated_series(labels.SERIES_DESCRIPTIONS.index(wanted))
                assert chosen.series_id == int(next(c[1] for c in coords if int(c[0]) == sid
                                                    and labels.target_index(labels.condition_from_csv(c[3]),
                                                                       labels.level_from_csv(c[4])) == t))


# ------------------------------------------------------------------------------------------------- DICOM
def test_every_listed_series_exists_and_reads_with_consistent_geometry(dataset, studies):
    root, summary = dataset
    unreadable = set(summary["unreadable_files"])
    seen = {"syntaxes": set(), "photometric": set(), "rescale": set(), "mixed_shape": 0, "reversed": 0,
            "unreadable": 0}
    for split in ("train", "test"):
        _, series = read_csv(os.path.join(root, f"{split}_series_descriptions.csv"))
        for sid, ser, desc in series:
            files = series_files(root, split, sid, ser)
            datasets = []
            for path in files:
                rel = os.path.relpath(path, root)
                if rel in unreadable:
                    seen["unreadable"] += 1
                    with pytest.raises((InvalidDicomError, ValueError)):
                        pydicom.dcmread(path).pixel_array
                    continue
                ds = pydicom.dcmread(path)
                arr = ds.pixel_array
                assert arr.shape == (ds.Rows, ds.Columns) and arr.dtype == np.uint16
                assert (ds.Modality, ds.SOPClassUID, ds.SeriesDescription) == ("MR", pydicom.uid.MRImageStorage, desc)
                assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (sid, ser)
                assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel) == \
                    (16, 12, 11, 0, 1)
                assert int(ds.InstanceNumber) == int(os.path.basename(path)[:-4])
                sop = f"{sid}.{ser}.{ds.InstanceNumber}"
                assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == sop
                assert synthetic.PHI_MARKER in str(ds.PatientName) and synthetic.PHI_MARKER in ds.PatientID
                assert ds.PatientBirthDate == synthetic.PHI_BIRTH_DATE and synthetic.PHI_MARKER in ds.InstitutionName
                seen["syntaxes"].add(ds.file_meta.TransferSyntaxUID)
                seen["photometric"].add(ds.PhotometricInterpretation)
                seen["rescale"].add((ser, "RescaleSlope" in ds))
                datasets.append(ds)
            iop = np.array([ds.ImageOrientationPatient for ds in datasets], float)
            assert np.allclose(np.linalg.norm(iop[:, :3], axis=1), 1, atol=1e-5)
            assert np.allclose((iop[:, :3] * iop[:, 3:]).sum(1), 0, atol=1e-5)
            normal = np.cross(iop[0, :3], iop[0, 3:])
            assert np.all(np.abs(np.cross(iop[:, :3], iop[:, 3:]) @ normal) > np.cos(np.deg2rad(10)))
            ipp = np.array([ds.ImagePositionPatient for ds in datasets], float)
            ipp = ipp[np.argsort([int(ds.InstanceNumber) for ds in datasets])]
            assert len(np.unique(np.round(ipp @ normal, 3))) == len(ipp)  # distinct slice positions
            # instance 1 is the patient's right (sagittal) / the top (axial) unless the numbering is reversed
            seen["reversed"] += bool((ipp[-1] - ipp[0])[0 if desc.startswith("Sagittal") else 2] *
                                     (1 if desc.startswith("Sagittal") else -1) < 0)
            fov = {round(float(ds.PixelSpacing[0]) * ds.Rows, 3) for ds in datasets}
            assert len(fov) == 1  # same field of view even where the matrix differs
            seen["mixed_shape"] += len({(ds.Rows, ds.Columns) for ds in datasets}) > 1
    assert seen["syntaxes"] == {pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.RLELossless,
                                pydicom.uid.JPEG2000Lossless}
    assert seen["photometric"] == {"MONOCHROME1", "MONOCHROME2"}
    rescale_series = {ser for ser, has in seen["rescale"] if has}
    assert rescale_series and all((ser, False) in seen["rescale"] for ser in rescale_series)  # some files only
    assert seen["mixed_shape"] >= 1 and seen["reversed"] >= 1 and seen["unreadable"] == 2


def test_decoded_pixels_equal_the_rendered_content(dataset, studies):
    """Every readable file (compressed ones included) decodes to the rendered image content: lossless, with
    the rescale (rounding within 1) and MONOCHROME1 undone."""
    root, summary = dataset
    unreadable = set(summary["unreadable_files"])
    for st in studies.values():
        for s in st.series:
            for k, expected in enumerate(synthetic.render_series(st, s)):
                path = os.path.join(root, f"{st.split}_images", str(st.study_id), str(s.series_id), f"{k + 1}.dcm")
                if os.path.relpath(path, root) in unreadable:
                    continue
                got = content(pydicom.dcmread(path))
                assert np.abs(got - expected).max() <= (1 if s.rescaled[k] else 0), path


def test_quirks_land_as_documented(dataset):
    _, summary = dataset
    expected = {"reversed_instance_numbers", "flipped_inplane", "transposed_inplane", "axial_substacks",
                "two_axial_series", "missing_series", "mixed_matrix", "rescale_some_files", "monochrome1",
                "rle_lossless", "jpeg2000_lossless", "truncated_file", "junk_file", "missing_condition"}
    assert expected <= set(summary["quirks"])
    assert len(summary["unreadable_files"]) == 2
    text = json.dumps(summary)
    assert not any(p in text for p in synthetic.PHI_SENTINELS)


def test_no_phi_in_csvs(dataset):
    root, _ = dataset
    for name in os.listdir(root):
        if name.endswith((".csv", ".json")):
            text = open(os.path.join(root, name)).read()
            assert not any(p in text for p in synthetic.PHI_SENTINELS), name


# ----------------------------------------------------------------------------------------- determinism
def test_same_seed_identical_files_any_workers_and_other_seed_differs(dataset, tmp_path):
    root, _ = dataset
    again = str(tmp_path / "again")
    synthetic.write_synthetic_dataset(again, SPEC, workers=2, progress=False)
    left, right = [], []
    for base, out in ((root, left), (again, right)):
        for folder, _, files in os.walk(base):
            out += sorted(os.path.relpath(os.path.join(folder, f), base) for f in files)
    assert sorted(left) == sorted(right)
    match, mismatch, errors = filecmp.cmpfiles(root, again, left, shallow=False)
    assert not mismatch and not errors

    other = str(tmp_path / "other")
    synthetic.write_synthetic_dataset(other, synthetic.DatasetSpec(2, seed=SEED + 1), progress=False)
    assert open(os.path.join(other, "train.csv")).read() != open(os.path.join(root, "train.csv")).read()
    a = synthetic.make_study(synthetic.DatasetSpec(2, SEED, quirks=False), 1)
    b = synthetic.make_study(synthetic.DatasetSpec(2, SEED + 1, quirks=False), 1)
    assert a.study_id != b.study_id
    assert not np.array_equal(synthetic.render_series(a, a.series[1])[7], synthetic.render_series(b, b.series[1])[7])


def test_matrix_scale_multiplies_rows_and_columns_and_keeps_studies_labels_and_ids(dataset, tmp_path):
    """matrix_scale=2: the same studies (ids, labels, series, instance numbers, quirks) as scale 1, each slice
    at twice the matrix over the same field of view (so label coordinates about double too)."""
    root, summary = dataset
    n = 3  # study indices 0-2: rescaled, MONOCHROME1, RLE and mixed-matrix series among them
    big = str(tmp_path / "scale2")
    big_summary = synthetic.write_synthetic_dataset(big, synthetic.DatasetSpec(n, seed=SEED, matrix_scale=2),
                                                    progress=False)
    assert big_summary["matrix_scale"] == 2 and "matrix_scale" not in summary

    ids = {str(i) for i in synthetic.draw_ids(SEED, n)[:, 0]}  # those of study indices 0..n-1 (CSVs are sorted by id)
    header, small_labels = read_csv(os.path.join(root, "train.csv"))
    assert read_csv(os.path.join(big, "train.csv")) == (header, [r for r in small_labels if r[0] in ids])
    _, small_series = read_csv(os.path.join(root, "train_series_descriptions.csv"))
    assert read_csv(os.path.join(big, "train_series_descriptions.csv"))[1] == [r for r in small_series if r[0] in ids]
    _, small_coords = read_csv(os.path.join(root, "train_label_coordinates.csv"))
    _, big_coords = read_csv(os.path.join(big, "train_label_coordinates.csv"))
    small_coords = [r for r in small_coords if r[0] in ids]
    assert [r[:5] for r in big_coords] == [r[:5] for r in small_coords]  # study, series, instance, condition, level
    np.testing.assert_allclose([[float(v) for v in r[5:]] for r in big_coords],
                               [[2 * float(v) + 0.5 for v in r[5:]] for r in small_coords], atol=0.01)

    files = 0
    for study_id, series_id, _ in small_series:
        if study_id not in ids:
            continue
        small_files, big_files = (series_files(r, "train", study_id, series_id) for r in (root, big))
        assert [os.path.basename(f) for f in big_files] == [os.path.basename(f) for f in small_files]
        for a, b in zip(small_files, big_files):
            try:
                small, large = pydicom.dcmread(a), pydicom.dcmread(b)
            except InvalidDicomError:  # the junk file of a quirky series, in both
                continue
            assert (large.Rows, large.Columns) == (2 * small.Rows, 2 * small.Columns)
            assert large.ImageOrientationPatient == small.ImageOrientationPatient
            assert large.InstanceNumber == small.InstanceNumber
            np.testing.assert_allclose(np.array(large.PixelSpacing, float), np.array(small.PixelSpacing, float) / 2,
                                       atol=1e-6)
            files += 1
    assert files > 100
    quirks = {k: [o for o in v if str(o["study_id"]) in ids] for k, v in summary["quirks"].items()}
    assert big_summary["quirks"] == {k: v for k, v in quirks.items() if v}

    plain = synthetic.make_study(synthetic.DatasetSpec(3, SEED), 2)
    scaled = synthetic.make_study(synthetic.DatasetSpec(3, SEED, matrix_scale=2), 2)
    assert np.array_equal(plain.labels, scaled.labels) and plain.study_id == scaled.study_id
    for a, b in zip(plain.series, scaled.series):
        assert a.series_id == b.series_id and np.array_equal(b.shape, 2 * a.shape)
    with pytest.raises(ValueError, match="matrix_scale"):
        synthetic.DatasetSpec(1, SEED, matrix_scale=0)


def test_cli_no_quirks_writes_clean_files(tmp_path, capsys):
    out = str(tmp_path / "clean")
    argv = ["--out", out, "--studies", "3", "--seed", "5", "--no-quirks", "--test_studies", "1"]
    assert synthetic_cli.main(argv) == 0
    with open(os.path.join(out, "synthetic_summary.json")) as f:
        summary = json.load(f)
    assert summary["quirks"] == {} and summary["unreadable_files"] == []
    assert '"num_train_studies": 3' in capsys.readouterr().out
    _, rows = read_csv(os.path.join(out, "train.csv"))
    assert all(c != "" for r in rows for c in r)
    for folder, _, files in os.walk(os.path.join(out, "train_images")):
        for f in files:
            ds = pydicom.dcmread(os.path.join(folder, f))
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.PhotometricInterpretation == "MONOCHROME2" and "RescaleSlope" not in ds
            assert [round(float(v)) for v in ds.ImageOrientationPatient] in ([0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 1, 0])


# ------------------------------------------------------------------------------------ labels in pixels
def test_label_coordinates_point_at_the_structures(dataset, studies):
    """The annotated pixel, mapped to patient space with the file's own header, is the structure centre
    projected onto the annotated slice (which is the slice nearest it); at a normal-grade structure the pixel
    is the bright one (CSF on T2 for the canal / recesses, fat on T1 for the foramina)."""
    root, _ = dataset
    _, coords = read_csv(os.path.join(root, "train_label_coordinates.csv"))
    checked_bright = 0
    for sid, ser, inst, cond, lv, x, y in coords:
        st = studies[int(sid)]
        t = labels.target_index(labels.condition_from_csv(cond), labels.level_from_csv(lv))
        ds = pydicom.dcmread(os.path.join(root, "train_images", sid, ser, f"{inst}.dcm"))
        p = pixel_to_patient(ds, float(x), float(y))
        iop = np.array(ds.ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        offset = st.anatomy.centres()[t] - p
        assert np.linalg.norm(offset - (offset @ normal) * normal) < 1e-3  # in-plane: exact projection
        assert abs(offset @ normal) <= float(ds.SpacingBetweenSlices) / 2 + 0.05  # nearest slice
        assert 0 <= float(x) < ds.Columns and 0 <= float(y) < ds.Rows
        if st.latent[t] == 0:
            img = content(ds)
            value = img[int(round(float(y))), int(round(float(x)))]
            assert value > np.percentile(img, 80), (sid, labels.TARGETS[t])
            checked_bright += 1
    assert checked_bright > 50


def _forced(latent_code: int):
    """Study 9 of SEED without quirks, every target forced to one latent grade (same anatomy otherwise)."""
    return synthetic.make_study(synthetic.DatasetSpec(10, SEED, quirks=False), 9,
                                latent=np.full(labels.NUM_TARGETS, latent_code))


def _bright_run(row: np.ndarray, centre: int, threshold: float) -> int:
    """Length of the run of pixels above threshold through `centre` of a 1-D profile (0 if centre is dark)."""
    if row[centre] <= threshold:
        return 0
    lo, hi = centre, centre
    while lo > 0 and row[lo - 1] > threshold:
        lo -= 1
    while hi < len(row) - 1 and row[hi + 1] > threshold:
        hi += 1
    return hi - lo + 1


def test_severity_visibly_narrows_the_structures_even_at_16x64x64():
    """Same anatomy, noise and gains, every target Normal vs every target Severe: canal AP width on the
    mid-sagittal T2 row through the level (columns run anterior -> posterior), bright (fat / CSF) area near
    the foramen / recess centre; thresholds halfway between the median and the 99th percentile of the
    Normal study's series."""
    normal, severe = _forced(0), _forced(2)
    assert [s.series_id for s in normal.series] == [s.series_id for s in severe.series]
    images = {name: {s.kind: np.stack(synthetic.render_series(st, s)).astype(float) for s in st.series}
              for name, st in (("normal", normal), ("severe", severe))}
    thresholds = {k: 0.5 * (np.percentile(v, 50) + np.percentile(v, 99)) for k, v in images["normal"].items()}
    coords = {(c, lv): (inst, x, y) for c, lv, _, inst, x, y in normal.coordinates}
    assert coords == {(c, lv): (inst, x, y) for c, lv, _, inst, x, y in severe.coordinates}
    measures = {}
    for name, vols in images.items():
        canal, canal_low, foramen, recess = [], [], [], []
        for lv in range(labels.NUM_LEVELS):
            inst, x, y = coords[0, lv]
            vol, thr = vols[1], thresholds[1]
            canal.append(_bright_run(vol[inst - 1, round(y)], round(x), thr))
            low = ndimage.zoom(vol, np.array([16, 64, 64]) / vol.shape, order=1)  # the default model input size
            scale = np.array(low.shape) / vol.shape
            canal_low.append(_bright_run(low[round((inst - 1) * scale[0]), round(y * scale[1])],
                                         round(x * scale[2]), thr))
            for cond, kind, out in ((1, 0, foramen), (2, 0, foramen), (3, 2, recess), (4, 2, recess)):
                inst, x, y = coords[cond, lv]
                window = vols[kind][inst - 1, max(round(y) - 4, 0):round(y) + 5, max(round(x) - 4, 0):round(x) + 5]
                out.append((window > thresholds[kind]).sum())
        measures[name] = [np.array(m) for m in (canal, canal_low, foramen, recess)]
    (c_n, cl_n, f_n, r_n), (c_s, cl_s, f_s, r_s) = measures["normal"], measures["severe"]
    assert np.all(c_n - c_s >= 5), (c_n, c_s)  # native pixels (~1 mm)
    assert np.all(cl_n - cl_s >= 3), (cl_n, cl_s)  # voxels of the 16x64x64 resampling
    assert np.all(f_s < 0.4 * f_n), (f_n, f_s)
    assert np.all(r_s < 0.5 * r_n), (r_n, r_s)


def test_label_frequencies_noise_and_missingness_match_the_documented_model():
    latent, written = synthetic.draw_labels(1, 10000)
    for group, prior in synthetic.PRIORS.items():
        idx = labels.group_target_indices(group)
        lat, wr = latent[:, idx], written[:, idx]
        labelled = wr != labels.MISSING
        for c in range(3):
            assert abs((lat == c).mean() - prior[c]) < 0.01, (group, c)
            assert abs((wr[labelled] == c).mean() - prior[c]) < 0.01, (group, c)
        moved = 2 * synthetic.KAPPA * (min(prior[0], prior[1]) + min(prior[1], prior[2]))
        assert abs((lat[labelled] != wr[labelled]).mean() - moved) < 0.01, group
        assert np.all(np.abs(lat[labelled].astype(int) - wr[labelled]) <= 1)  # one grade at most
    assert 0.015 < (written == labels.MISSING).mean() < 0.03
    clean_latent, clean = synthetic.draw_labels(1, 200, quirks=False)
    assert (clean != labels.MISSING).all() and np.array_equal(clean_latent, latent[:200])
    assert np.array_equal(synthetic.make_study(synthetic.DatasetSpec(8, seed=1), 7).latent, latent[7])
    assert np.allclose(synthetic.label_noise_matrix("foraminal").sum(1), 1)


def test_noise_floor_is_far_below_the_class_prior():
    scores = synthetic.noise_floor_score(seed=0, num_studies=2000)
    assert 0.25 < scores["noise_floor"] < 0.37 and 1.0 < scores["class_prior"] < 1.2


def test_latent_severities_are_the_planned_ones_and_only_for_this_generator(dataset, studies, tmp_path):
    root, summary = dataset
    latent = synthetic.latent_severities(root)
    assert sorted(latent) == sorted(s for s, st in studies.items() if st.split == "train")
    moved = 0
    for study_id, grades in latent.items():
        np.testing.assert_array_equal(grades, studies[study_id].latent)
        written = studies[study_id].labels
        moved += int(((grades != written) & (written != labels.MISSING)).sum())
    assert moved == summary["label_noise"]["moved_labels_train"]
    assert synthetic.latent_severities(str(tmp_path)) is None  # no summary: not this generator's folder
    other = json.loads(open(os.path.join(root, SUMMARY_NAME)).read()) | {"version": "0.0.1"}
    with open(tmp_path / SUMMARY_NAME, "w") as f:
        json.dump(other, f)
    assert synthetic.latent_severities(str(tmp_path)) is None  # another version may draw other grades
