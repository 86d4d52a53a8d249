"""Tests of lumbar_jax.data.dicom.read_series.

Most tests write tiny phantom series whose pixel values are a function of the patient-space (LPS) position of
each pixel, on a grid of world points: value = 1 + 256*ix + 16*iy + iz with (ix, iy, iz) the grid indices
along x, y, z. Any acquisition of the grid (flipped, transposed, reversed instance numbers, ...) must give
the same canonical volume, which the tests build straight from the table of docs/conventions.md section 3. The
second half runs pydicom's bundled test files (only those on disk; nothing is downloaded).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import random
import warnings

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from scipy import ndimage

from lumbar_jax.data import dicom, dicom_header, dicom_slice
from lumbar_jax.data.dicom import DicomReadError, DicomSkipWarning, read_series

X0, Y0, Z0 = -40.0, 15.0, 100.0  # grid start (mm): away from 0 so that a missing origin would show


@dataclasses.dataclass(frozen=True)
class Grid:
    """World points start + index * step, index < count, per axis (x, y, z); slices lie across slice_axis."""

    step: tuple[float, float, float]
    count: tuple[int, int, int]
    slice_axis: int

    def value(self, world: np.ndarray) -> np.ndarray:
        """Phantom value [...] of world points [..., 3]: encodes the grid indices (injective for counts < 16)."""
        ix, iy, iz = np.moveaxis((world - np.array([X0, Y0, Z0])) / np.array(self.step), -1, 0)
        return 1.0 + 256.0 * ix + 16.0 * iy + iz


SAGITTAL = Grid(step=(3.0, 1.0, 2.0), count=(6, 10, 12), slice_axis=0)  # 6 slices of 12 rows (z) x 10 cols (y)
AXIAL = Grid(step=(1.0, 2.0, 3.0), count=(10, 12, 6), slice_axis=2)  # 6 slices of 12 rows (y) x 10 cols (x)
SAGITTAL_DIRS = ((0, 1, 0), (0, 0, -1))  # (row_dir, col_dir) as scanners write a sagittal series
AXIAL_DIRS = ((1, 0, 0), (0, 1, 0))


def expected_volume(grid: Grid, plane: str) -> np.ndarray:
    """The canonical volume of the phantom, straight from the table of docs/conventions.md section 3."""
    nx, ny, nz = grid.count
    if plane == "sagittal":  # depth: right -> left (+x); rows: superior -> inferior (-z); cols: ant. -> post. (+y)
        d, r, c = np.meshgrid(np.arange(nx), np.arange(nz), np.arange(ny), indexing="ij")
        ix, iy, iz = d, c, nz - 1 - r
    else:  # axial: depth: superior -> inferior (-z); rows: anterior -> posterior (+y); cols: right -> left (+x)
        d, r, c = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
        ix, iy, iz = c, r, nz - 1 - d
    return (1 + 256 * ix + 16 * iy + iz).astype(np.float32)


@dataclasses.dataclass
class SliceSpec:
    origin: np.ndarray  # ImagePositionPatient
    row_dir: np.ndarray
    col_dir: np.ndarray
    rows: int
    cols: int
    spacing: tuple[float, float]  # PixelSpacing (between rows, between cols)

    def world(self) -> np.ndarray:
        """[rows, cols, 3] patient coordinates of every pixel."""
        i, j = np.mgrid[0 : self.rows, 0 : self.cols]
        return (
            self.origin
            + i[..., None] * self.spacing[0] * self.col_dir
            + j[..., None] * self.spacing[1] * self.row_dir
        )


def grid_slices(grid: Grid, row_dir, col_dir) -> list[SliceSpec]:
    """The slices covering `grid` for an acquisition with the given direction cosines (each +- one world axis),
    in increasing order along the grid's slice axis."""
    row_dir, col_dir = np.array(row_dir, float), np.array(col_dir, float)
    row_axis, col_axis = int(np.argmax(np.abs(row_dir))), int(np.argmax(np.abs(col_dir)))
    specs = []
    for k in range(grid.count[grid.slice_axis]):
        origin = np.array([X0, Y0, Z0])
        origin[grid.slice_axis] += k * grid.step[grid.slice_axis]
        for axis, direction in ((row_axis, row_dir), (col_axis, col_dir)):
            if direction[axis] < 0:  # the first pixel sits at the far end of that axis
                origin[axis] += (grid.count[axis] - 1) * grid.step[axis]
        specs.append(
            SliceSpec(
                origin, row_dir, col_dir, grid.count[col_axis], grid.count[row_axis],
                (grid.step[col_axis], grid.step[row_axis]),
            )
        )
    return specs


def write_slice(
    path,
    spec: SliceSpec,
    stored: np.ndarray,
    instance: int,
    *,
    transfer_syntax=uid.ExplicitVRLittleEndian,
    bits_stored: int = 16,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    rescale: tuple[float, float] | None = None,
    compress=None,
):
    """Write one MR slice with stored pixel values `stored` [rows, cols] (integers)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = uid.MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds.SOPClassUID = uid.MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-SECRET-42"
    ds.PatientBirthDate, ds.StudyDate = "19700101", "20240101"
    ds.Modality = "MR"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in spec.origin]
    ds.ImageOrientationPatient = [float(v) for v in np.concatenate([spec.row_dir, spec.col_dir])]
    ds.PixelSpacing = [float(s) for s in spec.spacing]
    ds.SliceThickness = 3.0
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    dtype = np.dtype(np.int16 if signed else np.uint16)
    if transfer_syntax == uid.ExplicitVRBigEndian:
        dtype = dtype.newbyteorder(">")
    ds.PixelData = np.asarray(stored).astype(dtype).tobytes()
    if compress is not None:
        ds.compress(compress, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def write_series(directory, specs, value_fn, *, instances=None, names=None, **options) -> list[np.ndarray]:
    """Write a phantom series (pixel value = value_fn(world), rounded); returns the stored images."""
    os.makedirs(directory, exist_ok=True)
    instances = instances or list(range(1, len(specs) + 1))
    names = names or [f"{n}.dcm" for n in instances]
    stored = []
    for spec, instance, name in zip(specs, instances, names):
        values = np.rint(value_fn(spec.world()))
        write_slice(os.path.join(directory, name), spec, values, instance, **options)
        stored.append(values)
    return stored


def assert_pixels_land(volume, geometry, stored, instances):
    """canonical_index of every stored pixel is an integer voxel holding that pixel's value."""
    for image, instance in zip(stored, instances):
        for (i, j), value in np.ndenumerate(image):
            index = geometry.canonical_index(instance, i, j)
            voxel = np.rint(index).astype(int)
            np.testing.assert_allclose(index, voxel, atol=1e-9)
            assert volume[tuple(voxel)] == value, (instance, i, j)


# ----------------------------------------------------------------------------------------------- phantoms


@pytest.mark.parametrize(
    "grid, plane, row_dir, col_dir",
    [
        (SAGITTAL, "sagittal", *SAGITTAL_DIRS),
        (SAGITTAL, "sagittal", (0, -1, 0), (0, 0, 1)),  # flipped in-plane
        (SAGITTAL, "sagittal", (0, 0, -1), (0, 1, 0)),  # transposed
        (SAGITTAL, "sagittal", (0, 0, 1), (0, -1, 0)),  # transposed and flipped
        (AXIAL, "axial", *AXIAL_DIRS),
        (AXIAL, "axial", (-1, 0, 0), (0, -1, 0)),  # flipped
        (AXIAL, "axial", (0, 1, 0), (1, 0, 0)),  # transposed (normal points down)
    ],
    ids=["sag", "sag-flipped", "sag-transposed", "sag-transposed-flipped", "ax", "ax-flipped", "ax-transposed"],
)
def test_any_acquisition_gives_the_canonical_volume(tmp_path, grid, plane, row_dir, col_dir):
    specs = grid_slices(grid, row_dir, col_dir)
    stored = write_series(tmp_path, specs, grid.value)
    volume, geometry = read_series(tmp_path)
    assert volume.dtype == np.float32 and volume.flags.c_contiguous
    np.testing.assert_array_equal(volume, expected_volume(grid, plane))
    assert geometry.plane == plane and geometry.shape == volume.shape
    assert geometry.n_orientation_groups == 1 and geometry.skipped_files == () and geometry.resampled_slices == 0
    nx, ny, nz = grid.step
    assert geometry.spacing == pytest.approx((nx, nz, ny) if plane == "sagittal" else (nz, ny, nx))
    assert_pixels_land(volume, geometry, stored, range(1, len(specs) + 1))
    assert np.all(np.diff(geometry.slice_positions) > 0)


@pytest.mark.parametrize("grid, plane", [(SAGITTAL, "sagittal"), (AXIAL, "axial")])
def test_canonical_axes_point_as_conventions_say(tmp_path, grid, plane):
    """Decode the world indices from the voxel values and check which way each canonical axis runs."""
    write_series(tmp_path, grid_slices(grid, *(SAGITTAL_DIRS if plane == "sagittal" else AXIAL_DIRS)), grid.value)
    volume, geometry = read_series(tmp_path)
    code = volume.astype(int) - 1
    ix, iy, iz = code // 256, code % 256 // 16, code % 16
    steps = {"sagittal": ((ix, 0, +1), (iz, 1, -1), (iy, 2, +1)), "axial": ((iz, 0, -1), (iy, 1, +1), (ix, 2, +1))}
    for world_index, axis, sign in steps[plane]:
        assert np.all(np.diff(world_index, axis=axis) == sign)  # e.g. sagittal depth: world x increases
    direction = {"sagittal": [1, 0, 0], "axial": [0, 0, -1]}[plane]
    np.testing.assert_allclose(geometry.depth_direction, direction, atol=1e-9)
    # slice positions are along the canonical depth direction: sagittal = x of the slices
    if plane == "sagittal":
        np.testing.assert_allclose(geometry.slice_positions, X0 + 3.0 * np.arange(6))
    assert (geometry.permutation, geometry.flips) == ((0, 1, 2), (False, False, False))


def test_permutation_and_flips_of_a_transposed_flipped_acquisition(tmp_path):
    write_series(tmp_path, grid_slices(SAGITTAL, (0, 0, 1), (0, -1, 0)), SAGITTAL.value)
    _, geometry = read_series(tmp_path)
    # stored rows run along -y (canonical cols, reversed), stored cols along +z (canonical rows, reversed)
    assert (geometry.permutation, geometry.flips) == ((0, 2, 1), (False, True, True))


def test_sorted_by_position_not_instance_number_or_file_name(tmp_path):
    specs = grid_slices(SAGITTAL, *SAGITTAL_DIRS)
    instances = list(range(len(specs), 0, -1))  # instance numbers run against the slice positions
    names = [f"{n}.dcm" for n in random.Random(0).sample(range(100, 200), len(specs))]
    stored = write_series(tmp_path, specs, SAGITTAL.value, instances=instances, names=names)
    volume, geometry = read_series(tmp_path)
    np.testing.assert_array_equal(volume, expected_volume(SAGITTAL, "sagittal"))
    np.testing.assert_array_equal(geometry.instance_numbers, instances)  # canonical depth = +x = slice order
    assert_pixels_land(volume, geometry, stored, instances)
    files = [os.path.join(tmp_path, n) for n in reversed(names)]
    np.testing.assert_array_equal(read_series(files)[0], volume)  # a list of files in any order


def test_explicit_plane_and_mismatched_plane(tmp_path):
    write_series(tmp_path, grid_slices(AXIAL, *AXIAL_DIRS), AXIAL.value)
    volume, geometry = read_series(tmp_path, plane="axial")
    np.testing.assert_array_equal(volume, expected_volume(AXIAL, "axial"))
    with pytest.raises(DicomReadError, match=f"{tmp_path}.*sagittal"):
        read_series(tmp_path, plane="sagittal")
    with pytest.raises(ValueError, match="plane"):
        read_series(tmp_path, plane="coronal")


def test_coronal_and_too_oblique_series_are_refused(tmp_path):
    coronal = Grid(step=(1.0, 3.0, 1.0), count=(10, 4, 12), slice_axis=1)
    write_series(tmp_path / "cor", grid_slices(coronal, (1, 0, 0), (0, 0, -1)), coronal.value)
    with pytest.raises(DicomReadError, match=f"{tmp_path / 'cor'}.*coronal"):
        read_series(tmp_path / "cor")
    angle = np.deg2rad(50.0)  # axial tilted 50 degrees about x: neither axial nor coronal
    col_dir = np.array([0, np.cos(angle), np.sin(angle)])
    origins = [np.array([X0, Y0, Z0 + 3.0 * k]) for k in range(3)]
    specs = [SliceSpec(origin, np.array([1.0, 0, 0]), col_dir, 12, 10, (1.0, 1.0)) for origin in origins]
    write_series(tmp_path / "obl", specs, AXIAL.value)
    with pytest.raises(DicomReadError, match=f"{tmp_path / 'obl'}.*oblique"):
        read_series(tmp_path / "obl")


def tilted_axial_specs(angle_deg: float, z_start: float, count: int) -> list[SliceSpec]:
    """`count` axial slices 3 mm apart from z_start, tilted by angle_deg about the x axis."""
    a = np.deg2rad(angle_deg)
    col_dir = np.array([0.0, np.cos(a), np.sin(a)])
    normal = np.cross([1.0, 0.0, 0.0], col_dir)
    return [
        SliceSpec(np.array([X0, Y0, z_start]) + 3.0 * k * normal, np.array([1.0, 0, 0]), col_dir, 12, 10, (2.0, 1.0))
        for k in range(count)
    ]


def test_tilted_axial_substacks_form_one_group_sorted_along_the_mean_normal(tmp_path):
    upper = tilted_axial_specs(5.0, Z0 + 20.0, 4)  # written first, instance numbers 1..4
    lower = tilted_axial_specs(0.0, Z0, 4)
    stored = write_series(tmp_path, upper + lower, AXIAL.value)
    volume, geometry = read_series(tmp_path)
    assert geometry.plane == "axial" and volume.shape == (8, 12, 10)
    assert geometry.n_orientation_groups == 1 and geometry.skipped_files == ()
    assert geometry.interpolated_slices == ()  # the 11 mm seam between tilted stacks is no missing slice
    # canonical depth runs superior -> inferior: the upper (tilted) stack first, each stack top-down
    np.testing.assert_array_equal(geometry.instance_numbers, [4, 3, 2, 1, 8, 7, 6, 5])
    assert np.all(np.diff(geometry.slice_positions) > 0)
    assert geometry.depth_direction[2] < -0.99
    assert_pixels_land(volume, geometry, stored, range(1, 9))
    # the world path agrees with the per-slice path on an untilted slice
    k = 6  # instance 6: canonical slice 6
    point = geometry.pixel_to_world[k] @ np.array([3.0, 4.0, 1.0])
    np.testing.assert_allclose(geometry.world_to_canonical(point), geometry.canonical_index(6, 3.0, 4.0), atol=1e-9)


def test_a_different_orientation_group_is_dropped_and_reported(tmp_path):
    """3 coronal localisers inside an axial series: kept out of the volume, but their points can be located."""
    axial = grid_slices(AXIAL, *AXIAL_DIRS)  # z = Z0 .. Z0 + 15, y = Y0 .. Y0 + 22, x = X0 .. X0 + 9
    row_dir, col_dir = np.array([1.0, 0, 0]), np.array([0, 0, -1.0])  # coronal
    localisers = [
        SliceSpec(np.array([X0, Y0 + 2.0 * k + 1.0, Z0 + 15.0]), row_dir, col_dir, 16, 10, (1.0, 1.0)) for k in range(3)
    ]
    names = ["loc1.dcm", "loc2.dcm", "loc3.dcm"] + [f"ax{k}.dcm" for k in range(6)]
    write_series(tmp_path, localisers + axial, AXIAL.value, names=names)
    volume, geometry = read_series(tmp_path)
    np.testing.assert_array_equal(volume, expected_volume(AXIAL, "axial"))
    assert geometry.n_orientation_groups == 2
    assert set(geometry.skipped_files) == {"loc1.dcm", "loc2.dcm", "loc3.dcm"}
    # localiser 2 (instance 2) lies at y = Y0 + 3: canonical row 1.5; its row r is at z = Z0 + 15 - r:
    # canonical depth (Z0 + 15 - z) / 3 = r / 3 (inside the stack: interpolated; r > 15 would extrapolate)
    for row in (0.0, 4.0, 15.0, 18.0):
        np.testing.assert_allclose(geometry.canonical_index(2, row, 7.0), [row / 3.0, 1.5, 7.0], atol=1e-9)
    with pytest.raises(KeyError, match="99"):
        geometry.canonical_index(99, 0, 0)


def test_duplicate_positions_are_kept_in_file_order(tmp_path):
    specs = grid_slices(AXIAL, *AXIAL_DIRS)
    specs = specs[:3] + [specs[2]] + specs[3:]  # slice 2 twice (instance numbers 3 and 4)
    write_series(tmp_path, specs, AXIAL.value, names=[f"{chr(97 + k)}.dcm" for k in range(7)])
    volume, geometry = read_series(tmp_path)
    assert volume.shape == (7, 12, 10)
    np.testing.assert_array_equal(geometry.instance_numbers, [7, 6, 5, 3, 4, 2, 1])  # depth = -z; stable ties
    np.testing.assert_array_equal(volume[3], volume[4])


def test_mixed_shapes_are_resampled_to_the_most_common_one(tmp_path):
    """Slices 1 and 4 with twice the rows/cols over the same field of view (corner pixel centres)."""
    specs = grid_slices(SAGITTAL, *SAGITTAL_DIRS)  # 12 x 10, spacing (2, 1)
    for k in (1, 4):
        s = specs[k]
        specs[k] = SliceSpec(s.origin, s.row_dir, s.col_dir, 24, 20, (s.spacing[0] * 11 / 23, s.spacing[1] * 9 / 19))
    stored = write_series(tmp_path, specs, SAGITTAL.value)
    volume, geometry = read_series(tmp_path)
    assert volume.shape == (6, 12, 10) and geometry.resampled_slices == 2
    np.testing.assert_allclose(volume, expected_volume(SAGITTAL, "sagittal"), atol=0.5)  # fine slices stored rounded
    assert geometry.spacing == pytest.approx((3.0, 2.0, 1.0))
    np.testing.assert_allclose(geometry.canonical_index(2, 23, 19), [1, 11, 9])  # last pixel -> last voxel
    for i, j in [(0, 0), (5, 7), (13, 2), (23, 19)]:
        index = geometry.canonical_index(2, i, j)
        np.testing.assert_allclose(index, [1, i * 11 / 23, j * 9 / 19])
        value = ndimage.map_coordinates(volume, index[:, None], order=1)[0]
        assert abs(value - stored[1][i, j]) <= 1.0


@pytest.mark.filterwarnings("ignore:The number of bytes of compressed pixel data matches")  # tiny RLE images
@pytest.mark.parametrize(
    "options, transform, expected_offset",
    [
        (dict(photometric="MONOCHROME1", bits_stored=12), lambda f: 4095 - f, 0),  # inverted: bright = high signal
        (dict(bits_stored=12), lambda f: f, 0),  # 12 bits stored in 16
        (dict(bits_stored=12, signed=True), lambda f: f - 2048, -2048),  # signed 12 bit, negative values
        (dict(signed=True), lambda f: f - 3000, -3000),  # signed 16 bit
        (dict(transfer_syntax=uid.ExplicitVRBigEndian), lambda f: f, 0),
        (dict(transfer_syntax=uid.ExplicitVRBigEndian, signed=True), lambda f: f - 3000, -3000),
        (dict(transfer_syntax=uid.ImplicitVRLittleEndian), lambda f: f, 0),
        (dict(compress=uid.RLELossless), lambda f: f, 0),
    ],
    ids=["monochrome1", "12bit", "12bit-signed", "16bit-signed", "big-endian", "big-endian-signed", "implicit", "rle"],
)
def test_pixel_encodings(tmp_path, options, transform, expected_offset):
    write_series(tmp_path, grid_slices(AXIAL, *AXIAL_DIRS), lambda w: transform(AXIAL.value(w)), **options)
    volume, _ = read_series(tmp_path)
    np.testing.assert_array_equal(volume, expected_volume(AXIAL, "axial") + expected_offset)


def test_rescale_applied_where_present(tmp_path):
    """Files 2, 4, 6 carry RescaleSlope 0.5 / RescaleIntercept -10; the others none (= 1 / 0)."""
    specs = grid_slices(AXIAL, *AXIAL_DIRS)
    for k, spec in enumerate(specs):
        if k % 2:
            write_slice(tmp_path / f"{k}.dcm", spec, 2 * (AXIAL.value(spec.world()) + 10), k + 1, rescale=(0.5, -10.0))
        else:
            write_slice(tmp_path / f"{k}.dcm", spec, AXIAL.value(spec.world()), k + 1)
    np.testing.assert_array_equal(read_series(tmp_path)[0], expected_volume(AXIAL, "axial"))


def test_jpeg2000_lossless_twin_gives_identical_pixels(tmp_path):
    """OpenJPEG cannot encode the 12 x 10 phantom: a 32 x 40 one (the value code is then not injective)."""
    grid = Grid(step=(1.0, 1.0, 3.0), count=(40, 32, 3), slice_axis=2)
    specs = grid_slices(grid, *AXIAL_DIRS)
    write_series(tmp_path / "raw", specs, grid.value)
    write_series(tmp_path / "j2k", specs, grid.value, compress=uid.JPEG2000Lossless)
    raw, j2k = read_series(tmp_path / "raw")[0], read_series(tmp_path / "j2k")[0]
    assert pydicom.dcmread(tmp_path / "j2k" / "1.dcm").file_meta.TransferSyntaxUID == uid.JPEG2000Lossless
    np.testing.assert_array_equal(raw, j2k)


def test_bad_files_are_skipped_with_a_warning_naming_them(tmp_path):
    specs = grid_slices(SAGITTAL, *SAGITTAL_DIRS)
    write_series(tmp_path, specs, SAGITTAL.value)
    truncated = tmp_path / "3.dcm"
    size = len(truncated.read_bytes()) - 100
    truncated.write_bytes(truncated.read_bytes()[:size])  # pixel data cut short
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all")
    with pytest.warns(DicomSkipWarning) as record:
        volume, geometry = read_series(tmp_path)
    found = {(w.message.problem.kind, w.message.problem.where): str(w.message) for w in record
             if issubclass(w.category, DicomSkipWarning)}
    assert f"truncated (file ends at byte {size} inside PixelData" in found["file_skipped", str(truncated)]
    assert "not a DICOM file" in found["file_skipped", str(tmp_path / "junk.dcm")]
    assert "6.0 mm between instances 2 and 4" in found["series_gap", str(tmp_path)]
    assert set(geometry.skipped_files) == {"3.dcm", "junk.dcm"}
    # the missing slice is interpolated between its neighbours: exact for this phantom, linear along x
    np.testing.assert_array_equal(volume, expected_volume(SAGITTAL, "sagittal"))
    assert geometry.interpolated_slices == (2,) and geometry.instance_numbers[2] == dicom.INTERPOLATED
    np.testing.assert_allclose(geometry.slice_positions, X0 + 3.0 * np.arange(6))
    # the undecodable slice is not in the volume but its header was read: it lands on the interpolated slice
    np.testing.assert_allclose(geometry.canonical_index(3, 0, 0), [2.0, 0.0, 0.0], atol=1e-9)


def test_a_series_without_a_usable_image_raises_naming_it(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"\x00" * 300)
    (tmp_path / "b.dcm").write_bytes(b"garbage")
    with pytest.raises(DicomReadError, match=f"{tmp_path}.*a.dcm.*b.dcm"):
        read_series(tmp_path)
    with pytest.raises(DicomReadError, match=f"{tmp_path / 'empty'}"):
        os.makedirs(tmp_path / "empty")
        read_series(tmp_path / "empty")
    with pytest.raises(DicomReadError, match="missing"):
        read_series(tmp_path / "missing")


def test_a_file_without_slice_geometry_raises_naming_it(tmp_path):
    spec = grid_slices(AXIAL, *AXIAL_DIRS)[0]
    write_slice(tmp_path / "cr.dcm", spec, AXIAL.value(spec.world()), 1)
    ds = pydicom.dcmread(tmp_path / "cr.dcm")
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.save_as(tmp_path / "cr.dcm")
    with pytest.raises(DicomReadError, match="cr.dcm.*no ImageOrientationPatient/ImagePositionPatient"):
        read_series([tmp_path / "cr.dcm"])


def write_multiframe(path, specs, values, *, per_frame_geometry=True):
    """An enhanced MR file, one frame per spec, frames in the given order."""
    write_slice(path, specs[0], values[0], 1)
    ds = pydicom.dcmread(path)
    del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing
    ds.NumberOfFrames = len(specs)
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [float(v) for v in np.concatenate([specs[0].row_dir, specs[0].col_dir])]
    measures.PixelSpacing = [float(s) for s in specs[0].spacing]
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orientation], [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    if per_frame_geometry:
        frames = []
        for spec in specs:
            frame, position = Dataset(), Dataset()
            position.ImagePositionPatient = [float(v) for v in spec.origin]
            frame.PlanePositionSequence = [position]
            frames.append(frame)
        ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack(values).astype(np.uint16).tobytes()
    ds.save_as(path)


def test_multiframe_with_per_frame_geometry_is_split_into_slices(tmp_path):
    specs = grid_slices(SAGITTAL, *SAGITTAL_DIRS)
    order = [3, 0, 5, 1, 4, 2]
    write_multiframe(tmp_path / "mf.dcm", [specs[k] for k in order], [SAGITTAL.value(specs[k].world()) for k in order])
    volume, geometry = read_series(tmp_path)
    np.testing.assert_array_equal(volume, expected_volume(SAGITTAL, "sagittal"))
    with pytest.raises(KeyError, match="shared by 6 slices"):
        geometry.canonical_index(1, 0, 0)  # every frame carries the file's instance number
    write_multiframe(tmp_path / "mf.dcm", specs, [SAGITTAL.value(s.world()) for s in specs], per_frame_geometry=False)
    with pytest.raises(DicomReadError, match="mf.dcm.*multi-frame"):
        read_series(tmp_path)


def test_geometry_normalized_and_no_patient_data(tmp_path):
    specs = grid_slices(SAGITTAL, *SAGITTAL_DIRS)
    write_series(tmp_path, specs, SAGITTAL.value)
    _, geometry = read_series(tmp_path)
    # instance 1 is at the smallest x (canonical depth 0); stored row 0 = top (-z rows), col 0 = anterior
    np.testing.assert_allclose(geometry.normalized(1, 0, 0), [0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(geometry.normalized(6, 11, 9), [1, 1, 1], atol=1e-12)
    np.testing.assert_allclose(geometry.normalized(3, 5.5, 4.5), [0.4, 0.5, 0.5], atol=1e-12)
    _, single = read_series([tmp_path / "3.dcm"])
    assert single.shape == (1, 12, 10) and single.spacing[0] == 3.0  # SliceThickness for a single slice
    np.testing.assert_allclose(single.normalized(3, 0, 0), [0.5, 0, 0])
    text = repr(geometry) + repr(dataclasses.asdict(geometry))
    for secret in ("Doe", "PID-SECRET", "1970", "2024", "1.2.826"):  # names, ids, dates, UID root
        assert secret not in text


def test_each_file_is_read_once(tmp_path, monkeypatch):
    write_series(tmp_path, grid_slices(AXIAL, *AXIAL_DIRS), AXIAL.value)
    calls = []
    original = pydicom.dcmread
    monkeypatch.setattr(dicom.pydicom, "dcmread", lambda path, *a, **k: calls.append(path) or original(path, *a, **k))
    read_series(tmp_path)
    assert sorted(calls) == sorted(str(p) for p in tmp_path.iterdir())


# ------------------------------------------------------------------------------- pydicom's bundled files

TEST_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")


def bundled(name: str) -> str:
    path = os.path.join(TEST_FILES, name)
    if not os.path.isfile(path):  # never downloaded: only what the installed pydicom ships
        pytest.skip(f"{name} not shipped with this pydicom")
    return path


def pixels_of(name: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_series([bundled(name)])[0]


@pytest.mark.parametrize(
    "twin",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_bundled_twins_give_identical_pixels(twin):
    np.testing.assert_array_equal(pixels_of(twin), pixels_of("MR_small.dcm"))


def test_bundled_mr_small_matches_its_decoded_pixels():
    """MR_small is axial with row_dir +x, col_dir +y: the canonical slice is the stored image itself."""
    volume = pixels_of("MR_small.dcm")
    np.testing.assert_array_equal(volume[0], pydicom.dcmread(bundled("MR_small.dcm")).pixel_array)


def with_geometry(source: str, target) -> pydicom.Dataset:
    """Copy of a bundled file given axial slice geometry (compressed pixel data kept as is)."""
    ds = pydicom.dcmread(source)
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 0.0], [1.0, 0, 0, 0, 1.0, 0]
    ds.PixelSpacing, ds.InstanceNumber = [1.0, 1.0], 1
    ds.save_as(target)
    return ds


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG2000.dcm"])
def test_bundled_lossy_files_decode_through_the_plugins(tmp_path, name):
    ds = with_geometry(bundled(name), tmp_path / name)
    volume, _ = read_series([tmp_path / name])
    np.testing.assert_array_equal(volume[0], ds.pixel_array.astype(np.float32))


def test_bundled_monochrome1_is_inverted_after_rescale(tmp_path):
    ds = with_geometry(bundled("dicomdirtests/77654033/CR1/6154"), tmp_path / "cr.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1" and float(ds.RescaleSlope) != 1.0
    volume, _ = read_series([tmp_path / "cr.dcm"])
    rescaled = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.ptp(volume[0] + rescaled) < 1e-3  # volume = constant - rescaled value
    assert np.corrcoef(volume[0].ravel(), rescaled.ravel())[0, 1] < -0.999


def _bundled_images() -> list[str]:
    """Every bundled file whose Modality is MR, CT or CR and that has pixel data."""
    found = []
    for path in sorted(glob.glob(os.path.join(TEST_FILES, "**", "*"), recursive=True)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True)
        except Exception:  # directories, non-DICOM files
            continue
        if ds.get("Modality") in ("MR", "CT", "CR") and "PixelData" in ds:
            found.append(os.path.relpath(path, TEST_FILES))
    return found


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name", _bundled_images())
def test_every_bundled_image_reads_or_fails_cleanly(name):
    path = os.path.join(TEST_FILES, name)
    try:
        volume, geometry = read_series([path])
    except DicomReadError as error:
        message = str(error)
        assert os.path.basename(path) in message
        assert message.replace(path, "").strip(" :()"), message  # a reason besides the name
    else:
        assert volume.dtype == np.float32 and volume.ndim == 3 and np.all(np.isfinite(volume))
        assert geometry.shape == volume.shape


# ------------------------------------------------------------------------------------------ fast header path
SLICE_FIELDS = ("instance_number", "row_dir", "col_dir", "origin", "pixel_spacing", "rows", "cols", "slope",
                "intercept", "thickness", "frame")


def test_fast_header_path_gives_what_the_pydicom_path_gives(tmp_path, monkeypatch):
    """`_plain_header` (raw elements) and the pydicom path agree on every field of every file of a quirky
    synthetic set (rescale, MONOCHROME1, RLE, JPEG 2000, truncated and junk files), and the fast path is the
    one taken for the plain files; user-changed pydicom conversion settings send every file to pydicom."""
    from lumbar_jax.data.synthetic import DatasetSpec, write_synthetic_dataset

    write_synthetic_dataset(str(tmp_path), DatasetSpec(6, seed=0), progress=False)
    fast = fallback = 0
    for path in sorted(glob.glob(str(tmp_path / "train_images" / "*" / "*" / "*.dcm"))):
        try:
            dataset = pydicom.dcmread(path)
        except Exception:  # the junk file: the fast path never sees it
            continue
        try:
            plain = dicom_header._plain_header(path, dataset)
        except dicom_slice._Skip as skip:
            plain = str(skip)
        with monkeypatch.context() as m:  # a fresh dataset: pydicom converts the raw elements it reads
            m.setattr(dicom, "_plain_header", lambda *args: None)
            try:
                (reference,) = dicom._header_slices(path, pydicom.dcmread(path))
            except dicom_slice._Skip as skip:
                reference = str(skip)
        if plain is None:
            fallback += 1
            continue
        fast += 1
        if isinstance(plain, str) or isinstance(reference, str):
            assert plain == reference, path  # the same refusal
            continue
        for field in SLICE_FIELDS:
            np.testing.assert_array_equal(getattr(plain, field), getattr(reference, field), err_msg=f"{path} {field}")
        assert plain.encoding == reference.encoding
        pixels = plain.encoding
        assert (pixels.bits_allocated, pixels.bits_stored, pixels.pixel_representation) == (
            dataset.get("BitsAllocated"), dataset.get("BitsStored"), dataset.get("PixelRepresentation"))
        assert pixels.monochrome1 == (dataset.get("PhotometricInterpretation") == "MONOCHROME1")
        assert plain.pixel_data == dataset.PixelData and reference.pixel_data is None
    assert fast > 0.8 * (fast + fallback), (fast, fallback)

    monkeypatch.setattr(pydicom.config, "use_DS_decimal", True)
    assert dicom_header._plain_header(path, pydicom.dcmread(path)) is None
