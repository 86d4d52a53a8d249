"""The DICOM SR of a study (lumbar_jax/structured_report.py), without a trained run: a synthetic study's record, its
points and probabilities drawn at random, its `study_report.study_report`, its SR read back with highdicom. Each
group's point, grade and probabilities are the report's; the UIDs and frames are the source's; a series absent
or without a Frame of Reference UID gives groups without a point; only the Patient and Study modules are copied.
(tests/test_two_stage_prediction.py checks the SR that predict.py writes against its JSON report.)"""

import json
import logging
import os
import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom._standard_utils import check_required_attributes, get_iod_module_map, get_sop_class_iod_map

from lumbar_jax import labels, localiser_metrics, structured_report, study_report
from lumbar_jax.data import study, synthetic
from tests.test_evaluate_predict import run_script

PROVENANCE = {"workdir": "/runs/x", "folds": [0, 1], "checkpoint": "best", "checkpoint_steps": [7, 9],
              "tta": False, "calibration": {"applied": False, "reason": "switched off (--no_calibration)"},
              "model": "vit_effnet", "package": "lumbar_jax 0.1.0"}
# Header values of other modules stamped into the source (with the synthetic InstitutionName, Manufacturer and
# SeriesDescription): none may reach the SR.
FOREIGN = {"StationName": "STATION-SENTINEL", "DeviceSerialNumber": "SERIAL-SENTINEL",
           "ProtocolName": "PROTOCOL-SENTINEL", "OperatorsName": "OPERATOR^SENTINEL"}
# Patient and Study module values stamped into the source (beside the synthetic PatientName, PatientID, ...):
# every one is copied.
IDENTITY = {"PatientSex": "F", "StudyDate": "20240102", "StudyTime": "101500", "AccessionNumber": "ACC-77",
            "StudyID": "S77", "StudyDescription": "MR LUMBAR SPINE", "PatientAge": "061Y"}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(study folder, its record, its series folders per type, a study report with points) of one synthetic
    test study whose headers also carry FOREIGN and IDENTITY values."""
    root = tmp_path_factory.mktemp("sr_source")
    synthetic.write_synthetic_dataset(str(root / "kaggle"), synthetic.DatasetSpec(1, seed=3, num_test_studies=1),
                                      progress=False)
    entry = study.list_studies(str(root / "kaggle"), "test")[0]
    record = study.study_example(entry, (16, 64, 64), native_max_size=64)
    series_dirs = study.chosen_series_dirs(entry, record["series_ids"])
    for folder in series_dirs:
        stamp(folder, {**FOREIGN, **IDENTITY})
    rng = np.random.default_rng(0)
    points = rng.uniform(0.1, 0.9, (2, labels.NUM_TARGETS, 3))
    probs = rng.dirichlet(np.ones(3), labels.NUM_TARGETS)
    report = study_report.study_report(entry.study_id, record["present"], probs, {}, PROVENANCE,
                                  localiser_metrics.point_report(record, points))
    return os.path.dirname(series_dirs[0]), record, series_dirs, report


def stamp(series_dir: str, values: dict) -> None:
    """Set (value) or delete (None) header elements in every readable .dcm file of a series folder."""
    for name in os.listdir(series_dir):
        path = os.path.join(series_dir, name)
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # the synthetic quirks: junk and truncated files stay as they are
            continue
        for keyword, value in values.items():
            if value is None:
                ds.pop(keyword, None)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path)


def write_and_read(report: dict, series_dirs, path) -> tuple[pydicom.Dataset, hd.sr.Comprehensive3DSR]:
    structured_report.write(report, series_dirs, str(path))
    dataset = pydicom.dcmread(str(path))
    return dataset, hd.sr.Comprehensive3DSR.from_dataset(dataset)


def groups_by_target(sr: hd.sr.Comprehensive3DSR) -> dict:
    """{tracking identifier: group} of the SR's planar ROI (with a point) and image (without) measurement groups,
    in the order the SR holds them."""
    found = sr.content.get_planar_roi_measurement_groups() + sr.content.get_image_measurement_groups()
    by_id = {g.tracking_identifier: g for g in found}
    container = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    order = [next(c.TextValue for c in g.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "112039")
             for g in container.ContentSequence]
    return {name: by_id[name] for name in order}


def group_texts(group) -> list[str]:
    return [item.TextValue for item in group[0].ContentSequence if item.ValueType == "TEXT"
            and item.ConceptNameCodeSequence[0].CodeValue == "C0034375"]


def severity_and_probabilities(group) -> tuple[str, list[float]]:
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name == pydicom.sr.codedict.codes.SCT.Severity
    measurements = {m.name.value: m for m in group.get_measurements()}
    assert all(m.unit.value == "1" and m.unit.scheme_designator == "UCUM" for m in measurements.values())
    return evaluation.value.meaning, [measurements[f"p_{c}"].value for c in labels.SEVERITY_COLUMNS]


def sr_provenance(dataset: pydicom.Dataset) -> dict:
    """The provenance in an SR's "Qualitative Evaluations" comment, after the research-use notice (checked)."""
    notes = [item for item in dataset.ContentSequence if item.ValueType == "CONTAINER"
             and item.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    text = notes[0].ContentSequence[0].TextValue
    assert text.startswith(study_report.RESEARCH_USE_NOTE)
    return json.loads(text.split("Provenance: ", 1)[1])


def assert_sr_holds_the_report(path, report: dict, series_dirs) -> tuple[pydicom.Dataset, dict]:
    """The SR at `path` read back with pydicom and highdicom: a Comprehensive 3D SR of TID 1500, unverified,
    with one group per target in target order, each holding its entry of `report` (grade, probabilities, and
    the point in the Frame of Reference of its series in `series_dirs`, or no point where that series is absent
    or has no frame). Returns (the dataset, {target: group})."""
    dataset = pydicom.dcmread(str(path))
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34" == structured_report.SOP_CLASS_UID
    assert dataset.VerificationFlag == "UNVERIFIED" and dataset.Modality == "SR"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = groups_by_target(sr)
    assert list(groups) == list(labels.TARGETS)
    uids = [g.tracking_uid for g in groups.values()]
    assert len(set(uids)) == 25 and all(pydicom.uid.UID(u).is_valid for u in uids)
    for t, (name, group) in enumerate(groups.items()):
        target = report["targets"][name]
        folder = series_dirs[labels.TARGET_SERIES[t]]
        frame = folder and pydicom.dcmread(structured_report.read_series_headers(folder).slices[0].path,
                                           stop_before_pixels=True).get("FrameOfReferenceUID")
        if frame and (target.get("localiser") or {}).get("patient_mm"):
            assert isinstance(group, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations)
            np.testing.assert_allclose(group.roi.value, [target["localiser"]["patient_mm"]], atol=1e-4)
            assert group.roi.graphic_type == hd.sr.GraphicTypeValues3D.POINT
            assert group.roi.frame_of_reference_uid == frame
        else:
            assert isinstance(group, hd.sr.MeasurementsAndQualitativeEvaluations)
            assert not [item for item in group[0].ContentSequence if item.ValueType == "SCOORD3D"]
            assert len(group_texts(group)) == 1
        grade, probabilities = severity_and_probabilities(group)
        assert grade == target["grade"]
        np.testing.assert_allclose(probabilities, [target[c] for c in labels.SEVERITY_COLUMNS], rtol=1e-12)
        condition_group = list(labels.CONDITION_GROUPS)[labels.TARGET_GROUP[t]]
        assert group.finding_type == structured_report.FINDING_TYPES[condition_group]
        (site,) = group.finding_sites
        assert site.value == structured_report.LEVEL_SITES[labels.TARGET_LEVEL[t]]
        assert site.laterality == structured_report.SIDES[labels.TARGET_SIDE[t]]
    return dataset, groups


def test_each_group_holds_the_reports_point_grade_and_probabilities(source, tmp_path):
    _, _, series_dirs, report = source
    structured_report.write(report, series_dirs, str(tmp_path / "sr.dcm"))
    dataset, groups = assert_sr_holds_the_report(tmp_path / "sr.dcm", report, series_dirs)
    assert all(isinstance(g, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) for g in groups.values())
    left = groups["left_neural_foraminal_narrowing_l4_l5"].finding_sites[0].laterality
    assert left is not None and left.meaning == "Left"
    assert sr_provenance(dataset) == PROVENANCE


def test_uids_frames_and_referenced_slices_are_the_sources(source, tmp_path):
    _, _, series_dirs, report = source
    dataset, sr = write_and_read(report, series_dirs, tmp_path / "sr.dcm")
    headers = [structured_report.read_series_headers(d) for d in series_dirs]
    first = pydicom.dcmread(headers[0].slices[0].path, stop_before_pixels=True)
    assert dataset.StudyInstanceUID == first.StudyInstanceUID
    assert dataset.SeriesInstanceUID not in {s.series_instance_uid for h in headers for s in h.slices}
    assert dataset.SOPInstanceUID not in {s.sop_instance_uid for h in headers for s in h.slices}
    evidence = {(uid[1], uid[2]) for uid in sr.get_evidence()}
    assert evidence == {(s.series_instance_uid, s.sop_instance_uid) for h in headers for s in h.slices}
    for t, (name, group) in enumerate(groups_by_target(sr).items()):
        series = headers[labels.TARGET_SERIES[t]]
        frame = pydicom.dcmread(series.slices[0].path, stop_before_pixels=True).FrameOfReferenceUID
        assert group.roi.frame_of_reference_uid == frame == series.frame_of_reference_uid
        nearest = series.nearest_slice(report["targets"][name]["localiser"]["patient_mm"])
        for measurement in group.get_measurements():
            (image,) = measurement.referenced_images
            assert image.referenced_sop_instance_uid == nearest.sop_instance_uid
        depths = np.sort([np.dot(s.position, nearest.normal) for s in series.slices])
        point = np.asarray(report["targets"][name]["localiser"]["patient_mm"])
        assert abs(np.dot(point - nearest.position, nearest.normal)) <= np.diff(depths).max() / 2 + 1e-6


def test_only_the_patient_and_study_modules_are_copied(source, tmp_path):
    _, _, series_dirs, report = source
    dataset, _ = write_and_read(report, series_dirs, tmp_path / "sr.dcm")
    first = pydicom.dcmread(structured_report.read_series_headers(series_dirs[0]).slices[0].path,
                            stop_before_pixels=True)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", *IDENTITY):
        assert keyword in structured_report.identity_keywords()
        assert dataset[keyword].value == first[keyword].value
    raw = open(tmp_path / "sr.dcm", "rb").read()
    sources = [pydicom.dcmread(os.path.join(d, f), stop_before_pixels=True) for d in series_dirs
               for f in sorted(os.listdir(d))[:1]]
    foreign = {*FOREIGN.values(), *(s.InstitutionName for s in sources), *(s.Manufacturer for s in sources),
               *(s.SeriesDescription for s in sources)}
    assert "PHI-SENTINEL HOSPITAL" in foreign and "Sagittal T1" in foreign
    assert not [v for v in foreign if str(v).encode() in raw]
    own = {"InstitutionName", "StationName", "DeviceSerialNumber", "ProtocolName", "OperatorsName", "BodyPartExamined"}
    assert not own & set(dataset.dir())
    assert dataset.Manufacturer == "lumbar_jax" and dataset.SeriesDescription == structured_report.SERIES_DESCRIPTION


def test_no_value_read_from_the_headers_is_logged(source, tmp_path, caplog):
    _, _, series_dirs, report = source
    caplog.set_level(logging.DEBUG)
    structured_report.write(report, series_dirs, str(tmp_path / "sr.dcm"))
    headers = [structured_report.read_series_headers(d) for d in series_dirs]
    first = pydicom.dcmread(headers[0].slices[0].path, stop_before_pixels=True)
    read = {first.PatientID, str(first.PatientName), first.StudyInstanceUID, first.AccessionNumber,
            *(s.sop_instance_uid for h in headers for s in h.slices), *(h.frame_of_reference_uid for h in headers)}
    assert not [v for v in read if v in caplog.text]


def test_an_absent_series_or_one_without_a_frame_gives_groups_without_a_point(source, tmp_path):
    study_dir, _, series_dirs, report = source
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy)
    copied = [str(copy / os.path.basename(d)) for d in series_dirs]
    stamp(copied[0], {"FrameOfReferenceUID": None})  # sagittal T1: the foraminal targets
    shutil.rmtree(copied[2])  # axial T2: the subarticular targets
    dataset, sr = write_and_read(report, [copied[0], copied[1], None], tmp_path / "sr.dcm")
    _, groups = assert_sr_holds_the_report(tmp_path / "sr.dcm", report, [copied[0], copied[1], None])
    for t, group in enumerate(groups.values()):
        series = labels.TARGET_SERIES[t]
        if series == 1:
            assert isinstance(group, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) and not group_texts(group)
            continue
        assert group_texts(group) == [
            "no point: the sagittal_t1 series has no Frame of Reference UID" if series == 0 else
            "no point: the axial_t2 series this condition is read on is absent"]
        assert all(not m.referenced_images for m in group.get_measurements())
    assert {uid[1] for uid in sr.get_evidence()} == {
        pydicom.dcmread(os.path.join(d, sorted(os.listdir(d))[0]), stop_before_pixels=True).SeriesInstanceUID
        for d in copied[:2]}


def test_a_run_that_does_not_localise_gives_groups_without_a_point(source, tmp_path):
    _, record, series_dirs, report = source
    probs = np.array([[report["targets"][t][c] for c in labels.SEVERITY_COLUMNS] for t in labels.TARGETS])
    one_stage = study_report.study_report(report["study_id"], record["present"], probs, {}, PROVENANCE)
    _, sr = write_and_read(one_stage, series_dirs, tmp_path / "sr.dcm")
    groups = groups_by_target(sr)
    assert not sr.content.get_planar_roi_measurement_groups() and len(groups) == 25
    assert all(group_texts(g) == ["no point: the run's pipeline does not localise targets"] for g in groups.values())


def test_the_file_passes_pydicom_and_highdicoms_checks(source, tmp_path):
    _, _, series_dirs, report = source
    dataset, sr = write_and_read(report, series_dirs, tmp_path / "sr.dcm")
    assert dataset.file_meta.MediaStorageSOPClassUID == structured_report.SOP_CLASS_UID
    assert dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    iod = get_sop_class_iod_map()[structured_report.SOP_CLASS_UID]
    # Every mandatory module's required attributes (AttributeError if one is missing), except SR Document
    # Content, whose table in highdicom lists the conditional attributes of other value types (an IMAGE item's
    # ReferencedSOPSequence) as required of every item: the content is checked by parsing it as TID 1500 below.
    mandatory = [m["key"] for m in get_iod_module_map()[iod] if m["usage"] == "M"]
    assert "sr-document-general" in mandatory and "general-study" in mandatory
    for module in mandatory:
        if module != "sr-document-content":
            check_required_attributes(dataset, module)
    assert isinstance(sr.content, hd.sr.MeasurementReport)  # the TID 1500 root parsed as one, its groups too
    assert len(sr.content.get_planar_roi_measurement_groups()) == labels.NUM_TARGETS
    assert sr.content.get_observer_contexts()[0].observer_identifying_attributes.name == "lumbar_jax"


def test_a_bad_sr_path_is_refused_before_any_model_is_built(source, tmp_path, capsys):
    study_dir = source[0]
    missing = tmp_path / "no_such_folder" / "sr.dcm"
    no_run = str(tmp_path / "no_run")  # no config.json: building the model would fail on it
    assert run_script("predict.py", "--workdir", no_run, "--study_dir", study_dir, "--sr", str(missing)) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: --sr {missing}: folder {missing.parent} not found"
    (tmp_path / "a_file").write_text("")
    assert run_script("predict.py", "--workdir", no_run, "--data_dir", study_dir, "--sr_dir",
                      str(tmp_path / "a_file")) == 2
    assert capsys.readouterr().err.strip() == f"error: --sr_dir {tmp_path / 'a_file'} is a file, not a folder"
    assert run_script("predict.py", "--workdir", no_run, "--data_dir", study_dir, "--sr", "x.dcm") == 2
    assert "error: --sr goes with --study_dir, --sr_dir with --data_dir" in capsys.readouterr().err
