"""Section `data`: DICOM study -> canonical volumes, against MONAI; and the dataset build command's scaling.

1. Study loading, one process each, same files: synthetic Kaggle-layout studies (`write_synthetic_dataset(...,
   DatasetSpec(..., quirks=False))`), 3 series per study.
   - lumbar_jax: `lumbar_jax.data.study.load_study_volumes(entry.series_dirs, shape)` -- series choice, DICOM
     parsing, slice sorting along the normal, reorientation to the canonical layout, linear resampling to
     `shape` and percentile normalisation to uint8.
   - MONAI (per series directory): `LoadImage(reader="PydicomReader")` (a directory is read as one series:
     every file `pydicom.dcmread`, stacked in InstanceNumber order) + `EnsureChannelFirst()` +
     `Orientation(axcodes=...)` + `Resize(shape, mode="trilinear", align_corners=True)`. The axis codes are
     the lumbar_jax canonical layouts in MONAI's (RAS-named) terms: sagittal "LIP" (depth -> patient left,
     rows -> inferior, cols -> posterior), axial "IPL". Trilinear with corner alignment is the interpolation
     lumbar_jax uses (MONAI's default `area` would be a different operation).
   - A second peer row adds `ScaleIntensityRangePercentiles(0.5, 99.5, 0, 255, clip=True)` + `CastToType(uint8)`,
     so that MONAI produces the same uint8 record volume as lumbar_jax (equal work). The headline ratio (and
     its >= 2x target) is against the cheaper peer without it.
   - Agreement check (untimed): both outputs of the first studies, normalised alike, are compared (Pearson
     correlation and mean |difference| in uint8 levels), so a wrong axis code cannot go unnoticed.
   - Kaggle-like slices: the default synthetic slices are small (64-96 px) to keep tests fast, the real ones
     are 320-512 px. A third row times the same pair of pipelines (interleaved, same shape, same LOAD_TARGET)
     on other studies written with `matrix_scale=5` (320-480 px slices, ~25x the pixels; same seed, so the
     same anatomy and series), where pixel decoding, conversion and resampling weigh more against the
     per-file parsing. Its agreement with the peer is checked on its first study.
2. Build: `lumbar_jax.data.build.build_dataset(manual_dir, fresh_data_dir, "r64", workers=W)` end to end, for
   W = 1 and 2, at N studies and at a small n0, interleaved. End-to-end rate N / t(N) (what a user waits for,
   including the worker pool's start-up) and steady-state rate (N - n0) / (t(N) - t(n0)) (fixed costs
   cancelled: what a large build approaches); scaling = 2-worker rate / 1-worker rate. Measured first, the
   machine's parallel capacity right now (`common.parallel_capacity`: 2 busy processes vs 1): on a shared
   machine a scaling figure means something only next to it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from typing import Any

import numpy as np

from benchmarks import common

FULL = dict(load_studies=12, volume_shape=(32, 128, 128), load_repeats=7, load_warmup=1, agreement_studies=3,
            equal_work_studies=4, equal_work_repeats=3, kaggle_studies=6, kaggle_matrix_scale=5,
            build_config="r64", build_studies=24, build_base_studies=2, build_repeats=3,
            capacity_repeats=5, capacity_work=2_000_000)
SMOKE = dict(load_studies=2, volume_shape=(8, 32, 32), load_repeats=2, load_warmup=1, agreement_studies=1,
             equal_work_studies=1, equal_work_repeats=1, kaggle_studies=1, kaggle_matrix_scale=2,
             build_config="r64", build_studies=2, build_base_studies=1, build_repeats=1,
             capacity_repeats=1, capacity_work=50_000)
LOAD_TARGET = 2.0  # lumbar_jax studies/s >= 2x MONAI's
SCALING_TARGET = 1.6  # 2 workers >= 1.6x 1 worker (80 % of the second core) in the steady state
AXCODES = {"sagittal": "LIP", "axial": "IPL"}  # canonical layouts of docs/conventions.md section 3 in MONAI's codes


def _entries(root: str, num_studies: int):
    from lumbar_jax.data import study

    return study.list_studies(root, "train")[:num_studies]


def _chosen_series(entries) -> list[tuple[str, str]]:
    """(plane, series dir) of every series lumbar_jax uses, in study order (what the peer reads)."""
    from lumbar_jax import labels
    from lumbar_jax.data import study

    out = []
    for entry in entries:
        for kind, series_type in enumerate(labels.SERIES_TYPES):
            chosen = study.choose_series(entry.series_dirs[kind])
            if chosen is not None:
                out.append((study.PLANE_OF_SERIES[series_type], chosen[1]))
    return out


def monai_transforms(shape: tuple[int, int, int], normalise: bool) -> dict[str, Any]:
    """Per plane, the MONAI pipeline of this benchmark (see the module docstring)."""
    from monai.transforms import (CastToType, Compose, EnsureChannelFirst, LoadImage, Orientation, Resize,
                                  ScaleIntensityRangePercentiles)

    def pipeline(axcodes: str):
        ops = [LoadImage(reader="PydicomReader", image_only=True), EnsureChannelFirst(),
               Orientation(axcodes=axcodes), Resize(shape, mode="trilinear", align_corners=True)]
        if normalise:
            ops += [ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=255.0, clip=True),
                    CastToType(dtype=np.uint8)]
        return Compose(ops)

    return {plane: pipeline(axcodes) for plane, axcodes in AXCODES.items()}


def _agreement(entries, shape, transforms) -> dict[str, Any]:
    """Correlation / mean |diff| between lumbar_jax's uint8 volumes and MONAI's (normalised the same way)."""
    from lumbar_jax import labels
    from lumbar_jax.data import study, volume

    correlations, mean_abs = [], []
    for entry in entries:
        ours, present, _, _ = study.load_study_volumes(entry.series_dirs, shape)
        for kind, series_type in enumerate(labels.SERIES_TYPES):
            chosen = study.choose_series(entry.series_dirs[kind])
            if chosen is None or not present[kind]:
                continue
            theirs = np.asarray(transforms[study.PLANE_OF_SERIES[series_type]](chosen[1]))[0]
            a = ours[kind].astype(np.float64).ravel()
            b = volume.normalize_uint8(theirs).astype(np.float64).ravel()
            correlations.append(float(np.corrcoef(a, b)[0, 1]))
            mean_abs.append(float(np.abs(a - b).mean()))
    return {"series_compared": len(correlations), "min_correlation": min(correlations),
            "max_mean_abs_diff_uint8": max(mean_abs)}


def _load_timings(ctx: common.Context, entries, shape: tuple[int, int, int], p: dict) -> dict[str, Any]:
    """{"lumbar_jax": Timing, "monai": Timing or a status}: `load_study_volumes` over `entries` against the
    peer's plain pipeline over the same series, interleaved (lumbar_jax alone without the peer)."""
    from lumbar_jax.data import study

    n = len(entries)

    def ours():
        for entry in entries:
            study.load_study_volumes(entry.series_dirs, shape)

    if not ctx.peer["available"]:
        return {"lumbar_jax": common.measure(ours, items=n, repeats=p["load_repeats"], warmup=p["load_warmup"]),
                "monai": common.status(ctx.peer["reason"] or "not measured")}
    series = _chosen_series(entries)
    plain = monai_transforms(shape, normalise=False)
    return common.measure_interleaved(
        {"lumbar_jax": ours, "monai": lambda: [plain[plane](d) for plane, d in series]},
        items={"lumbar_jax": n, "monai": n}, repeats=p["load_repeats"], warmup=p["load_warmup"])


def _slice_sizes(ctx: common.Context, num_studies: int, matrix_scale: int) -> tuple[int, int]:
    """(smallest, largest) Rows of the slices of the synthetic studies `ctx.synthetic(num_studies, matrix_scale)`
    (from the generator's plan: no file is read)."""
    from lumbar_jax.data.synthetic import make_study

    spec = ctx.synthetic_spec(num_studies, matrix_scale)
    rows = [int(r) for i in range(num_studies) for s in make_study(spec, i).series for r in s.shape[:, 0]]
    return min(rows), max(rows)


def _load_rows(ctx: common.Context, p: dict) -> tuple[list[dict], dict]:
    from lumbar_jax.data import study

    shape = tuple(p["volume_shape"])
    entries = _entries(ctx.synthetic(max(p["load_studies"], p["build_studies"])), p["load_studies"])
    n = len(entries)

    extra: dict[str, Any] = {"studies": n, "volume_shape": list(shape), "series": len(_chosen_series(entries))}
    missing = common.status(ctx.peer["reason"] or "not measured")
    equal = {"monai_uint8": missing, "lumbar_jax": None}
    n_equal = min(p["equal_work_studies"], n)
    timings = _load_timings(ctx, entries, shape, p)
    if ctx.peer["available"]:
        plain = monai_transforms(shape, normalise=False)
        # Equal work (MONAI also normalises to uint8): a separate, smaller measurement, because MONAI's
        # percentile on a tensor (torch.quantile, a full sort) makes each repetition several times longer.
        subset, subset_series = entries[:n_equal], _chosen_series(entries[:n_equal])
        normalised = monai_transforms(shape, normalise=True)
        equal = common.measure_interleaved(
            {"lumbar_jax": lambda: [study.load_study_volumes(e.series_dirs, shape) for e in subset],
             "monai_uint8": lambda: [normalised[plane](d) for plane, d in subset_series]},
            items={"lumbar_jax": n_equal, "monai_uint8": n_equal}, repeats=p["equal_work_repeats"],
            warmup=p["load_warmup"])
        extra["agreement"] = _agreement(entries[: p["agreement_studies"]], shape, plain)
    else:
        equal["lumbar_jax"] = timings["lumbar_jax"]

    # Kaggle-like slice sizes: other studies, same measurement.
    n_big, scale = p["kaggle_studies"], p["kaggle_matrix_scale"]
    big_entries = _entries(ctx.synthetic(n_big, matrix_scale=scale), n_big)
    big_timings = _load_timings(ctx, big_entries, shape, p)
    px = _slice_sizes(ctx, n_big, scale)
    extra["kaggle"] = {"studies": len(big_entries), "matrix_scale": scale, "slice_px": list(px),
                       "series": len(_chosen_series(big_entries))}
    if ctx.peer["available"]:
        extra["kaggle"]["agreement"] = _agreement(big_entries[:1], shape, monai_transforms(shape, normalise=False))
    shape_text = "x".join(map(str, shape))
    rows = [
        common.row("data.load_study", f"DICOM study -> 3 canonical volumes {shape_text} ({n} studies)",
                   "studies/s", timings["lumbar_jax"], timings["monai"], target=LOAD_TARGET,
                   note="peer: LoadImage(PydicomReader) + EnsureChannelFirst + Orientation + Resize(trilinear), "
                        "float32 out; lumbar_jax also normalises to uint8"),
        common.row("data.load_study_uint8",
                   f"same, peer also normalised to uint8 ({n_equal if ctx.peer['available'] else n} studies)",
                   "studies/s", equal["lumbar_jax"], equal["monai_uint8"],
                   note="peer + ScaleIntensityRangePercentiles(0.5, 99.5) + CastToType(uint8): same output, "
                        "equal work; MONAI's percentile of a tensor is torch.quantile (a full sort)"),
        common.row("data.load_study_kaggle",
                   f"DICOM study -> 3 canonical volumes {shape_text}, Kaggle-like slices ({px[0]}-{px[1]} px, "
                   f"{len(big_entries)} studies)", "studies/s", big_timings["lumbar_jax"], big_timings["monai"],
                   target=LOAD_TARGET,
                   note=f"as data.load_study, on studies written with matrix_scale={scale} (real slices: 320-512 px)"),
    ]
    return rows, extra


def _build_rows(ctx: common.Context, p: dict) -> tuple[list[dict], dict]:
    from lumbar_jax.data.build import build_dataset

    config, n, n0 = p["build_config"], p["build_studies"], p["build_base_studies"]
    manual = {n: ctx.synthetic(n), n0: ctx.synthetic(n0)}
    made: list[str] = []

    def build(studies: int, workers: int):
        data_dir = tempfile.mkdtemp(prefix=f"build_{studies}_{workers}w_", dir=ctx.workdir)
        made.append(data_dir)
        build_dataset(manual[studies], data_dir, config, workers=workers)

    capacity = common.parallel_capacity(repeats=p["capacity_repeats"], work=p["capacity_work"])
    build(n0, 1)  # untimed warm-up: first-use costs of TFDS and the builder in this process
    fns = {(s, w): (lambda s=s, w=w: build(s, w)) for s in (n, n0) for w in (1, 2)}
    timings = common.measure_interleaved(fns, items={k: k[0] for k in fns}, repeats=p["build_repeats"], warmup=0)
    keep = next(d for d in made if os.path.basename(d).startswith(f"build_{n}_1w_"))
    ctx.remember_build(config, n, keep)  # the pipeline section reads this one
    for d in made:
        if d != keep:
            shutil.rmtree(d, ignore_errors=True)

    def steady(workers: int) -> dict[str, Any]:
        big, small = timings[(n, workers)], timings[(n0, workers)]
        d_med, d_min = big.median_s - small.median_s, big.min_s - small.min_s
        if n <= n0 or d_med <= 0 or d_min <= 0:
            return common.status("not resolvable (build times within noise)")
        return {"status": "measured", "median": (n - n0) / d_med, "best": (n - n0) / d_min,
                "method": f"({n} - {n0}) studies / (t({n}) - t({n0}))", "repeats": p["build_repeats"],
                "fixed_cost_s": big.median_s - n * d_med / (n - n0)}

    steady1, steady2 = steady(1), steady(2)
    no_peer = common.status("no peer (MONAI has no dataset build)")
    rows = [
        common.row("data.cpu_capacity", "machine: 2 busy processes vs 1 (context for the scaling rows)", "tasks/s",
                   capacity["two"], capacity["one"], ratio_of="2 processes / 1", peer_label="1 process",
                   note="fixed pure-Python task; ~2x on an idle 2-core machine, ~1x when other jobs hold a core"),
        common.row("data.build_1w", f"build {config}, {n} studies, 1 worker, end to end", "studies/s",
                   timings[(n, 1)], no_peer),
        common.row("data.build_2w", f"build {config}, {n} studies, 2 workers, end to end", "studies/s",
                   timings[(n, 2)], no_peer),
        common.row("data.build_scaling", f"build {config} scaling, end to end ({n} studies)", "studies/s",
                   timings[(n, 2)], timings[(n, 1)], ratio_of="2 workers / 1 worker", peer_label="1 worker",
                   note="includes the fixed costs (TFDS setup, spawning and importing the worker pool)"),
        common.row("data.build_scaling_steady", f"build {config} scaling, steady state", "studies/s", steady2,
                   steady1, ratio_of="2 workers / 1 worker", peer_label="1 worker", target=SCALING_TARGET,
                   note=f"marginal rate ({n} - {n0}) / (t({n}) - t({n0})): fixed costs cancelled"),
    ]
    extra = {"fixed_cost_s": {f"{w}_workers": s.get("fixed_cost_s") for w, s in ((1, steady1), (2, steady2))},
             "time_to_build_base_s": {f"{w}_workers": timings[(n0, w)].median_s for w in (1, 2)},
             "build_studies": n, "build_base_studies": n0}
    return rows, extra


def run(ctx: common.Context) -> dict[str, Any]:
    p = SMOKE if ctx.smoke else FULL
    with warnings.catch_warnings():
        # MONAI's import-time and deprecation chatter; lumbar_jax's own warnings are not silenced.
        warnings.filterwarnings("ignore", module=r"monai(\.|$)")
        warnings.filterwarnings("ignore", message=r".*nvImageCodec.*")
        load_rows, load_extra = _load_rows(ctx, p)
    build_rows, build_extra = _build_rows(ctx, p)
    extra_md = {}
    for label, where in (("", load_extra), (", Kaggle-like slices", load_extra["kaggle"])):
        if "agreement" in where:
            a = where["agreement"]
            extra_md[f"agreement with the peer{label} (untimed)"] = (
                f"{a['series_compared']} series, min correlation {a['min_correlation']:.3f}, max mean |diff| "
                f"{a['max_mean_abs_diff_uint8']:.1f} uint8 levels")
    for label, load, where in (("", load_rows[0], load_extra),
                               (", Kaggle-like slices", load_rows[2], load_extra["kaggle"])):
        if load["ratio"] is not None:
            ours_cpu, peer_cpu = load["lumbar_jax"]["cpu_median_s"], load["peer"]["cpu_median_s"]
            n = where["studies"]
            where["cpu_ratio"] = peer_cpu / ours_cpu
            extra_md[f"CPU time per study{label} (process time, all threads; little moved by other jobs)"] = (
                f"lumbar_jax {1e3 * ours_cpu / n:.0f} ms, peer {1e3 * peer_cpu / n:.0f} ms: "
                f"ratio {peer_cpu / ours_cpu:.2f}x (peer CPU / lumbar_jax CPU)")
    capacity = next(r for r in build_rows if r["id"] == "data.cpu_capacity")["ratio"]
    scaling = next(r for r in build_rows if r["id"] == "data.build_scaling_steady")["ratio"]
    if capacity and scaling:
        build_extra["scaling_vs_capacity"] = scaling / capacity
        extra_md["build steady-state scaling / machine capacity"] = (
            f"{scaling:.2f}x / {capacity:.2f}x = {scaling / capacity:.2f} (1.0: the build used every core the "
            "machine had free)")
    fixed = build_extra["fixed_cost_s"]
    if all(v is not None for v in fixed.values()):
        extra_md["build fixed cost (estimated)"] = ", ".join(f"{k.replace('_', ' ')}: {v:.2f} s"
                                                             for k, v in fixed.items())
    return {"params": p, "rows": load_rows + build_rows, "load": load_extra, "build": build_extra,
            "peer_name": ctx.peer["name"], "extra_md": extra_md}
