"""Where the voxels of a canonical volume `[D, H, W]` came from (`SeriesGeometry`), and the direction-cosine
arithmetic that maps the slices of a series onto the canonical axes.

`SeriesGeometry` is public (re-exported by `dicom`); the rest is internal to `dicom.read_series`: bringing
every slice to the in-plane layout of a reference slice, choosing the axis permutation and flips of the stack,
placing the slices on the depth axis by their true positions (`_depth_plan`: a gap where slices are missing is
filled with slices interpolated from its two neighbours, so that depth stays evenly spaced) and building the
per-slice affines and spacings of the result.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING

import numpy as np

from lumbar_jax import labels

if TYPE_CHECKING:  # annotations only: the coordinate helpers below are imported by models/, without pydicom
    from lumbar_jax.data.dicom_slice import _Slice

PLANES = ("sagittal", "axial")
# SeriesGeometry.instance_numbers of a canonical slice interpolated across a gap (no IS value can be this).
INTERPOLATED = int(np.iinfo(np.int64).min)
# Consecutive slices farther apart than GAP_FACTOR times the series' slice spacing (the median distance of
# distinct positions) have round(distance / spacing) - 1 slices missing between them; those are interpolated
# where the two neighbours are parallel (a missing slice of one stack, not the seam of tilted sub-stacks) and
# at most MAX_INTERPOLATED per gap (farther apart is not a missing slice but another part of the body).
GAP_FACTOR = 1.5
MAX_INTERPOLATED = 32
_PARALLEL_COS = float(np.cos(np.deg2rad(0.5)))
_SAME_POSITION_MM = 1e-3  # closer slices are duplicates, not a spacing
# World (LPS) direction of canonical axes (depth, rows, cols) per plane: the table of docs/conventions.md section 3.
CANONICAL_DIRECTIONS = {
    "sagittal": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
    "axial": np.array([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
}
# Per series (labels.SERIES_TYPES order), the canonical axis that runs patient right -> left (+x): int [3],
# (0, 0, 2) = sagittal depth, axial cols. Also the component of a normalised (depth, row, col) point on that
# series that a left/right mirror maps v -> 1 - v.
RIGHT_TO_LEFT_AXIS = np.array([int(np.argmax(np.abs(CANONICAL_DIRECTIONS[name.split("_")[0]][:, 0])))
                               for name in labels.SERIES_TYPES])


def voxel_extent(shape) -> np.ndarray:
    """float64 [3]: voxel steps from the first to the last voxel centre of each axis of `shape` (n - 1), at
    least 1: the voxel length of a normalised unit (docs/conventions.md section 3)."""
    return np.maximum(np.asarray(shape, np.float64) - 1.0, 1.0)


def normalized_to_index(points, shape) -> np.ndarray:
    """Normalised points float [..., 3] -> continuous voxel index float64 [..., 3] of a volume of `shape`
    ([3] or broadcastable [..., 3]): points * (shape - 1)."""
    return np.asarray(points, np.float64) * (np.asarray(shape, np.float64) - 1)


def index_to_normalized(index, shape) -> np.ndarray:
    """Continuous voxel index [..., 3] of a volume of `shape` -> normalised float64 [..., 3]: 0/1 = centre of the
    first/last voxel; an axis of one voxel has no extent and gives 0.5."""
    return np.where(np.asarray(shape) > 1, np.asarray(index, np.float64) / voxel_extent(shape), 0.5)


@dataclasses.dataclass(frozen=True, eq=False)
class SeriesGeometry:
    """Where the voxels of a canonical volume `[D, H, W]` came from; no patient-identifying values.

    Per-slice arrays are indexed by canonical depth; a slice interpolated across a gap of missing slices
    (`interpolated_slices`) has the instance number INTERPOLATED. `slice_affines[k] @ (row, col, 1)` maps a pixel of the
    stored image of slice k (row = y, col = x, as in train_label_coordinates.csv) to canonical (depth, row,
    col) voxel coordinates; `pixel_to_world[k] @ (row, col, 1)` maps it to patient coordinates (mm, LPS).
    `other_pixel_to_world` does the latter for instances that were read but are not in the volume (other
    orientation groups, undecodable pixels), so their points can still be located in it.
    """

    plane: str
    shape: tuple[int, int, int]
    instance_numbers: np.ndarray  # int [D]
    slice_positions: np.ndarray  # float [D] mm along depth_direction, non-decreasing
    spacing: tuple[float, float, float]  # mm along canonical (depth, row, col)
    # Stacked (slice, row, col) axis i -> canonical axis permutation[i], then the canonical axes in `flips`
    # reversed. Slices are stacked in order along depth_direction, so the slice axis maps to depth unflipped.
    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    n_orientation_groups: int
    skipped_files: tuple[str, ...]
    resampled_slices: int
    depth_direction: np.ndarray  # float [3] unit vector (LPS) of increasing canonical depth
    slice_affines: np.ndarray  # float [D, 3, 3]
    pixel_to_world: np.ndarray  # float [D, 3, 3]
    other_pixel_to_world: dict[int, np.ndarray]  # instance number -> float [3, 3]
    # canonical slices interpolated across gaps (instance number INTERPOLATED): their "stored pixel" is the
    # pixel of their lower neighbour's image, placed on the interpolated plane
    interpolated_slices: tuple[int, ...] = ()

    @property
    def read_slices(self) -> int:
        """How many canonical slices were read from files (D less those interpolated across gaps): the
        "readable slices" a choice between series of one type counts."""
        return self.shape[0] - len(self.interpolated_slices)

    def canonical_index(self, instance_number: int, row: float, col: float) -> np.ndarray:
        """Float [3] (depth, row, col) voxel coordinates in the canonical volume of pixel (row, col) of the
        stored image of `instance_number`.

        For a slice of the volume the depth is its canonical index exactly and the in-plane coordinates go
        through that slice's transpose/flips and shape resampling. An instance that was read but is not in the
        volume is located through its patient coordinates (`world_to_canonical`). KeyError naming the
        instance number when the series does not have it, or when several slices share it (the frames of a
        multi-frame file): no point is better than a wrong one.
        """
        n = int(instance_number)
        matches = np.flatnonzero(self.instance_numbers == n)
        pixel = np.array([row, col, 1.0], dtype=np.float64)
        if len(matches) == 1:
            return self.slice_affines[matches[0]] @ pixel
        if len(matches) > 1:
            raise KeyError(f"instance number {n} is shared by {len(matches)} slices (a multi-frame file?)")
        if n in self.other_pixel_to_world:
            return self.world_to_canonical(self.other_pixel_to_world[n] @ pixel)
        raise KeyError(f"instance number {n} is not in this series")

    def world_to_canonical(self, point: np.ndarray) -> np.ndarray:
        """Float [3] continuous canonical (depth, row, col) coordinates of a patient-space point [3] (mm).

        The point is located between the two neighbouring slices by its signed distances to their planes and
        its coordinates are interpolated linearly between its projections onto them (extrapolated beyond the
        first/last slice; a single slice uses the depth spacing). A point on a slice gets that slice's
        coordinates exactly, also in tilted sub-stacks.
        """
        point = np.asarray(point, dtype=np.float64)
        step_row, step_col, origin = np.moveaxis(self.pixel_to_world, 2, 0)  # each [D, 3]
        normals = np.cross(step_col, step_row)
        normals *= np.sign(normals @ self.depth_direction)[:, None] / np.linalg.norm(normals, axis=1)[:, None]
        distances = np.einsum("kd,kd->k", point - origin, normals)  # > 0: beyond the slice in depth direction
        if len(distances) == 1:
            index = self._in_plane(0, point)
            index[0] += distances[0] / self.spacing[0]
            return index
        k0 = int(np.clip(np.count_nonzero(distances >= 0) - 1, 0, len(distances) - 2))
        gap = distances[k0] - distances[k0 + 1]
        t = distances[k0] / gap if gap != 0 else 0.0
        return (1.0 - t) * self._in_plane(k0, point) + t * self._in_plane(k0 + 1, point)

    def _in_plane(self, k: int, point: np.ndarray) -> np.ndarray:
        """Canonical coordinates of `point` projected onto canonical slice k (depth component = k)."""
        step_row, step_col, origin = self.pixel_to_world[k].T
        offset = point - origin
        pixel = np.array([offset @ step_row / (step_row @ step_row), offset @ step_col / (step_col @ step_col), 1.0])
        return self.slice_affines[k] @ pixel

    def normalized(self, instance_number: int, row: float, col: float) -> np.ndarray:
        """Float [3] normalised (depth, row, col) of a pixel: 0/1 = centre of the first/last voxel.

        Points outside the volume fall outside [0, 1]. An axis of length 1 has no extent; its coordinate is
        0.5, which `volume.resample` maps to the middle of the resampled axis.
        """
        return self.normalize(self.canonical_index(instance_number, row, col))

    def normalize(self, index: np.ndarray) -> np.ndarray:
        """Canonical voxel coordinates [3] -> normalised coordinates [3] (see `normalized`)."""
        return index_to_normalized(index, self.shape)

    def native_affine(self) -> np.ndarray:
        """Float [4, 4]: canonical voxel index (depth, row, col, 1) of this volume -> patient (x, y, z, 1) (mm, LPS).

        One affine for the whole volume, fitted by least squares to the patient positions of the centre and
        the four corner voxels of every canonical slice (each through that slice's own geometry). A regular
        stack (parallel, evenly spaced slices on one pixel grid) is fitted exactly; for tilted sub-stacks or
        uneven spacing it is the best single affine, off by up to a few mm at the edges of a tilted stack. A
        one-slice volume takes its depth column from `depth_direction` and the depth spacing.
        """
        depth, rows, cols = self.shape
        corners = [(r, c, 1.0) for r in (0, rows - 1) for c in (0, cols - 1)]
        in_plane = np.array(corners + [((rows - 1) / 2, (cols - 1) / 2, 1.0)])  # [5, 3] (row, col, 1)
        design = np.concatenate([np.column_stack([np.full(len(in_plane), k), in_plane]) for k in range(depth)])
        world = np.concatenate([in_plane @ self._canonical_slice_to_world(k).T for k in range(depth)])
        solution, *_ = np.linalg.lstsq(design, world, rcond=None)  # [4 (depth, row, col, 1), 3]
        affine = np.eye(4)
        affine[:3] = solution.T  # columns: depth, row, col steps, origin
        if depth == 1:
            affine[:3, 0] = self.depth_direction * self.spacing[0]
        return affine

    def _canonical_slice_to_world(self, k: int) -> np.ndarray:
        """[3, 3]: canonical in-plane (row, col, 1) on canonical slice k -> patient coordinates (mm)."""
        to_canonical = np.vstack([self.slice_affines[k][1:], [0.0, 0.0, 1.0]])  # stored (row, col, 1) -> canonical
        return self.pixel_to_world[k] @ np.linalg.pinv(to_canonical)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How the kept slices of a series stack into the canonical volume of `plane`. Internal.

    Slices are stacked in order along `depth_direction` [3] (unit, LPS); every slice is first brought to the
    in-plane layout of `reference` (the group's first slice in file order). Stacked axis i (slice, row, col)
    then goes to canonical axis `permutation[i]` (the slice axis to depth), and the canonical axes in `flips`
    are reversed.
    """

    plane: str
    depth_direction: np.ndarray
    reference: _Slice
    permutation: tuple[int, ...]
    flips: tuple[bool, ...]


def _best_permutation(directions: np.ndarray, plane: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Permutation and flips taking stacked axes with world `directions` [3 (slice, row, col), 3] to the
    canonical axes of `plane`: the permutation maximises the summed |direction cosine| alignment."""
    cosines = directions @ CANONICAL_DIRECTIONS[plane].T  # [stacked axis, canonical axis]
    permutation = max(itertools.permutations(range(3)), key=lambda p: sum(abs(cosines[i, p[i]]) for i in range(3)))
    flips = [False] * 3
    for i, axis in enumerate(permutation):
        flips[axis] = bool(cosines[i, axis] < 0)
    return permutation, tuple(flips)


def _in_plane_alignment(item: _Slice, ref_row_dir: np.ndarray, ref_col_dir: np.ndarray) -> tuple[bool, bool, bool]:
    """(transpose, flip rows, flip cols) that bring a slice's image to the reference in-plane layout.

    Rows of the aligned image run along the reference's col_dir, columns along its row_dir. The transpose is
    applied first, then the flips of the aligned axes.
    """
    straight = abs(item.col_dir @ ref_col_dir) + abs(item.row_dir @ ref_row_dir)
    crossed = abs(item.row_dir @ ref_col_dir) + abs(item.col_dir @ ref_row_dir)
    transpose = crossed > straight
    down, across = (item.row_dir, item.col_dir) if transpose else (item.col_dir, item.row_dir)
    return transpose, bool(down @ ref_col_dir < 0), bool(across @ ref_row_dir < 0)


def _in_plane_matrix(item: _Slice, alignment: tuple[bool, bool, bool], shape: tuple[int, int]) -> np.ndarray:
    """[3, 3]: stored pixel (row, col, 1) -> (row, col, 1) in the aligned image resampled to `shape`."""
    transpose, flip_rows, flip_cols = alignment
    aligned = (item.cols, item.rows) if transpose else (item.rows, item.cols)
    matrix = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) if transpose else np.eye(3)
    for axis, flip in ((0, flip_rows), (1, flip_cols)):
        if flip:
            matrix[axis] = -matrix[axis]
            matrix[axis, 2] += aligned[axis] - 1
    scale = np.eye(3)
    for axis in range(2):
        if aligned[axis] == 1:  # a single row is repeated: it sits in the middle of the resampled axis
            scale[axis, axis], scale[axis, 2] = 0.0, (shape[axis] - 1) / 2.0
        else:
            scale[axis, axis] = (shape[axis] - 1) / (aligned[axis] - 1)
    return scale @ matrix


def _resampled_spacing(item: _Slice, alignment: tuple[bool, bool, bool], shape: tuple[int, int]) -> list[float]:
    """(row, col) spacing in mm of a slice's image once aligned and resampled to `shape` (corner-aligned)."""
    transpose = alignment[0]
    aligned_shape = (item.cols, item.rows) if transpose else (item.rows, item.cols)
    aligned_spacing = item.pixel_spacing[::-1] if transpose else item.pixel_spacing
    return [
        s * (n - 1) / (m - 1) if n > 1 and m > 1 else s for s, n, m in zip(aligned_spacing, aligned_shape, shape)
    ]


@dataclasses.dataclass(frozen=True)
class _Gap:
    """Consecutive kept slices `lower`, `lower + 1` `distance` mm apart where slices are `spacing` mm apart;
    `interpolated` slices fill it (0: left as it is). Internal."""

    lower: int
    distance: float
    spacing: float
    interpolated: int


@dataclasses.dataclass(frozen=True)
class _DepthPlan:
    """The canonical depth axis of a series: `depth` int [n kept], the canonical index of each kept slice (in
    depth order); `interpolated` (depth, lower kept slice, weight of the next kept slice) of every slice
    interpolated in a gap; `size` = D. Internal."""

    depth: np.ndarray
    interpolated: tuple[tuple[int, int, float], ...]
    gaps: tuple[_Gap, ...]
    size: int


def _depth_plan(kept: list[_Slice], depth_direction: np.ndarray) -> _DepthPlan:
    """Where the kept slices (sorted along `depth_direction` [3]) go on the canonical depth axis: one after
    the other, and across each gap (GAP_FACTOR) the missing slices interpolated at evenly spaced positions
    between its neighbours, so that each canonical step is the slice spacing (see GAP_FACTOR)."""
    depth = np.arange(len(kept))
    steps = np.diff([m.centre @ depth_direction for m in kept])
    distinct = steps[steps > _SAME_POSITION_MM]
    if len(distinct) == 0:
        return _DepthPlan(depth, (), (), len(kept))
    spacing = float(np.median(distinct))
    interpolated, gaps = [], []
    for k in np.flatnonzero(steps > GAP_FACTOR * spacing):
        missing = int(round(steps[k] / spacing)) - 1
        parallel = abs(kept[k].normal @ kept[k + 1].normal) >= _PARALLEL_COS
        if not parallel:  # the seam of tilted sub-stacks: no slice is missing
            continue
        filled = missing if missing <= MAX_INTERPOLATED else 0
        gaps.append(_Gap(int(k), float(steps[k]), spacing, filled))
        interpolated += [(int(depth[k]) + j, int(k), j / (filled + 1)) for j in range(1, filled + 1)]
        depth[k + 1:] += filled
    return _DepthPlan(depth, tuple(interpolated), tuple(gaps), len(kept) + len(interpolated))


def _series_geometry(layout: _Layout, volume_shape: tuple[int, ...], kept: list[_Slice],
                     alignments: list[tuple[bool, bool, bool]], common: tuple[int, int], resampled: int,
                     n_groups: int, skipped_files: tuple[str, ...], others: list[_Slice],
                     plan: _DepthPlan) -> SeriesGeometry:
    """The geometry of a volume `[D, H, W]` stacked from `kept` (in depth order, each aligned as `alignments`
    says and resampled to `common`, at the depths of `plan`); `others` are the slices read but left out (first
    instance number wins)."""
    permutation, flips = layout.permutation, layout.flips
    # Affine from stacked (slice, row, col, 1) to canonical (depth, row, col); depth is never flipped.
    to_canonical = np.zeros((3, 4))
    for i, axis in enumerate(permutation):
        to_canonical[axis, i] = -1.0 if flips[axis] else 1.0
        to_canonical[axis, 3] = volume_shape[axis] - 1 if flips[axis] else 0.0
    in_plane = [_in_plane_matrix(item, alignment, common) for item, alignment in zip(kept, alignments)]
    instances = np.full(plan.size, INTERPOLATED, dtype=np.int64)
    positions, affines, worlds = np.empty(plan.size), np.empty((plan.size, 3, 3)), np.empty((plan.size, 3, 3))
    for k, (item, depth) in enumerate(zip(kept, plan.depth)):
        instances[depth], positions[depth] = item.instance_number, item.centre @ layout.depth_direction
        affines[depth] = to_canonical @ np.vstack([[0.0, 0.0, depth], in_plane[k][:2], [0.0, 0.0, 1.0]])
        worlds[depth] = item.pixel_to_world
    for depth, k, t in plan.interpolated:
        # the plane between slices k and k + 1, in slice k's stored pixels: canonical in-plane point p lies at
        # (1 - t) * (its point on k) + t * (its point on k + 1)
        lower, upper = kept[k].pixel_to_world, kept[k + 1].pixel_to_world @ np.linalg.pinv(in_plane[k + 1])
        worlds[depth] = (1.0 - t) * lower + t * upper @ in_plane[k]
        positions[depth] = (1.0 - t) * positions[plan.depth[k]] + t * positions[plan.depth[k + 1]]
        affines[depth] = to_canonical @ np.vstack([[0.0, 0.0, depth], in_plane[k][:2], [0.0, 0.0, 1.0]])
    depth_spacing = float(np.median(np.diff(positions))) if plan.size > 1 else kept[0].thickness or 1.0
    row_spacing, col_spacing = np.median([_resampled_spacing(m, a, common) for m, a in zip(kept, alignments)], axis=0)
    if permutation[1] == 2:
        row_spacing, col_spacing = col_spacing, row_spacing
    return SeriesGeometry(
        plane=layout.plane,
        shape=tuple(int(s) for s in volume_shape),
        instance_numbers=instances,
        slice_positions=positions,
        spacing=(depth_spacing, float(row_spacing), float(col_spacing)),
        permutation=tuple(int(p) for p in permutation),
        flips=flips,
        n_orientation_groups=n_groups,
        skipped_files=skipped_files,
        resampled_slices=resampled,
        depth_direction=layout.depth_direction,
        slice_affines=affines,
        pixel_to_world=worlds,
        other_pixel_to_world={m.instance_number: m.pixel_to_world for m in reversed(others)},  # first wins
        interpolated_slices=tuple(depth for depth, _, _ in plan.interpolated),
    )
