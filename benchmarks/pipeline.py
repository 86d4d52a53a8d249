"""Section `pipeline`: the grain training pipelines over built datasets: r64 volumes, and stage 2's crops.

`lumbar_jax.data.pipeline.train_batches(source, all indices, Stream(batch_size, seed=0), augment)` over a built
r64 dataset with every augmentation on (the default `augment` section plus the GPU variants' spatial jitter: flip,
zoom/shift, intensity), read (`pipeline.iterate`) in-process (`worker_count=0`) and with 2 grain worker
processes. After warm-up batches (for workers: the first batch also pays their start-up, reported separately),
each timed repetition draws `batches_per_repeat` batches; rate = records / s (each record holds 3 volumes).
Peer: the rate at which the one-stage model's train step consumes records (the models section's
`benchmarks.models.train_step_consumption(ctx, 'fused')`); the ratio is pipeline / train step. The notes give
the same ratio against the two-stage default's localiser step, which reads these batches in that pipeline.
Target: >= 10x, so that on a machine whose cores the step also uses, reading and augmenting costs the step at
most ~10 % of its time.

Row `pipeline.crop_pipeline`: stage 2's input pipeline end to end, `lumbar_jax.data.crop_pipeline.train_batches`
over a built r64_native dataset (`crop_studies`: the same 24 studies; smoke: 4, one batch), in-process, its
records read through the default's record cache (`data.record_cache_mb`: each decoded once before the timing,
as a training job decodes each once and then reads it ~15 times), with the two-stage default's crop settings,
batch size and intensity jitter (`benchmarks.models.two_stage_config`:
`configs/vit_effnet.py`, `:smoke` in smoke) and a fixed placement jitter (CROP_JITTER, the scale of the
localiser's error): reading records, cutting every target's crop (at the annotated point, else at the centre
of the series, as the localiser's point stands in for it in training), jittering, batching; studies/s. Peer:
the crop classifier's train step (`train_step_consumption(ctx, 'crop_classifier')`), target >= 10x (issue 15).
The note gives the rate of the crop cutting alone (`crops.study_crops` on the records held in memory, one
thread): the rest of the pipeline's time is jittering, batching and grain's own work.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import common

FULL = dict(config="r64", studies=24, batch_size=4, warmup_batches=5, batches_per_repeat=20, repeats=5, workers=2,
            crop_studies=24, crop_warmup_batches=2, crop_batches_per_repeat=10)
SMOKE = dict(config="r64", studies=2, batch_size=2, warmup_batches=1, batches_per_repeat=2, repeats=2, workers=2,
             crop_studies=4, crop_warmup_batches=1, crop_batches_per_repeat=1)  # crop_studies >= its batch
CROP_CONFIG = "r64_native"
CROP_JITTER = ((1.0, 3.0, 3.0),) * 3  # std per condition group (slices, mm, mm)
CONSUMER_TARGET = 10.0
VOLUMES_PER_RECORD = 3


def consumer_rate(ctx: common.Context, model: str) -> dict[str, Any]:
    """A peer: studies/s the train step of `model` consumes (`benchmarks.models.TRAIN_STEPS`)."""
    from benchmarks import models

    return models.train_step_consumption(ctx, model)


def _timed_iterator(it, *, batch_size: int, warmup_batches: int, batches: int, repeats: int
                    ) -> tuple[common.Timing, float]:
    """(timing of `batches` batches per repetition, seconds to the first batch)."""
    start = time.perf_counter()
    first = next(it)
    first_batch_s = time.perf_counter() - start
    del first  # grain shared-memory batches are released as soon as they are dropped
    for _ in range(warmup_batches - 1):
        next(it)

    def draw():
        for _ in range(batches):
            next(it)

    timing = common.measure(draw, items=batches * batch_size, repeats=repeats, warmup=0)
    timing.warmup = warmup_batches
    return timing, first_batch_s


def crop_pipeline(ctx: common.Context, p: dict) -> tuple[common.Timing, common.Timing, dict[str, Any]]:
    """(timing of the stage-2 crop pipeline, of the crop cutting alone, its settings): studies/s."""
    import dataclasses

    import numpy as np

    from lumbar_jax import labels
    from lumbar_jax.data import crop_pipeline as crop_pipeline_lib
    from lumbar_jax.data import crops, pipeline, record_cache
    from lumbar_jax.data.dataset import load_split

    from benchmarks import models

    config = models.two_stage_config(ctx.smoke)
    source = record_cache.cached(load_split(ctx.built(CROP_CONFIG, p["crop_studies"]), CROP_CONFIG, "train"),
                                 config.data.record_cache_mb)
    for i in range(len(source)):  # decoded once, as a job's first epoch does
        source[i]
    crop = crops.CropSpec.from_config(config.crops)
    centres = np.full((len(source), labels.NUM_TARGETS, 3), 0.5)  # where targets without a point are cut
    batch_size, a = config.train.batch_size, config.augment
    augment = crop_pipeline_lib.CropAugment.from_config(a, CROP_JITTER)
    batches = crop_pipeline_lib.train_batches(source, np.arange(len(source)), pipeline.Stream(batch_size, seed=0),
                                              crop, augment=augment, fallback_points=centres)
    it = pipeline.iterate(batches)
    try:
        timing, _ = _timed_iterator(it, batch_size=batch_size, warmup_batches=p["crop_warmup_batches"],
                                    batches=p["crop_batches_per_repeat"], repeats=p["repeats"])
    finally:
        getattr(it, "close", lambda: None)()
    records = [source[i] for i in range(len(source))]
    rng = np.random.default_rng(0)

    def cut_all():
        for i, record in enumerate(records):
            crops.study_crops(record, crops.training_points(record, centres[i]), crop,
                              jitter=np.asarray(CROP_JITTER), rng=rng)

    cutting = common.measure(cut_all, items=len(records), repeats=p["repeats"])
    return timing, cutting, {**dataclasses.asdict(crop), "batch_size": batch_size, "jitter": CROP_JITTER,
                             "intensity_scale": list(a.intensity_scale), "intensity_shift": a.intensity_shift}


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
        batches = pipeline.train_batches(source, indices, pipeline.Stream(p["batch_size"], seed=0), augment)
        return pipeline.iterate(batches, pipeline.Reading(worker_count=workers))

    timing = dict(batch_size=p["batch_size"], warmup_batches=p["warmup_batches"], batches=p["batches_per_repeat"],
                  repeats=p["repeats"])
    it = iterator(0)
    try:
        in_process, first_in_process = _timed_iterator(it, **timing)
    finally:  # stop its reader threads before the workers are measured
        getattr(it, "close", lambda: None)()
        del it
    it = iterator(p["workers"])
    try:
        with_workers, first_workers = _timed_iterator(it, **timing)
    finally:
        it.close()

    crop_timing, cutting, crop_settings = crop_pipeline(ctx, p)
    peer, localiser, crop_step = (consumer_rate(ctx, m) for m in ("fused", "localiser", "crop_classifier"))
    shape_text = "x".join(map(str, volume_shape))
    w = p["workers"]

    def note(t: common.Timing) -> str:
        return (f"{VOLUMES_PER_RECORD * t.rate_median:.0f} volumes/s ({VOLUMES_PER_RECORD} x {shape_text} per "
                f"record); {t.rate_median / localiser['median']:.1f}x the two-stage localiser's train step "
                f"({localiser['model']}: {localiser['median']:.3g} studies/s)")

    k, px = crop_settings["slices"], crop_settings["pixels"]
    rows = [
        common.row("pipeline.in_process", f"train pipeline {p['config']}, in-process, batch {p['batch_size']}",
                   "records/s", in_process, peer, ratio_of="pipeline / train step",
                   peer_label=f"{peer['model']} train step", target=CONSUMER_TARGET, note=note(in_process)),
        common.row("pipeline.workers", f"train pipeline {p['config']}, {w} grain workers, batch {p['batch_size']}",
                   "records/s", with_workers, peer, ratio_of="pipeline / train step",
                   peer_label=f"{peer['model']} train step", target=CONSUMER_TARGET, note=note(with_workers)),
        common.row("pipeline.worker_scaling", f"train pipeline scaling, {w} workers vs in-process", "records/s",
                   with_workers, in_process, ratio_of=f"{w} workers / in-process", peer_label="in-process"),
        common.row("pipeline.crop_pipeline", f"stage-2 crop pipeline {CROP_CONFIG}, in-process, batch "
                   f"{crop_settings['batch_size']} of 25 crops {k}x{px}x{px} ({crop_settings['size_mm']:g} mm), "
                   "placement and intensity jitter", "studies/s", crop_timing, crop_step,
                   ratio_of="crop pipeline / crop classifier train step",
                   peer_label=f"{crop_step['model']} crop classifier train step", target=CONSUMER_TARGET,
                   note=f"{25 * crop_timing.rate_median:.0f} crops/s; crop cutting alone (records in memory, 1 "
                        f"thread): {cutting.rate_median:.0f} studies/s"),
    ]
    return {
        "params": p,
        "rows": rows,
        "volume_shape": list(volume_shape),
        "crop_pipeline": {"settings": crop_settings, "cutting_alone": cutting.to_json()},
        "records": len(source),
        "first_batch_s": {"in_process": first_in_process, f"{w}_workers": first_workers},
        "volumes_per_s": {"in_process": VOLUMES_PER_RECORD * in_process.rate_median,
                          f"{w}_workers": VOLUMES_PER_RECORD * with_workers.rate_median},
        "peer_name": "train step (models section)",
        "extra_md": {"time to first batch": f"in-process {first_in_process:.2f} s, {w} workers "
                                            f"{first_workers:.2f} s (worker start-up)"},
    }
