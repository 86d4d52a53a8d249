"""The DICOM files of a planned study: its rendered slices encoded as the real data's files (and quirks) are.

Each slice becomes one `{instance_number}.dcm` (explicit VR little endian, or RLE / JPEG 2000 lossless with
those quirks) whose header states the slice's geometry exactly as planned (`acquisition.Series`); the stored
pixels are the rendered image content (`plan.render_series`) put through the file's own rescale and
photometric interpretation. Broken files (truncated, junk) are written as the plan says.

Patient identifiers are fake and distinctive (`PHI_SENTINELS`): any of them in a pipeline output is a leak.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import uuid
from typing import TYPE_CHECKING

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, MRImageStorage, RLELossless

from lumbar_jax.data.synthetic.plan import render_series

if TYPE_CHECKING:
    from lumbar_jax.data.synthetic.acquisition import Series
    from lumbar_jax.data.synthetic.plan import Study

PHI_MARKER = "PHI-SENTINEL"  # contained in every text identifier below
PHI_PATIENT_NAME = f"SYNTHETIC^{PHI_MARKER}"
PHI_INSTITUTION = f"{PHI_MARKER} HOSPITAL"
PHI_BIRTH_DATE = "18870613"  # a DA must be 8 digits: an impossible-looking date instead of the marker
PHI_SENTINELS = (PHI_MARKER, PHI_PATIENT_NAME, PHI_INSTITUTION, PHI_BIRTH_DATE)


def phi_patient_id(index: int) -> str:
    """PatientID of study `index` (not its study_id: the id is legitimate data, the PatientID is not)."""
    return f"{PHI_MARKER}-{index:06d}"


# pydicom's writer costs more per file than rendering the file does: uncompressed files are encoded here
# instead (explicit VR little endian, ~20 lines), compressed ones by pydicom. Tests read every file back with
# pydicom. The implementation UID is derived from the generator's name, fixed so that the files never change.
_IMPLEMENTATION_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "lumbar_jax.data.synthetic").int)
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_SEQUENCE_TIMING = ((500, 10), (3000, 100), (4000, 95))  # (RepetitionTime, EchoTime) ms per series kind


@functools.lru_cache(maxsize=8192)
def _element(keyword: str, value) -> tuple[int, bytes]:
    """(tag, explicit-VR little-endian bytes) of one element; value: int (US/UL), bytes (OB), str or a tuple
    of str (multi-valued). Tags and VRs from pydicom's data dictionary; cached, as most elements of a series
    repeat in every file."""
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag)
    if vr in ("US", "UL"):
        raw = struct.pack("<H" if vr == "US" else "<I", value)
    elif vr == "OB":
        raw = value
    else:
        raw = ("\\".join(value) if isinstance(value, tuple) else value).encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr in ("UI", "OB") else b" "
    head = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode())
    head += struct.pack("<2xI", len(raw)) if vr in _LONG_VRS else struct.pack("<H", len(raw))
    return tag, head + raw


def _encode(items: list, pixels: bytes = b"") -> bytes:
    """Element list [(keyword, value)] -> their bytes sorted by tag, then PixelData (the last tag), as OW."""
    out = b"".join(b for _, b in sorted(_element(k, v) for k, v in items))
    return out + (struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", len(pixels)) + pixels if pixels else b"")


def _file_meta(sop_instance_uid: str) -> list:
    """[(keyword, value)] of the file meta information group (0002), without its group length (pydicom's
    compress() replaces the transfer syntax of compressed files)."""
    return [("FileMetaInformationVersion", b"\x00\x01"), ("MediaStorageSOPClassUID", MRImageStorage),
            ("MediaStorageSOPInstanceUID", sop_instance_uid), ("TransferSyntaxUID", ExplicitVRLittleEndian),
            ("ImplementationClassUID", _IMPLEMENTATION_UID), ("ImplementationVersionName", "LUMBARJAX_SYN1")]


def _fmt(values, digits: int) -> tuple:
    """DS strings of floats (at most 16 characters for the ranges used here)."""
    return tuple(f"{v:.{digits}f}" for v in values)


def _header(study: Study, s: Series, k: int, rescaled: bool) -> list:
    """[(keyword, value)] of the dataset of slice k of series s, without PixelData."""
    rows, cols = (int(x) for x in s.shape[k])
    tr, te = _SEQUENCE_TIMING[s.kind]
    items = [
        ("ImageType", ("ORIGINAL", "PRIMARY", "M", "ND")), ("SOPClassUID", MRImageStorage),
        ("SOPInstanceUID", f"{study.study_id}.{s.series_id}.{k + 1}"), ("Modality", "MR"),
        ("Manufacturer", "LUMBAR_JAX SYNTHETIC"), ("InstitutionName", PHI_INSTITUTION),
        ("SeriesDescription", s.description), ("PatientName", PHI_PATIENT_NAME),
        ("PatientID", phi_patient_id(study.index)), ("PatientBirthDate", PHI_BIRTH_DATE),
        ("SliceThickness", f"{s.thickness:.3f}"), ("RepetitionTime", str(tr)), ("EchoTime", str(te)),
        ("MagneticFieldStrength", "1.5"), ("SpacingBetweenSlices", f"{s.gap:.3f}"),
        ("StudyInstanceUID", str(study.study_id)), ("SeriesInstanceUID", str(s.series_id)),
        ("SeriesNumber", str(s.number)), ("InstanceNumber", str(k + 1)),
        ("ImagePositionPatient", _fmt(s.ipp[k], 4)), ("ImageOrientationPatient", _fmt(s.iop[k], 6)),
        ("FrameOfReferenceUID", f"{study.study_id}.0"), ("SamplesPerPixel", 1),
        ("PhotometricInterpretation", "MONOCHROME1" if s.monochrome1 else "MONOCHROME2"),
        ("Rows", rows), ("Columns", cols), ("PixelSpacing", _fmt(s.spacing[k], 6)),
        ("BitsAllocated", 16), ("BitsStored", 12), ("HighBit", 11), ("PixelRepresentation", 0),
    ]
    if rescaled:
        items += [("RescaleIntercept", "-50"), ("RescaleSlope", "2")]
    return items


def _dicom_bytes(study: Study, s: Series, k: int, values: np.ndarray) -> bytes:
    """The .dcm file of slice k: stored pixels derived from the image content `values` [rows, cols] uint16
    (rescale quirk: stored = (values + 50) / 2; MONOCHROME1: stored = 4095 - values), then encoded."""
    rescaled = bool(s.rescaled[k])
    stored = values
    if rescaled:
        stored = ((values.astype(np.int32) + 51) // 2).astype(np.uint16)  # round half up; decodes within 1
    if s.monochrome1:
        stored = (4095 - stored).astype(np.uint16)
    items = _header(study, s, k, rescaled)
    meta_items = _file_meta(dict(items)["SOPInstanceUID"])
    if s.codec:
        return _compressed_bytes(items, meta_items, stored, s.codec)
    meta = _encode(meta_items)
    return (b"\0" * 128 + b"DICM" + _encode([("FileMetaInformationGroupLength", len(meta))]) + meta
            + _encode(items, stored.astype("<u2").tobytes()))


def _compressed_bytes(items: list, meta_items: list, stored: np.ndarray, codec: str) -> bytes:
    """The .dcm file of a compressed slice, written by pydicom: header `items` and file meta `meta_items`
    [(keyword, value)], stored pixels uint16 [rows, cols], codec "rle" or "jpeg2000" (lossless both)."""
    ds = Dataset()
    for keyword, value in items:
        setattr(ds, keyword, list(value) if isinstance(value, tuple) else value)
    ds.file_meta = FileMetaDataset()
    for keyword, value in meta_items:
        setattr(ds.file_meta, keyword, value)
    if codec == "rle":  # pydicom's own encoder: always present, so the bytes do not depend on plugins
        ds.compress(RLELossless, stored, encoding_plugin="pydicom", generate_instance_uid=False)
    else:
        ds.compress(JPEG2000Lossless, stored, generate_instance_uid=False)
        if not np.array_equal(ds.pixel_array, stored):
            raise RuntimeError("JPEG 2000 lossless round trip changed the pixels: broken openjpeg encoder")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_study(study: Study, root: str) -> dict:
    """Render and write one study's images under root/{split}_images/{study_id}/{series_id}/{instance}.dcm.
    Returns {"files", "bytes", "unreadable": [paths relative to root]}."""
    files = size = 0
    unreadable = []
    for s in study.series:
        rel_dir = os.path.join(f"{study.split}_images", str(study.study_id), str(s.series_id))
        os.makedirs(os.path.join(root, rel_dir), exist_ok=True)
        outputs = [(f"{k + 1}.dcm", _dicom_bytes(study, s, k, v)) for k, v in enumerate(render_series(study, s))]
        if s.truncated_instance:
            name, data = outputs[s.truncated_instance - 1]
            pixels = int(s.shape[s.truncated_instance - 1].prod()) * 2
            outputs[s.truncated_instance - 1] = (name, data[: len(data) - pixels // 2])
            unreadable.append(os.path.join(rel_dir, name))
        if s.junk:
            outputs.append((s.junk_name, b"scanner export log -- not a DICOM file\n" * 20))
            unreadable.append(os.path.join(rel_dir, s.junk_name))
        for name, data in outputs:
            with open(os.path.join(root, rel_dir, name), "wb") as f:
                f.write(data)
            files, size = files + 1, size + len(data)
    return {"files": files, "bytes": size, "unreadable": unreadable}
