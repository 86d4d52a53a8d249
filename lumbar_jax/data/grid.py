"""All series of a study resampled into one shared patient-coordinate grid (the earlier 3D system's input).

The dataset configs `grid32` / `grid64` / `grid128` (earlier system B) store each study's three series as the
three channels of ONE volume: every present series is resampled (trilinear) into the same axis-aligned grid
in DICOM patient coordinates (LPS, mm), so voxel (i, j, k) of `sagittal_t1`, `sagittal_t2` and `axial_t2` is
the same point of the patient. The records keep the features of docs/conventions.md section 4; only where the
volumes' voxels lie differs (and the normalised coordinates refer to this grid, the same for all three).

The grid (`study_grid`): the axis-aligned bounding box, in LPS, of the voxel centres of every present series
(the union of their physical extents), sampled with N points per axis, corner-aligned (the first and last
sample of an axis lie on the box faces). The spacing is therefore per axis: extent / (N - 1) mm. Grid axes
follow the sagittal canonical layout of docs/conventions.md section 3: axis 0 patient right -> left (+x), axis 1
superior -> inferior (-z), axis 2 anterior -> posterior (+y); a sagittal series keeps its familiar look and the
axial series is re-sliced into it.

Sampling (`resample_series`): each grid point's continuous canonical (depth, row, col) index in a series
comes from that series' own geometry (`world_to_canonical`, the vectorised `SeriesGeometry.world_to_canonical`:
the point is located between its two neighbouring slice planes, so tilted axial sub-stacks are followed), and
the series' full-resolution canonical volume is interpolated trilinearly there. A point more than half a voxel
outside a series' volume is outside it and gets 0. Each series is then normalised to uint8 like every record
volume (clip to the 0.5 / 99.5 percentiles, `volume.CLIP_PERCENTILES`), the percentiles taken over its
inside points only; outside points stay 0. Like `volume.resample` there is no anti-aliasing filter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from lumbar_jax.data.dicom import SeriesGeometry
from lumbar_jax.data.dicom_geometry import CANONICAL_DIRECTIONS, index_to_normalized, voxel_extent
from lumbar_jax.data.volume import CLIP_PERCENTILES

# World (LPS) direction of grid axes 0, 1, 2: the sagittal canonical layout (docs/conventions.md section 3).
GRID_DIRECTIONS = CANONICAL_DIRECTIONS["sagittal"]
# A box thinner than this along an axis (e.g. a one-slice series alone) is widened to it, about its centre.
MIN_EXTENT_MM = 1.0
_CHUNK = 1 << 17  # grid points per vectorised block (bounds the [points, slices] temporaries)


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """An axis-aligned grid in patient coordinates: voxel index (i, j, k) lies at
    `origin + sum_a index_a * spacing_a * GRID_DIRECTIONS[a]` (mm, LPS)."""

    origin: np.ndarray  # float [3] world position of voxel (0, 0, 0)
    spacing: np.ndarray  # float [3] mm between neighbouring voxels along each grid axis
    shape: tuple[int, int, int]

    def world(self, index: np.ndarray) -> np.ndarray:
        """Grid voxel coordinates [..., 3] (continuous) -> patient coordinates [..., 3] (mm)."""
        return self.origin + (np.asarray(index, np.float64) * self.spacing) @ GRID_DIRECTIONS

    def index(self, world: np.ndarray) -> np.ndarray:
        """Patient coordinates [..., 3] (mm) -> continuous grid voxel coordinates [..., 3]."""
        return ((np.asarray(world, np.float64) - self.origin) @ GRID_DIRECTIONS.T) / self.spacing

    def normalize(self, index: np.ndarray) -> np.ndarray:
        """Grid voxel coordinates -> normalised coordinates (0 / 1 = centre of the first / last voxel)."""
        return index_to_normalized(index, self.shape)

    def points(self) -> np.ndarray:
        """Patient coordinates float [prod(shape), 3] of every voxel centre, in C (row-major) order."""
        index = np.stack(np.meshgrid(*(np.arange(n) for n in self.shape), indexing="ij"), axis=-1)
        return self.world(index.reshape(-1, 3))


def canonical_to_world(geometry: SeriesGeometry, depth: int, rows_cols: np.ndarray) -> np.ndarray:
    """Patient coordinates [N, 3] of canonical in-plane positions `rows_cols` [N, 2] on canonical slice `depth`."""
    affine = geometry.slice_affines[depth]  # stored (row, col, 1) -> canonical (depth, row, col)
    inverse = np.linalg.pinv(affine[1:, :2])
    pixels = (np.asarray(rows_cols, np.float64) - affine[1:, 2]) @ inverse.T  # [N, 2] stored (row, col)
    return np.concatenate([pixels, np.ones((len(pixels), 1))], axis=1) @ geometry.pixel_to_world[depth].T


def series_corners(geometry: SeriesGeometry) -> np.ndarray:
    """Patient coordinates [8, 3] of the centres of the 8 corner voxels of a series' canonical volume."""
    depth, rows, cols = geometry.shape
    in_plane = np.array([(r, c) for r in (0, rows - 1) for c in (0, cols - 1)], np.float64)
    return np.concatenate([canonical_to_world(geometry, k, in_plane) for k in (0, depth - 1)])


def study_grid(geometries: Sequence[SeriesGeometry | None], shape: Sequence[int]) -> Grid | None:
    """The shared grid of `shape` over the union of the present series' extents (None if none is present)."""
    corners = [series_corners(g) for g in geometries if g is not None]
    if not corners:
        return None
    along = np.concatenate(corners) @ GRID_DIRECTIONS.T  # [K, 3] positions along the grid axes
    lo, hi = along.min(axis=0), along.max(axis=0)
    widen = np.maximum(MIN_EXTENT_MM - (hi - lo), 0.0) / 2
    lo, hi = lo - widen, hi + widen
    shape = tuple(int(n) for n in shape)
    return Grid(origin=lo @ GRID_DIRECTIONS, spacing=(hi - lo) / voxel_extent(shape), shape=shape)


def _slice_maps(geometry: SeriesGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per canonical slice k: (unit normal [D, 3] pointing along depth, its offset [D] (p @ normal - offset =
    signed distance of p beyond the slice plane), and the affine `matrix [D, 3, 3]`, `shift [D, 3]` taking a
    patient point to the canonical coordinates of its orthogonal projection onto the slice (depth = k))."""
    step_row, step_col, origin = np.moveaxis(geometry.pixel_to_world, 2, 0)  # each [D, 3]
    normals = np.cross(step_col, step_row)
    normals *= np.sign(normals @ geometry.depth_direction)[:, None] / np.linalg.norm(normals, axis=1)[:, None]
    # stored pixel (row, col) of the projection: ((p - origin) . step) / |step|^2 per in-plane axis
    to_pixel = np.stack([step_row / np.einsum("kd,kd->k", step_row, step_row)[:, None],
                         step_col / np.einsum("kd,kd->k", step_col, step_col)[:, None]], axis=1)  # [D, 2, 3]
    affines = geometry.slice_affines  # stored (row, col, 1) -> canonical (depth, row, col)
    matrix = affines[:, :, :2] @ to_pixel  # [D, 3, 3]
    shift = affines[:, :, 2] - np.einsum("kij,kj->ki", matrix, origin)
    return normals, np.einsum("kd,kd->k", normals, origin), matrix, shift


def world_to_canonical(geometry: SeriesGeometry, points: np.ndarray) -> np.ndarray:
    """Continuous canonical (depth, row, col) coordinates [P, 3] of patient points [P, 3] (mm): the vectorised
    `SeriesGeometry.world_to_canonical` (same interpolation between the projections onto the two neighbouring
    slice planes, extrapolated beyond the first / last slice; a single slice uses the depth spacing)."""
    points = np.asarray(points, np.float64)
    normals, offsets, matrix, shift = _slice_maps(geometry)
    n_slices = len(normals)
    out = np.empty_like(points)
    if n_slices == 1:
        out[:] = points @ matrix[0].T + shift[0]
        out[:, 0] += (points @ normals[0] - offsets[0]) / geometry.spacing[0]
        return out
    parallel = np.allclose(normals, normals[0], rtol=0.0, atol=1e-9)
    same_plane_map = np.allclose(matrix, matrix[0], rtol=0.0, atol=1e-9)
    for start in range(0, len(points), _CHUNK):
        p = points[start:start + _CHUNK]
        if parallel:  # one normal: the slices' planes are ordered by their offsets (the usual stack)
            along = p @ normals[0]
            k0 = np.clip(np.searchsorted(offsets, along, side="right") - 1, 0, n_slices - 2)
            d0, d1 = along - offsets[k0], along - offsets[k0 + 1]
        else:  # tilted sub-stacks: signed distance to every plane, as SeriesGeometry.world_to_canonical
            distances = p @ normals.T - offsets  # [P, D]: > 0 beyond slice k in the depth direction
            k0 = np.clip(np.count_nonzero(distances >= 0, axis=1) - 1, 0, n_slices - 2)
            rows = np.arange(len(p))
            d0, d1 = distances[rows, k0], distances[rows, k0 + 1]
        gap = d0 - d1
        t = np.divide(d0, gap, out=np.zeros_like(d0), where=gap != 0)[:, None]
        if same_plane_map:  # every slice maps its plane alike: only the shifts differ
            out[start:start + _CHUNK] = p @ matrix[0].T + (1.0 - t) * shift[k0] + t * shift[k0 + 1]
            continue
        index = np.empty_like(p)
        order = np.argsort(k0, kind="stable")
        bounds = np.searchsorted(k0[order], np.arange(n_slices))  # points of slab k: order[bounds[k]:bounds[k+1]]
        for k in np.unique(k0):
            sel = order[bounds[k]:bounds[k + 1]]
            q, w = p[sel], t[sel]
            index[sel] = (1.0 - w) * (q @ matrix[k].T + shift[k]) + w * (q @ matrix[k + 1].T + shift[k + 1])
        out[start:start + _CHUNK] = index
    return out


def sample_trilinear(volume: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear interpolation of `volume` [D, H, W] at continuous voxel coordinates `index` [P, 3] ->
    (values float32 [P], inside bool [P]). A point within half a voxel beyond the outer voxel centres takes
    the edge value; farther out it is outside (value 0)."""
    shape = np.asarray(volume.shape)
    inside = np.all((index >= -0.5) & (index <= shape - 0.5), axis=1)
    values = ndimage.map_coordinates(np.asarray(volume, np.float32), index.T, order=1, mode="nearest")
    return np.where(inside, values, 0.0).astype(np.float32), inside


def resample_series(volume: np.ndarray, geometry: SeriesGeometry, grid: Grid,
                    points: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One series' canonical float volume (from `dicom.read_series`) sampled at every grid voxel ->
    (values float32 `grid.shape`, inside bool `grid.shape`). `points`: `grid.points()`, if already computed."""
    points = grid.points() if points is None else points
    values, inside = sample_trilinear(np.asarray(volume, np.float32), world_to_canonical(geometry, points))
    return values.reshape(grid.shape), inside.reshape(grid.shape)


def normalize_inside(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """uint8 volume: `values` clipped to the CLIP_PERCENTILES of its inside voxels and scaled to [0, 255];
    outside voxels 0 (also everything when nothing is inside or the inside is constant)."""
    out = np.zeros(values.shape, np.uint8)
    if not inside.any():
        return out
    lo, hi = np.percentile(values[inside], CLIP_PERCENTILES)
    if not hi > lo:
        return out
    scaled = np.rint(np.clip((values - np.float32(lo)) * np.float32(255.0 / (hi - lo)), 0.0, 255.0))
    out[inside] = scaled[inside].astype(np.uint8)
    return out


def grid_volumes(volumes: Sequence[np.ndarray | None], geometries: Sequence[SeriesGeometry | None],
                 shape: Sequence[int]) -> tuple[np.ndarray, Grid | None]:
    """Per series type (None = absent) canonical float volume and geometry -> (uint8 [S, *shape] volumes in
    one shared grid, zeros where absent; the grid, None when no series is present)."""
    shape = tuple(int(n) for n in shape)
    out = np.zeros((len(volumes), *shape), np.uint8)
    grid = study_grid(geometries, shape)
    points = grid.points() if grid is not None else None
    for s, (volume, geometry) in enumerate(zip(volumes, geometries)):
        if volume is not None and geometry is not None:
            out[s] = normalize_inside(*resample_series(volume, geometry, grid, points))
    return out, grid


def pixel_world(geometry: SeriesGeometry, instance_number: int, row: float, col: float) -> np.ndarray:
    """Patient coordinates [3] (mm) of pixel (row = y, col = x) of the stored image of `instance_number`
    (an instance in the volume or one read but left out of it); KeyError as `SeriesGeometry.canonical_index`."""
    n = int(instance_number)
    pixel = np.array([row, col, 1.0], np.float64)
    matches = np.flatnonzero(geometry.instance_numbers == n)
    if len(matches) == 1:
        return geometry.pixel_to_world[matches[0]] @ pixel
    if len(matches) > 1:
        raise KeyError(f"instance number {n} is shared by {len(matches)} slices (a multi-frame file?)")
    if n in geometry.other_pixel_to_world:
        return geometry.other_pixel_to_world[n] @ pixel
    raise KeyError(f"instance number {n} is not in this series")
