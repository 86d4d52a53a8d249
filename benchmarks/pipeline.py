"""Section `pipeline`: the grain training pipeline over a built r64 dataset, default augmentation.

`lumbar_jax.data.pipeline.train_dataset(source, all indices, batch_size, seed=0)` with every augmentation on
(the default `augment` section plus the GPU variants' spatial jitter: flip, zoom/shift, intensity), read
in-process (`worker_count=0`) and with 2 grain worker processes. After warm-up batches (for workers: the first batch also pays their start-up, reported separately),
each timed repetition draws `batches_per_repeat` batches; rate = records / s (each record holds 3 volumes).

Peer: the rate at which the lumbar_jax train step of the default config consumes records (the models
section's `benchmarks.models.train_step_consumption`, see `consumer_rate`); the ratio is pipeline / train step.
Target: >= 10x, so that on a machine whose cores the step also uses, reading and augmenting costs
the step at most ~10 % of its time.

Row `pipeline.crop_cutting`: stage 2's crop cutting alone (`lumbar_jax.data.crops.study_crops`, the 25 crops of
a study with the training jitter, numpy in this one thread) at the CPU default crop settings (K=5 slices x 40 mm
sampled to 32 x 32 px) on synthetic native volumes of the embedded set's size (`CROP_NATIVE`); studies/s. Peer:
the in-process r64 pipeline rate of this run. The target it will be held to, >= 10x the stage-2 train step's
consumption, needs that step's rate (not measured yet); the P=64 rate is in the note.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import common

FULL = dict(config="r64", studies=24, batch_size=4, warmup_batches=5, batches_per_repeat=20, repeats=5, workers=2,
            crop_studies=20)
SMOKE = dict(config="r64", studies=2, batch_size=2, warmup_batches=1, batches_per_repeat=2, repeats=2, workers=2,
             crop_studies=2)
CROP = dict(slices=5, size_mm=40.0, pixels=32)  # the CPU default crop settings
# Native series of the embedded set: 15 sagittal slices ~4 mm apart and ~30 axial ones, 64-96 px at ~0.9 mm.
CROP_NATIVE = {"sagittal_t1": ((15, 80, 80), (4.0, 0.9, 0.9)), "sagittal_t2": ((15, 80, 80), (4.0, 0.9, 0.9)),
               "axial_t2": ((30, 80, 80), (3.0, 0.9, 0.9))}
CROP_JITTER = ((1.0, 3.0, 3.0),) * 3  # std per condition group (slices, mm, mm)
CONSUMER_TARGET = 10.0
VOLUMES_PER_RECORD = 3


def consumer_rate(ctx: common.Context, volume_shape: tuple[int, int, int], batch_size: int) -> dict[str, Any]:
    """The pipeline's peer: records/s the train step consumes (models section hook), or a status cell."""
    from benchmarks import models

    measured = models.train_step_consumption(ctx, volume_shape=volume_shape, batch_size=batch_size)
    if measured is None:
        return common.status("pending: train-step consumption rate (models section)")
    return measured


def _native_records(num_studies: int) -> list[dict[str, Any]]:
    """Synthetic `*_native` records (random volumes of CROP_NATIVE, every target annotated on its series)."""
    import numpy as np

    from lumbar_jax import labels as L
    from lumbar_jax.data.crops import TARGET_SERIES
    from lumbar_jax.data.dicom_geometry import CANONICAL_DIRECTIONS

    rng = np.random.default_rng(0)
    affines = np.zeros((len(L.SERIES_TYPES), 4, 4), np.float32)
    for s, (name, (_, spacing)) in enumerate(CROP_NATIVE.items()):
        affines[s, :3, :3] = CANONICAL_DIRECTIONS[name.split("_")[0]].T * np.asarray(spacing)
        affines[s, 3, 3] = 1.0
    return [{
        **{f"{name}_native": rng.integers(0, 256, shape, dtype=np.uint8) for name, (shape, _) in CROP_NATIVE.items()},
        "native_affine": affines, "present": np.ones(len(L.SERIES_TYPES), bool),
        "coords": rng.uniform(0.2, 0.8, (L.NUM_TARGETS, 3)).astype(np.float32), "coords_series": TARGET_SERIES,
    } for _ in range(num_studies)]


def crop_cutting(p: dict) -> dict[int, common.Timing]:
    """Per crop side P (32, the row, and 64, the note): studies/s of `study_crops` with training jitter."""
    import numpy as np

    from lumbar_jax.data import crops

    records = _native_records(p["crop_studies"])
    rng = np.random.default_rng(0)

    def cut_all(pixels: int):
        def run():
            for record in records:
                crops.study_crops(record, crops.training_points(record), **{**CROP, "pixels": pixels},
                                  jitter=np.asarray(CROP_JITTER), rng=rng)
        return run

    return common.measure_interleaved({32: cut_all(32), 64: cut_all(64)}, items={32: len(records), 64: len(records)},
                                      repeats=p["repeats"])


def _timed_iterator(it, p: dict) -> tuple[common.Timing, float]:
    """(timing of `batches_per_repeat` batches per repetition, seconds to the first batch)."""
    start = time.perf_counter()
    first = next(it)
    first_batch_s = time.perf_counter() - start
    del first  # grain shared-memory batches are released as soon as they are dropped
    for _ in range(p["warmup_batches"] - 1):
        next(it)

    def draw():
        for _ in range(p["batches_per_repeat"]):
            next(it)

    timing = common.measure(draw, items=p["batches_per_repeat"] * p["batch_size"], repeats=p["repeats"], warmup=0)
    timing.warmup = p["warmup_batches"]
    return timing, first_batch_s


def run(ctx: common.Context) -> dict[str, Any]:
    import numpy as np

    from lumbar_jax.data import pipeline
    from lumbar_jax.data.dataset import load_split
    from lumbar_jax.train import config as config_lib

    p = SMOKE if ctx.smoke else FULL
    source = load_split(ctx.built(p["config"], p["studies"]), p["config"], "train")
    volume_shape = tuple(int(s) for s in np.asarray(source[0]["sagittal_t1"]).shape)
    indices = np.arange(len(source))
    augment = config_lib.default_config().augment
    augment.update(config_lib.SPATIAL_JITTER)

    def iterator(workers: int):
        return pipeline.train_dataset(source, indices, batch_size=p["batch_size"], seed=0, worker_count=workers,
                                      augment_config=augment)

    it = iterator(0)
    try:
        in_process, first_in_process = _timed_iterator(it, p)
    finally:  # stop its reader threads before the workers are measured
        getattr(it, "close", lambda: None)()
        del it
    it = iterator(p["workers"])
    try:
        with_workers, first_workers = _timed_iterator(it, p)
    finally:
        it.close()

    cropping = crop_cutting(p)
    peer = consumer_rate(ctx, volume_shape, p["batch_size"])
    shape_text = "x".join(map(str, volume_shape))
    w = p["workers"]

    def note(t: common.Timing) -> str:
        return f"{VOLUMES_PER_RECORD * t.rate_median:.0f} volumes/s ({VOLUMES_PER_RECORD} x {shape_text} per record)"

    rows = [
        common.row("pipeline.in_process", f"train pipeline {p['config']}, in-process, batch {p['batch_size']}",
                   "records/s", in_process, peer, ratio_of="pipeline / train step", peer_label="train step",
                   target=CONSUMER_TARGET, note=note(in_process)),
        common.row("pipeline.workers", f"train pipeline {p['config']}, {w} grain workers, batch {p['batch_size']}",
                   "records/s", with_workers, peer, ratio_of="pipeline / train step", peer_label="train step",
                   target=CONSUMER_TARGET, note=note(with_workers)),
        common.row("pipeline.worker_scaling", f"train pipeline scaling, {w} workers vs in-process", "records/s",
                   with_workers, in_process, ratio_of=f"{w} workers / in-process", peer_label="in-process"),
        common.row("pipeline.crop_cutting", f"crop cutting (stage 2), 25 crops of {CROP['slices']}x{CROP['pixels']}"
                   f"x{CROP['pixels']} px, {CROP['size_mm']:g} mm, 1 thread", "studies/s", cropping[32], in_process,
                   ratio_of=f"crop cutting / {p['config']} pipeline", peer_label=f"{p['config']} pipeline in-process",
                   target_text=">= 10x the stage-2 train step (pending: its rate)",
                   note=f"{25 * cropping[32].rate_median:.0f} crops/s; at 64 x 64 px "
                        f"{cropping[64].rate_median:.0f} studies/s ({25 * cropping[64].rate_median:.0f} crops/s)"),
    ]
    return {
        "params": p,
        "rows": rows,
        "volume_shape": list(volume_shape),
        "crop_cutting": {"settings": CROP, "native": CROP_NATIVE, "jitter": CROP_JITTER,
                         "studies_per_s": {f"P{k}": t.rate_median for k, t in cropping.items()}},
        "records": len(source),
        "first_batch_s": {"in_process": first_in_process, f"{w}_workers": first_workers},
        "volumes_per_s": {"in_process": VOLUMES_PER_RECORD * in_process.rate_median,
                          f"{w}_workers": VOLUMES_PER_RECORD * with_workers.rate_median},
        "peer_name": "train step (models section)",
        "extra_md": {"time to first batch": f"in-process {first_in_process:.2f} s, {w} workers "
                                            f"{first_workers:.2f} s (worker start-up)"},
    }
