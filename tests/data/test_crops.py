"""Crops of native volumes: centred on the point, physical size in mm at any spacing, slices along the series'
depth, zeros outside; left crops are the right crops of the mirrored patient; jitter in the volume's frame."""

import numpy as np
import pytest

from lumbar_jax import labels
from lumbar_jax.data import crops as crops_lib
from lumbar_jax.data.augment import flip_left_right
from lumbar_jax.data.dicom_geometry import CANONICAL_DIRECTIONS, RIGHT_TO_LEFT_AXIS
from tests.data.test_augment import make_record

# Native shapes with (size - 1) a power of 2 and dyadic spacings, so dyadic normalised points land on exactly
# representable voxel positions and mirrored points (1 - u) on exactly the mirrored ones.
NATIVE = {  # series -> (shape [D, H, W], spacing (slice gap, rows, cols) mm)
    "sagittal_t1": ((9, 65, 65), (4.0, 0.5, 0.75)),
    "sagittal_t2": ((9, 33, 65), (4.0, 1.0, 0.5)),
    "axial_t2": ((17, 65, 33), (3.0, 0.75, 0.5)),
}
CROP = crops_lib.CropSpec(slices=5, size_mm=12.0, pixels=16)
JITTER = np.array([[1.0, 2.0, 2.0], [1.5, 3.0, 1.0], [0.5, 1.0, 3.0]])  # std per group: (slices, mm, mm)


def native_affine(series: str, spacing, origin=(12.0, -30.0, 40.0)) -> np.ndarray:
    """[4, 4]: native voxel (depth, row, col, 1) -> patient mm, canonical axes of docs/conventions.md section 3."""
    affine = np.eye(4)
    affine[:3, :3] = CANONICAL_DIRECTIONS[series.split("_")[0]].T * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


def cut_crop(volume, affine, point, *, slices, size_mm, pixels, offset_mm=(0.0, 0.0), offset_slices=0):
    """One crop uint8 [slices, pixels, pixels] around normalised `point` [3]: `cut_crops` with offsets
    (offset_slices, *offset_mm)."""
    offsets = np.array([[offset_slices, *offset_mm]], dtype=np.float64)
    return crops_lib.cut_crops(volume, affine, np.asarray(point)[None], crops_lib.CropSpec(slices, size_mm, pixels),
                       offsets=offsets)[0]


def native_record(rng, present=(True, True, True), study_id=1, native=NATIVE):
    """A random `*_native` record: low-res record of test_augment plus native volumes and affines; every
    target annotated on its own series at a dyadic point (exact under mirroring), a few not."""
    record = make_record(rng, shape=(4, 8, 8), study_id=study_id, present=present)
    affines = np.zeros((3, 4, 4), np.float32)
    for s, (name, (shape, spacing)) in enumerate(native.items()):
        if present[s]:
            record[f"{name}_native"] = rng.integers(0, 256, shape, dtype=np.uint8)
            affines[s] = native_affine(name, spacing)
        else:
            record[f"{name}_native"] = np.zeros((1, 1, 1), np.uint8)
    record["native_affine"] = affines
    coords = np.empty((labels.NUM_TARGETS, 3), np.float32)
    for t, s in enumerate(labels.TARGET_SERIES):
        d, h, w = native[labels.SERIES_TYPES[s]][0]
        coords[t] = [rng.integers(0, d) / (d - 1), rng.integers(0, 2 * h) / (2 * (h - 1)),
                     rng.integers(0, 2 * w) / (2 * (w - 1))]
    record["coords"] = coords
    record["coords_series"] = labels.TARGET_SERIES.copy()
    record["coords_series"][[3, 12]] = -1, 2  # one target without a point, one annotated on another series
    record["coords"][3] = -1
    return record


def flip_native(record):
    """`flip_left_right` extended to the native volumes: sagittal depth and axial cols reversed."""
    flipped = flip_left_right(record)
    for name in labels.SERIES_TYPES:
        axis = 2 if name == "axial_t2" else 0
        flipped[f"{name}_native"] = np.ascontiguousarray(np.flip(record[f"{name}_native"], axis=axis))
    return flipped


def test_right_to_left_axes_follow_the_conventions():
    assert tuple(RIGHT_TO_LEFT_AXIS) == (0, 0, 2)  # sagittal: depth; axial: cols
    assert list(labels.TARGET_SERIES[::5]) == list(labels.CONDITION_SERIES)


@pytest.mark.parametrize("pixels", [32, 33])
def test_a_marker_at_the_point_is_at_the_crop_centre_at_its_size_in_mm(pixels):
    shape, spacing = (9, 65, 65), (4.0, 0.5, 0.75)  # anisotropic in-plane
    centre = np.array([4, 30.5, 20.0])  # voxel position, between two rows
    rows, cols = np.meshgrid(np.arange(65), np.arange(65), indexing="ij")
    sigma_mm = 1.5
    distance2 = ((rows - centre[1]) * spacing[1]) ** 2 + ((cols - centre[2]) * spacing[2]) ** 2
    volume = np.zeros(shape, np.uint8)
    volume[4] = np.round(250 * np.exp(-distance2 / (2 * sigma_mm**2)))
    crop = cut_crop(volume, native_affine("sagittal_t1", spacing), centre / (np.array(shape) - 1), slices=3,
                      size_mm=12.0, pixels=pixels)
    assert crop.shape == (3, pixels, pixels) and crop.dtype == np.uint8
    assert not crop[0].any() and not crop[2].any()  # neighbouring slices of the volume are empty
    image = crop[1].astype(float)
    grid = np.arange(pixels)
    weights = image / image.sum()
    mean_row, mean_col = (weights.sum(axis=1) @ grid), (weights.sum(axis=0) @ grid)
    np.testing.assert_allclose([mean_row, mean_col], [(pixels - 1) / 2] * 2, atol=0.05)
    # The blob is round in mm, so round in the crop: sigma_mm / (size_mm / pixels) pixels along both axes.
    sd_row = np.sqrt(weights.sum(axis=1) @ (grid - mean_row) ** 2)
    sd_col = np.sqrt(weights.sum(axis=0) @ (grid - mean_col) ** 2)
    np.testing.assert_allclose([sd_row, sd_col], sigma_mm / (12.0 / pixels), rtol=0.05)


def smooth_image(rows_mm, cols_mm):
    """A smooth pattern over patient mm (long wavelengths: bilinear sampling is nearly exact)."""
    return 128 + 100 * np.sin(2 * np.pi * rows_mm / 19.0) * np.cos(2 * np.pi * cols_mm / 23.0)


@pytest.mark.parametrize("point_mm", [(14.3, 9.1), (6.0, 17.7)])
def test_the_crop_is_the_same_physical_square_at_any_resolution(point_mm):
    crops = []
    for scale in (1, 2):  # the same field of view with 2x the pixels
        spacing = (4.0, 0.8 / scale, 0.6 / scale)
        size = 40 * scale + 1
        rows_mm, cols_mm = np.meshgrid(np.arange(size) * spacing[1], np.arange(size) * spacing[2], indexing="ij")
        volume = np.repeat(np.round(smooth_image(rows_mm, cols_mm)).astype(np.uint8)[None], 3, axis=0)
        point = (0.5, point_mm[0] / (40 * 0.8), point_mm[1] / (40 * 0.6))  # normalised: resolution independent
        crops.append(cut_crop(volume, native_affine("axial_t2", spacing), point, slices=1, size_mm=10.0,
                                pixels=20)[0].astype(int))
    offsets = (np.arange(20) - 9.5) * 0.5  # pixel centres, mm from the point
    expected = smooth_image(point_mm[0] + offsets[:, None], point_mm[1] + offsets[None, :])
    for crop in crops:
        assert np.abs(crop - expected).max() <= 4  # 1 for rounding, the rest bilinear error
    assert np.abs(crops[0] - crops[1]).max() <= 4
    assert crops[0].std() > 10  # the pattern is visible: the checks above are not about a flat image


def test_slices_follow_depth_offsets_and_are_zero_outside():
    volume = np.repeat((10 * np.arange(9) + 5).astype(np.uint8)[:, None, None], 8, axis=1).repeat(8, axis=2)
    affine = native_affine("sagittal_t2", (4.0, 1.0, 1.0))

    def slice_values(depth_index, offset_slices=0, slices=5):
        crop = cut_crop(volume, affine, (depth_index / 8, 0.5, 0.5), slices=slices, size_mm=2.0, pixels=2,
                          offset_slices=offset_slices)
        return crop[:, 0, 0].tolist()

    assert slice_values(3) == [15, 25, 35, 45, 55]
    assert slice_values(3, offset_slices=1) == [25, 35, 45, 55, 65]
    assert slice_values(1, offset_slices=-1) == [0, 0, 5, 15, 25]  # slices -2 and -1 are outside
    assert slice_values(8) == [65, 75, 85, 0, 0]
    assert slice_values(3, slices=4) == [15, 25, 35, 45]  # even K: one more slice before the centre
    # The nearest slice: 3.4 -> 3, 3.6 -> 4.
    assert slice_values(3.4, slices=1) == [35] and slice_values(3.6, slices=1) == [45]


def test_outside_the_volume_is_zero_and_interpolates_into_it():
    volume = np.full((3, 40, 40), 200, np.uint8)
    affine = native_affine("axial_t2", (3.0, 1.0, 1.0))
    crop = cut_crop(volume, affine, (0.5, 0.0, 0.0), slices=1, size_mm=16.0, pixels=16)[0]
    # Pixel centres at -7.5 ... 7.5 voxels from voxel (0, 0) along rows and cols.
    assert not crop[:7].any() and not crop[:, :7].any()  # more than a voxel outside
    assert np.all(crop[8:, 8:] == 200)
    assert np.all(crop[7, 8:] == 100) and np.all(crop[8:, 7] == 100)  # half a voxel outside: half the value
    far = cut_crop(volume, affine, (0.5, -1.0, 0.5), slices=1, size_mm=16.0, pixels=16)
    assert not far.any()


def test_left_crops_of_a_study_are_the_right_crops_of_its_mirror_image():
    record = native_record(np.random.default_rng(0))
    flipped = flip_native(record)
    crops, present = crops_lib.study_crops(record, crops_lib.training_points(record), CROP)
    flipped_crops, flipped_present = crops_lib.study_crops(flipped, crops_lib.training_points(flipped), CROP)
    mirror = labels.MIRROR_TARGET_INDEX
    sided = np.flatnonzero(labels.TARGET_SIDE > 0)
    assert present[sided].sum() >= 18
    for t in sided:  # each crop moves to the other side's target together with its label, pixel for pixel
        assert flipped_present[mirror[t]] == present[t]
        np.testing.assert_array_equal(flipped_crops[mirror[t]], crops[t], err_msg=labels.TARGETS[t])
        assert flipped["labels"][mirror[t]] == record["labels"][t]
    for t in range(labels.NUM_LEVELS):  # spinal targets are not mirrored: the mirrored patient's crop is reversed
        np.testing.assert_array_equal(flipped_crops[t], crops[t][::-1])
    # A left crop is the mirror image of what was cut at its point (random volumes: not the cut itself).
    left = labels.TARGETS.index("left_subarticular_stenosis_l3_l4")
    cut = cut_crop(record["axial_t2_native"], record["native_affine"][2], record["coords"][left],
                   slices=CROP.slices, size_mm=CROP.size_mm, pixels=CROP.pixels)
    np.testing.assert_array_equal(crops[left], cut[:, :, ::-1])
    assert not np.array_equal(crops[left], cut)


def test_jitter_moves_crops_in_the_volume_frame_and_is_a_function_of_the_seed():
    record = native_record(np.random.default_rng(1))
    points = crops_lib.training_points(record)
    crops, _ = crops_lib.study_crops(record, points, CROP, jitter=JITTER, rng=np.random.default_rng(3))
    again, _ = crops_lib.study_crops(record, points, CROP, jitter=JITTER, rng=np.random.default_rng(3))
    other, _ = crops_lib.study_crops(record, points, CROP, jitter=JITTER, rng=np.random.default_rng(4))
    plain, _ = crops_lib.study_crops(record, points, CROP)
    np.testing.assert_array_equal(crops, again)
    assert not np.array_equal(crops, other) and not np.array_equal(crops, plain)
    offsets = crops_lib.draw_offsets(JITTER, np.random.default_rng(3))
    for name in ("left_neural_foraminal_narrowing_l2_l3", "left_subarticular_stenosis_l5_s1",
                 "right_subarticular_stenosis_l1_l2"):
        t = labels.TARGETS.index(name)
        s = labels.TARGET_SERIES[t]
        cut = crops_lib.cut_crops(record[f"{labels.SERIES_TYPES[s]}_native"], record["native_affine"][s], points[t],
                                  CROP, offsets=offsets[t])[0]
        if labels.TARGET_SIDE[t] == 1:  # jittered, then mirrored
            cut = np.flip(cut, axis=RIGHT_TO_LEFT_AXIS[s])
        np.testing.assert_array_equal(crops[t], cut, err_msg=name)
    zero, _ = crops_lib.study_crops(record, points, CROP, jitter=np.zeros((3, 3)), rng=np.random.default_rng(3))
    np.testing.assert_array_equal(zero, plain)


def test_an_offset_moves_every_crop_as_the_same_jitter_offset_would():
    record = native_record(np.random.default_rng(2))
    points = crops_lib.training_points(record)
    moved, _ = crops_lib.study_crops(record, points, CROP, offset=(1.0, -1.5, 0.75))
    for t in (0, 7, 16, 21):  # spinal, right and left foraminal, left subarticular
        s = labels.TARGET_SERIES[t]
        cut = crops_lib.cut_crops(record[f"{labels.SERIES_TYPES[s]}_native"], record["native_affine"][s], points[t],
                                  CROP, offsets=np.array([[1.0, -1.5, 0.75]]))[0]
        if labels.TARGET_SIDE[t] == 1:  # moved in the volume's frame, then mirrored
            cut = np.flip(cut, axis=RIGHT_TO_LEFT_AXIS[s])
        np.testing.assert_array_equal(moved[t], cut)
    np.testing.assert_array_equal(crops_lib.study_crops(record, points, CROP, offset=(0, 0, 0))[0],
                                  crops_lib.study_crops(record, points, CROP)[0])


def test_offsets_are_drawn_per_group():
    offsets = crops_lib.draw_offsets(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),
                             np.random.default_rng(0))
    assert offsets.shape == (labels.NUM_TARGETS, 3)
    foraminal = np.isin(labels.TARGET_GROUP, [1])
    assert not offsets[~foraminal].any() and np.all(offsets[foraminal] != 0)
    with pytest.raises(ValueError, match="jitter"):
        crops_lib.draw_offsets(np.ones((2, 3)), np.random.default_rng(0))


def test_training_points_and_absent_crops():
    record = native_record(np.random.default_rng(2), present=(True, True, False))
    points = crops_lib.training_points(record)
    on_series = record["coords_series"] == labels.TARGET_SERIES
    np.testing.assert_array_equal(points[on_series], record["coords"][on_series])
    assert np.isnan(points[~on_series]).all() and (~on_series).sum() == 2  # targets 3 (no point) and 12
    predicted = np.full((labels.NUM_TARGETS, 3), 0.25)
    np.testing.assert_array_equal(crops_lib.training_points(record, predicted)[~on_series], 0.25)

    crops, present = crops_lib.study_crops(record, points, CROP)
    axial = labels.TARGET_SERIES == 2
    np.testing.assert_array_equal(present, on_series & ~axial)
    assert not crops[~present].any() and all(crops[t].any() for t in np.flatnonzero(present))
    assert crops.shape == (labels.NUM_TARGETS, 5, 16, 16) and crops.dtype == np.uint8


def test_bad_inputs_are_refused():
    volume = np.zeros((3, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="in-plane spacing"):
        cut_crop(volume, np.zeros((4, 4)), (0.5, 0.5, 0.5), slices=1, size_mm=4.0, pixels=4)
    with pytest.raises(ValueError, match="uint8"):
        cut_crop(volume.astype(np.float32), np.eye(4), (0.5, 0.5, 0.5), slices=1, size_mm=4.0, pixels=4)
    record = native_record(np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        crops_lib.study_crops(record, crops_lib.training_points(record), CROP, jitter=JITTER)
    with pytest.raises(ValueError, match="points"):
        crops_lib.study_crops(record, np.zeros((5, 3)), CROP)
