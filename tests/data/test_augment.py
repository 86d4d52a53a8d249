"""Augmentations: the left/right flip swaps labels and coordinates with the anatomy; zoom/shift keeps every
coordinate on its anatomy; intensity jitter; determinism. Tiny synthetic records only."""

import numpy as np
import pytest
import scipy.ndimage

from lumbar_jax import labels as labels_lib
from lumbar_jax.data import augment
from lumbar_jax.train import config as config_lib

SHAPE = (8, 24, 24)  # [D, H, W]; small, with room for a blob to move
NEUTRAL = dict(flip_lr_prob=0.0, shift=0.0, scale=(1.0, 1.0), intensity_scale=(1.0, 1.0), intensity_shift=0.0,
               noise_std=0.0)  # every op off


def augment_config(**overrides):
    """The run config's `augment` section (what augment_record takes) with `overrides`."""
    section = config_lib.default_config().augment
    section.update(overrides)
    return section


def make_record(rng, shape=SHAPE, study_id=1, present=(True, True, True)):
    """A random record as docs/conventions.md section 4 (coordinates on random series, some absent)."""
    coords_series = rng.integers(-1, 3, labels_lib.NUM_TARGETS)
    coords = rng.uniform(0, 1, (labels_lib.NUM_TARGETS, 3)).astype(np.float32)
    coords[coords_series < 0] = -1
    present = np.array(present)
    return {
        "study_id": np.int64(study_id),
        **{name: (rng.integers(0, 256, shape, dtype=np.uint8) if present[s] else np.zeros(shape, np.uint8))
           for s, name in enumerate(labels_lib.SERIES_TYPES)},
        "present": present,
        "series_ids": np.where(present, np.arange(3) + 10 * study_id, -1),
        "labels": rng.integers(-1, 3, labels_lib.NUM_TARGETS),
        "coords": coords,
        "coords_series": coords_series,
    }


def assert_records_equal(a, b):
    """Equal records: exact, except float coordinates up to rounding (1 - (1 - x) is not always x)."""
    assert a.keys() == b.keys()
    for key in a:
        if np.asarray(a[key]).dtype.kind == "f":
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def voxel(volume, coord):
    """Value of `volume` at the voxel nearest to normalised `coord`."""
    return volume[tuple(int(round(c * (n - 1))) for c, n in zip(coord, volume.shape))]


def blob_record():
    """Zero volumes with a bright blob (peak 255) at a LEFT target's coordinate and a dim one (peak 100) at
    the RIGHT target of the same level: foraminal L4/L5 on sagittal T1, subarticular L4/L5 on the axial
    series; and one at spinal L4/L5 on sagittal T2. Blobs are Gaussians (sigma 1 voxel) peaking on a voxel."""
    d, h, w = SHAPE
    record = {name: np.zeros(SHAPE, np.uint8) for name in labels_lib.SERIES_TYPES}
    record.update(study_id=np.int64(7), present=np.ones(3, bool), series_ids=np.arange(3),
                  labels=np.full(labels_lib.NUM_TARGETS, -1),
                  coords=np.full((labels_lib.NUM_TARGETS, 3), -1, np.float32),
                  coords_series=np.full(labels_lib.NUM_TARGETS, -1))
    spots = {  # target -> (series, voxel, value, label). Sagittal depth and axial cols run right -> left.
        labels_lib.TARGETS.index("left_neural_foraminal_narrowing_l4_l5"): (0, (6, 14, 9), 255, 2),
        labels_lib.TARGETS.index("right_neural_foraminal_narrowing_l4_l5"): (0, (1, 14, 9), 100, 0),
        labels_lib.TARGETS.index("left_subarticular_stenosis_l4_l5"): (2, (5, 12, 18), 255, 1),
        labels_lib.TARGETS.index("right_subarticular_stenosis_l4_l5"): (2, (5, 12, 5), 100, 0),
        labels_lib.TARGETS.index("spinal_canal_stenosis_l4_l5"): (1, (3, 14, 12), 180, 1),
    }
    grid = np.stack(np.meshgrid(*map(np.arange, SHAPE), indexing="ij"), axis=-1)  # [D, H, W, 3]
    for target, (series, vox, value, label) in spots.items():
        blob = value * np.exp(-0.5 * np.sum((grid - vox) ** 2, axis=-1))
        volume = record[labels_lib.SERIES_TYPES[series]]
        np.maximum(volume, np.round(blob).astype(np.uint8), out=volume)
        record["coords"][target] = np.array(vox) / (np.array((d, h, w)) - 1)
        record["coords_series"][target] = series
        record["labels"][target] = label
    return record


def test_flip_twice_is_identity():
    record = make_record(np.random.default_rng(0), present=(True, False, True))
    assert_records_equal(augment.flip_left_right(augment.flip_left_right(record)), record)


def test_flip_swaps_left_and_right_labels_and_keeps_coordinates_on_the_anatomy():
    record = blob_record()
    flipped = augment.flip_left_right(record)
    left_foramen = labels_lib.TARGETS.index("left_neural_foraminal_narrowing_l4_l5")
    right_foramen = labels_lib.TARGETS.index("right_neural_foraminal_narrowing_l4_l5")
    left_sub = labels_lib.TARGETS.index("left_subarticular_stenosis_l4_l5")
    right_sub = labels_lib.TARGETS.index("right_subarticular_stenosis_l4_l5")
    spinal = labels_lib.TARGETS.index("spinal_canal_stenosis_l4_l5")

    # The severe left foramen is now the patient's right foramen, and the right target's coordinate points at
    # that (bright) blob in the flipped volume; likewise for the axial subarticular zones.
    assert flipped["labels"][right_foramen] == 2 and flipped["labels"][left_foramen] == 0
    assert flipped["labels"][right_sub] == 1 and flipped["labels"][left_sub] == 0
    assert flipped["labels"][spinal] == 1
    for bright, dim in ((right_foramen, left_foramen), (right_sub, left_sub)):
        series = labels_lib.SERIES_TYPES[flipped["coords_series"][bright]]
        assert voxel(flipped[series], flipped["coords"][bright]) == 255
        assert voxel(flipped[series], flipped["coords"][dim]) == 100
    assert voxel(flipped["sagittal_t2"], flipped["coords"][spinal]) == 180
    # The mirror axis: sagittal depth, axial cols; nothing else moves.
    np.testing.assert_array_equal(flipped["sagittal_t1"], record["sagittal_t1"][::-1])
    np.testing.assert_array_equal(flipped["axial_t2"], record["axial_t2"][:, :, ::-1])
    np.testing.assert_allclose(flipped["coords"][right_foramen], [1 - 6 / 7, 14 / 23, 9 / 23], rtol=1e-6)
    # Untouched: the input, absent coordinates, other keys.
    assert record["labels"][left_foramen] == 2 and record["sagittal_t1"][6, 14, 9] == 255
    absent = flipped["coords_series"] < 0
    assert np.all(flipped["coords"][absent] == -1) and absent.sum() == labels_lib.NUM_TARGETS - 5
    assert flipped["study_id"] == 7


def test_flip_of_a_batch_equals_flip_of_each_record():
    rng = np.random.default_rng(1)
    records = [make_record(rng, study_id=i) for i in range(3)]
    batch = {"volumes": np.stack([np.stack([r[n] for n in labels_lib.SERIES_TYPES]) for r in records]),
             **{k: np.stack([r[k] for r in records]) for k in ("labels", "coords", "coords_series")}}
    flipped = augment.flip_left_right(batch)
    for i, record in enumerate(records):
        expected = augment.flip_left_right(record)
        np.testing.assert_array_equal(flipped["volumes"][i], np.stack([expected[n] for n in labels_lib.SERIES_TYPES]))
        for key in ("labels", "coords", "coords_series"):
            np.testing.assert_array_equal(flipped[key][i], expected[key])


def test_unflip_predictions_maps_flipped_predictions_back():
    record = make_record(np.random.default_rng(2))
    one_hot = lambda labels: np.eye(3)[np.maximum(labels, 0)] * (labels >= 0)[:, None]  # [25, 3]
    predicted_on_flipped = one_hot(augment.flip_left_right(record)["labels"])[None]  # a perfect model, batch of 1
    np.testing.assert_array_equal(augment.unflip_predictions(predicted_on_flipped)[0], one_hot(record["labels"]))


@pytest.mark.parametrize("seed", range(6))
def test_zoom_and_shift_keep_each_coordinate_on_its_blob(seed):
    record = blob_record()
    config = augment_config(**NEUTRAL | dict(shift=0.12, scale=(0.8, 1.25)))
    out = augment.augment_record(record, np.random.default_rng(seed), config)
    moved = checked = 0
    for target in np.flatnonzero(record["coords_series"] >= 0):
        series = labels_lib.SERIES_TYPES[record["coords_series"][target]]
        value = record[series][tuple(np.round(record["coords"][target] * (np.array(SHAPE) - 1)).astype(int))]
        if out["coords_series"][target] < 0:  # pushed out of the field of view: marked absent, label kept
            assert np.all(out["coords"][target] == -1)
            continue
        assert out["coords_series"][target] == record["coords_series"][target]
        assert np.all((out["coords"][target] >= 0) & (out["coords"][target] <= 1))
        moved += not np.allclose(out["coords"][target], record["coords"][target])
        # The blob (spread by interpolation) peaks within one voxel of the transformed coordinate.
        position = out["coords"][target] * (np.array(SHAPE) - 1)
        lo = np.maximum(np.floor(position).astype(int) - 1, 0)
        window = out[series][lo[0]:lo[0] + 4, lo[1]:lo[1] + 4, lo[2]:lo[2] + 4].astype(float)
        peak = lo + np.array(np.unravel_index(window.argmax(), window.shape))
        assert np.all(np.abs(peak - position) <= 1.0), (target, peak, position)
        assert window.max() >= 0.3 * value  # the blob is there, not an empty window
        checked += 1
    assert checked >= 3 and moved == checked
    np.testing.assert_array_equal(out["labels"], record["labels"])


def test_coordinates_pushed_out_of_the_field_of_view_are_marked_absent():
    record = make_record(np.random.default_rng(3))
    record["coords"][:] = 0.01  # every coordinate hugs the volume's corner
    record["coords_series"][:] = np.arange(labels_lib.NUM_TARGETS) % 3
    config = augment_config(**NEUTRAL | dict(shift=0.2))
    dropped = 0
    for seed in range(5):
        out = augment.augment_record(record, np.random.default_rng(seed), config)
        absent = out["coords_series"] < 0
        assert np.all(out["coords"][absent] == -1)
        assert np.all((out["coords"][~absent] >= 0) & (out["coords"][~absent] <= 1))
        dropped += absent.sum()
    assert 0 < dropped < 5 * labels_lib.NUM_TARGETS


def test_zoom_shift_equals_scipy_affine_transform():
    volume = np.random.default_rng(4).uniform(0, 255, SHAPE).astype(np.float32)
    scale, shift = 1.13, np.array([0.05, -0.1, 0.07])
    n = np.array(SHAPE)
    offset = (n - 1) * (0.5 - (0.5 + shift) / scale)  # input voxel = output voxel / scale + offset
    expected = scipy.ndimage.affine_transform(volume, np.full(3, 1 / scale), offset=offset, order=1,
                                              mode="grid-constant", cval=0.0, prefilter=False)
    np.testing.assert_allclose(augment._zoom_shift(volume, scale, shift), expected, atol=1e-3)


def test_augment_is_deterministic_and_leaves_the_input_alone():
    record = make_record(np.random.default_rng(5))
    before = {k: np.copy(v) for k, v in record.items()}
    config = augment_config(**config_lib.SPATIAL_JITTER, noise_std=0.05)  # every op on
    a = augment.augment_record(record, np.random.default_rng(11), config)
    b = augment.augment_record(record, np.random.default_rng(11), config)
    c = augment.augment_record(record, np.random.default_rng(12), config)
    assert_records_equal(a, b)
    assert not np.array_equal(a["sagittal_t2"], c["sagittal_t2"])
    assert_records_equal(record, before)
    assert all(a[name].dtype == np.uint8 and a[name].shape == SHAPE for name in labels_lib.SERIES_TYPES)
    assert a["coords"].dtype == np.float32


def test_intensity_jitter_touches_present_series_only():
    record = make_record(np.random.default_rng(6), present=(True, False, True))
    config = augment_config(**NEUTRAL | dict(intensity_scale=(0.5, 1.5), intensity_shift=0.2, noise_std=0.05))
    out = augment.augment_record(record, np.random.default_rng(0), config)
    assert not np.any(out["sagittal_t2"])
    assert not np.array_equal(out["sagittal_t1"], record["sagittal_t1"])
    assert_records_equal({k: out[k] for k in ("labels", "coords", "coords_series")},
                         {k: record[k] for k in ("labels", "coords", "coords_series")})


def test_crop_intensity_jitter_is_per_series_over_its_present_crops():
    crops = np.random.default_rng(0).integers(60, 200, (labels_lib.NUM_TARGETS, 3, 8, 8), dtype=np.uint8)
    present = np.ones(labels_lib.NUM_TARGETS, bool)
    present[[0, 7]] = False
    out = augment.jitter_crop_intensity(crops, present, np.random.default_rng(1), (0.5, 0.5), 0.0)
    np.testing.assert_array_equal(out[~present], crops[~present])
    for s in range(len(labels_lib.SERIES_TYPES)):
        chosen = present & (labels_lib.TARGET_SERIES == s)
        mean = crops[chosen].astype(np.float64).mean()
        np.testing.assert_allclose(out[chosen], (crops[chosen] - mean) * 0.5 + mean, atol=1)
    rng, fresh = np.random.default_rng(1), np.random.default_rng(1)
    assert augment.jitter_crop_intensity(crops, present, rng, (1.0, 1.0), 0.0) is crops
    fresh.uniform(size=2 * len(labels_lib.SERIES_TYPES))
    assert rng.random() == fresh.random()  # the same draws whatever the settings


def test_certain_flip_with_everything_else_neutral_is_flip_left_right():
    record = make_record(np.random.default_rng(7))
    out = augment.augment_record(record, np.random.default_rng(0), augment_config(**NEUTRAL | dict(flip_lr_prob=1.0)))
    assert_records_equal(out, augment.flip_left_right(record))
    assert_records_equal(augment.augment_record(record, np.random.default_rng(0), augment_config(**NEUTRAL)), record)
    disabled = augment_config(**config_lib.SPATIAL_JITTER, enabled=False)
    assert_records_equal(augment.augment_record(record, np.random.default_rng(0), disabled), record)


def test_the_default_run_config_augments_intensity_and_flips_only():
    """The CPU default: no spatial jitter (coordinates and volumes stay put unless flipped), contrast /
    brightness jitter on present series."""
    section = config_lib.default_config().augment
    record = make_record(np.random.default_rng(8))
    for seed in range(4):
        rng = np.random.default_rng(seed)
        flipped = rng.random() < section.flip_lr_prob  # the first draw of augment_record
        out = augment.augment_record(record, np.random.default_rng(seed), section)
        expected = augment.flip_left_right(record) if flipped else record
        for key in ("labels", "coords", "coords_series"):
            np.testing.assert_allclose(out[key], expected[key], atol=1e-6)
        assert not np.array_equal(out["sagittal_t1"], expected["sagittal_t1"])
