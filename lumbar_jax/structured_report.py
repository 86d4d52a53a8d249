"""A study's 25 predictions as a DICOM Comprehensive 3D SR with a TID 1500 Measurement Report root, built with
highdicom, so that a PACS files it with its study and OHIF or 3D Slicer display it (docs/conventions.md
section 8).

One measurement group per target, in target order: a TID 1410 group with the localiser's point
(`ImageRegion3D` POINT, patient mm, in the Frame of Reference of the series the target is read on) where there is
one, otherwise a TID 1501 group without a region and a text item saying why (the series absent, without a Frame
of Reference UID, or a run that does not localise: a frame is never invented). Each group has its tracking
identifier (the target's name and a UID), finding type, finding site and laterality, the study report's grade as
the severity and its three probabilities (UCUM `1`), each referencing the slice the point lies on.

This module is the one place that reads identifying DICOM header values (the data pipeline strips them): the
Patient and Study modules of the source, its UIDs and the slices' positions, read here from the source files
and written only into the SR, never logged or stored anywhere else. The SR copies no other header value.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import highdicom as hd
import numpy as np
import pydicom
from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from lumbar_jax import labels

# highdicom logs the source's SOP Instance UID at INFO while it copies the Patient and Study modules: values read
# here go into the SR only, so its logger speaks from WARNING on.
logging.getLogger("highdicom").setLevel(logging.WARNING)

# The private coding scheme of the concepts pydicom's code dictionary has no code for (docs/conventions.md
# section 8 lists its codes).
SCHEME = "99LUMBARJAX"
_SCHEME_ITEM = hd.coding_schemes.CodingSchemeIdentificationItem(
    designator=SCHEME, name="lumbar_jax findings", responsible_organization="lumbar_jax")

# Finding type per condition group (labels.CONDITION_GROUPS): no SNOMED CT code of pydicom's names these findings.
# Code values fit a Code Value (16 characters at most).
FINDING_TYPES = {
    "spinal": Code("SCS", SCHEME, "Spinal canal stenosis"),
    "foraminal": Code("NFN", SCHEME, "Neural foraminal narrowing"),
    "subarticular": Code("SS", SCHEME, "Subarticular stenosis"),
}
# Finding site per disc level (labels.LEVELS order) and laterality per side (labels.TARGET_SIDE: none, left, right).
LEVEL_SITES = (codes.SCT.LevelOfL1L2IntervertebralDisc, codes.SCT.LevelOfL2L3IntervertebralDisc,
               codes.SCT.LevelOfL3L4IntervertebralDisc, codes.SCT.LevelOfL4L5IntervertebralDisc,
               codes.SCT.LevelOfL5S1IntervertebralDisc)
SIDES = (None, codes.SCT.Left, codes.SCT.Right)
# The grade (labels.SEVERITY_NAMES order) as the value of a SNOMED CT "Severity" evaluation; the competition's
# Normal/Mild is one class, which SNOMED CT has no code for.
SEVERITIES = (Code("normal_mild", SCHEME, labels.SEVERITY_NAMES[0]), codes.SCT.Moderate, codes.SCT.Severe)
# The three probabilities (labels.SEVERITY_COLUMNS order) as numeric measurements.
PROBABILITIES = tuple(Code(f"p_{column}", SCHEME, f"Probability of {name}")
                      for column, name in zip(labels.SEVERITY_COLUMNS, labels.SEVERITY_NAMES))
_QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")

SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
SERIES_NUMBER = 9901  # the SR's own series, after the scanner's
SERIES_DESCRIPTION = "lumbar_jax findings (research use only, unverified)"


@dataclasses.dataclass(frozen=True)
class Slice:
    """One source image: its path, UIDs, and plane (a point on it and its normal, patient mm)."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    position: np.ndarray  # ImagePositionPatient [3]
    normal: np.ndarray  # unit normal of the slice plane [3]


@dataclasses.dataclass(frozen=True)
class SeriesHeaders:
    """The headers of one series' readable slices, and its Frame of Reference UID or why it has none."""

    slices: tuple[Slice, ...]
    frame_of_reference_uid: str | None
    no_frame_reason: str | None

    def nearest_slice(self, point_mm) -> Slice:
        """The slice whose plane is nearest to `point_mm` (distance along each slice's normal)."""
        point = np.asarray(point_mm, np.float64)
        return min(self.slices, key=lambda s: abs(float(np.dot(point - s.position, s.normal))))


def read_series_headers(series_dir: str) -> SeriesHeaders:
    """The slices of a series folder whose header has the UIDs and the geometry (others are skipped), and its
    one Frame of Reference UID. ValueError naming the folder if no slice is usable."""
    slices, frames = [], set()
    for name in sorted(os.listdir(series_dir)):
        if not name.endswith(".dcm"):
            continue
        path = os.path.join(series_dir, name)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            orientation = np.asarray(ds.ImageOrientationPatient, np.float64).reshape(2, 3)
            normal = np.cross(orientation[0], orientation[1])
            slices.append(Slice(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                                str(ds.StudyInstanceUID), np.asarray(ds.ImagePositionPatient, np.float64),
                                normal / np.linalg.norm(normal)))
        except (pydicom.errors.InvalidDicomError, AttributeError, ValueError, TypeError, OSError):
            continue  # the reader has already reported this file; it is no source image
        frames.add(str(ds.get("FrameOfReferenceUID") or ""))
    if not slices:
        raise ValueError(f"series folder {series_dir}: no slice has the UIDs and geometry an SR references")
    if frames == {""}:
        return SeriesHeaders(tuple(slices), None, "has no Frame of Reference UID")
    if "" in frames:
        return SeriesHeaders(tuple(slices), None, "has slices without a Frame of Reference UID")
    if len(frames) > 1:
        return SeriesHeaders(tuple(slices), None, "has more than one Frame of Reference UID")
    return SeriesHeaders(tuple(slices), frames.pop(), None)


def identity_keywords() -> frozenset[str]:
    """The attributes of the Patient and Study modules of a Comprehensive 3D SR (highdicom's tables of the
    standard): the only header values the SR copies from its source."""
    iod = get_sop_class_iod_map()[SOP_CLASS_UID]
    attributes = get_module_attribute_map()
    return frozenset(str(a["keyword"]) for m in get_iod_module_map()[iod] if m["ie"] in ("Patient", "Study")
                     for a in attributes[m["key"]] if not a["path"])


# Type 2 attributes of the Patient and General Study modules highdicom reads from the first evidence: empty
# when the source lacks them.
_TYPE2_IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                   "AccessionNumber", "StudyID", "ReferringPhysicianName")


def evidence(slices: list[Slice]) -> list[pydicom.Dataset]:
    """One dataset per source image with its UIDs only, the first also with its Patient and Study modules
    (highdicom copies those from the first evidence): nothing else of a source header reaches the SR."""
    out = []
    for i, s in enumerate(slices):
        ds = pydicom.Dataset()
        if i == 0:
            source = pydicom.dcmread(s.path, stop_before_pixels=True)
            for keyword in identity_keywords() | {"SpecificCharacterSet"}:
                if keyword in source:
                    ds[keyword] = source[keyword]
            for keyword in _TYPE2_IDENTITY:
                if keyword not in ds:
                    setattr(ds, keyword, None)
        ds.SOPClassUID, ds.SOPInstanceUID = s.sop_class_uid, s.sop_instance_uid
        ds.SeriesInstanceUID, ds.StudyInstanceUID = s.series_instance_uid, s.study_instance_uid
        out.append(ds)
    return out


def no_point_reason(target: dict, series: str, headers: SeriesHeaders | None) -> str | None:
    """Why a target's group has no point (None when it has one): its series absent, without one Frame of
    Reference UID, or no localised point (a run that does not localise)."""
    if headers is None:
        return f"no point: the {series} series this condition is read on is absent"
    if headers.no_frame_reason:
        return f"no point: the {series} series {headers.no_frame_reason}"
    if not (target.get("localiser") or {}).get("patient_mm"):
        return "no point: the run's pipeline does not localise targets"
    return None


def measurement_group(t: int, target: dict, headers: SeriesHeaders | None) -> hd.sr.templates.Template:
    """The measurement group of target index `t` from its entry of the study report (`study_report.study_report`):
    TID 1410 with the point where there is one (its probabilities referencing the slice it lies on), else
    TID 1501 with a text item saying why. The text item is the one piece highdicom has no argument for."""
    name, series = labels.TARGETS[t], labels.SERIES_TYPES[labels.TARGET_SERIES[t]]
    reason = no_point_reason(target, series, headers)
    references = None
    if reason is None:
        image = headers.nearest_slice(target["localiser"]["patient_mm"])
        references = [hd.sr.SourceImageForMeasurement(image.sop_class_uid, image.sop_instance_uid)]
    common = dict(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name),
        finding_type=FINDING_TYPES[list(labels.CONDITION_GROUPS)[labels.TARGET_GROUP[t]]],
        finding_sites=[hd.sr.FindingSite(LEVEL_SITES[labels.TARGET_LEVEL[t]], SIDES[labels.TARGET_SIDE[t]])],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            codes.SCT.Severity, SEVERITIES[labels.SEVERITY_NAMES.index(target["grade"])])],
        measurements=[hd.sr.Measurement(code, float(target[column]), codes.UCUM.NoUnits,
                                        referenced_images=references)
                      for code, column in zip(PROBABILITIES, labels.SEVERITY_COLUMNS)])
    if reason is None:
        region = hd.sr.ImageRegion3D(hd.sr.GraphicTypeValues3D.POINT,
                                     np.asarray([target["localiser"]["patient_mm"]], np.float64),
                                     headers.frame_of_reference_uid)
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=region, **common)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    group[0].ContentSequence.append(hd.sr.TextContentItem(_QUALITATIVE_EVALUATIONS, reason, "CONTAINS"))
    return group


def build(report: dict, series_dirs) -> hd.sr.Comprehensive3DSR:
    """The SR of one study: `report` is its `study_report.study_report` (grades, probabilities, points, provenance,
    notice), `series_dirs` the folder of the series read per type (labels.SERIES_TYPES order; None if absent).
    Evidence: every slice of the series read; the first's Patient and Study modules are copied."""
    headers = [None if d is None else read_series_headers(d) for d in series_dirs]
    groups = [measurement_group(t, report["targets"][name], headers[labels.TARGET_SERIES[t]])
              for t, name in enumerate(labels.TARGETS)]
    provenance = report.get("provenance") or {}
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=pydicom.uid.generate_uid(entropy_srcs=[str(provenance.get("package")), str(provenance.get("model"))]),
        name="lumbar_jax", model_name=str(provenance.get("model")))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, device)),
        procedure_reported=codes.LN.MRIUnspecifiedBodyRegion,
        imaging_measurements=groups)
    notes = hd.sr.ContainerContentItem(_QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    notes.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
        codes.DCM.Comment, f"{report['notice']} Provenance: {json.dumps(provenance, sort_keys=True)}",
        "CONTAINS")])
    content[0].ContentSequence.append(notes)
    slices = [s for h in headers if h is not None for s in h.slices]
    return hd.sr.Comprehensive3DSR(
        evidence=evidence(slices), content=content[0], series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="lumbar_jax", is_verified=False,
        series_description=SERIES_DESCRIPTION, coding_schemes=[_SCHEME_ITEM])


def write(report: dict, series_dirs, path: str) -> None:
    """Build the study's SR (`build`) and write it to `path` (a DICOM file with its file meta)."""
    build(report, series_dirs).save_as(path, enforce_file_format=True)
