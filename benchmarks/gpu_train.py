"""Section `train` of `python -m benchmarks.gpu`: a short real training on the GPU, restored and evaluated.

The main job's own path: `lumbar_jax.cross_validation.cross_validate(config, workdir)` on `configs/vit_effnet_one_stage.py:r128`
(vit_s + effnet_b0, r128 volumes, batch 32, bfloat16 compute) with one fold (`config.fold = 0`) of the
embedded synthetic set (128 studies, generated and built as r128 under the scratch directory), 200 steps
(warm-up 20, evaluation and checkpoints every 100, the loss logged every 10, parameter EMA 0.99: the
variant's 0.999 averages over more steps than this run has) and grain workers for the augmentation. Then
`lumbar_jax.evaluate.evaluate_run(workdir, [0], "best")` restores the best checkpoint on the device and scores
fold 0's held-out studies again.

Checks, each reported as a pass/fail line: the training loss falls (mean of the first 3 logged values > mean
of the last 3), no loss is NaN (and training did not stop on one), the restored checkpoint evaluates to the
run's own score (|difference| <= 1e-4). Also reported: the first and last losses, the wall time, the run's
records/s (`train/studies_per_s` of its last log line: studies per second over that logging interval, without
compilation and evaluation time). Smoke: configs/vit.py:smoke on a tiny model, 8 studies, 6 steps: the loss-falls line
is informational there.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

STEPS = {"full": dict(steps=200, warmup_steps=20, eval_every=100, checkpoint_every=100, log_every=10, ema_decay=0.99),
         "smoke": dict(steps=6, warmup_steps=2, eval_every=3, checkpoint_every=6, log_every=1, batch_size=4,
                       eval_batch_size=4, ema_decay=0.0)}
STUDIES = {"full": 128, "smoke": 8}
SMOKE_MODEL = dict(vit_depth=1, head_hidden=32)
SCORE_TOLERANCE = 1e-4
EDGE = 3  # logged losses averaged at each end for "the loss falls"


def train_config(smoke: bool, cache_dir: str):
    """The config of the short run: the r128 variant (smoke: configs/vit.py:smoke), one fold, bfloat16."""
    from benchmarks.gpu_steps import load_config

    mode = "smoke" if smoke else "full"
    config = load_config("vit" if smoke else "vit_effnet_one_stage", "smoke" if smoke else "r128")
    config.fold = 0  # also cv.fold: one fold
    config.model.dtype = "bfloat16"
    config.train.update(STEPS[mode])
    config.data.update(cache_dir=cache_dir, synthetic_studies=STUDIES[mode],
                       worker_count=0 if smoke else min(8, (os.cpu_count() or 2) // 2))
    if smoke:
        config.model.update(SMOKE_MODEL)
    return config


def _metric_lines(workdir: str) -> list[dict]:
    """The lines of fold_0/metrics.jsonl (non-finite values are null there)."""
    from lumbar_jax import rundir

    path = os.path.join(rundir.fold_dir(workdir, 0), "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _score(value) -> str:
    return "none" if value is None else f"{value:.6f}"


def _checks(losses: list, stopped: str | None, run_score, restored, smoke: bool) -> list[dict]:
    finite = [x for x in losses if x is not None and math.isfinite(x)]
    edge = min(EDGE, len(finite) // 2) or 1
    first, last = (sum(finite[:edge]) / edge, sum(finite[-edge:]) / edge) if finite else (None, None)
    fell = first is not None and len(finite) >= 2 and last < first
    fell_detail = (f"mean of the first {edge} logged losses {first:.4f} -> last {edge} {last:.4f}" if finite
                   else "no loss logged") + (" (smoke: informational)" if smoke else "")
    no_nan = bool(losses) and len(finite) == len(losses) and stopped is None
    same = run_score is not None and restored is not None and abs(restored - run_score) <= SCORE_TOLERANCE
    return [
        {"name": "the loss falls", "passed": bool(fell), "enforced": not smoke, "detail": fell_detail},
        {"name": "no NaN", "passed": no_nan, "enforced": True,
         "detail": stopped or f"{len(finite)} of {len(losses)} logged losses finite"},
        {"name": "the checkpoint restores and evaluates", "passed": bool(same), "enforced": True,
         "detail": f"the restored best checkpoint scores {_score(restored)} vs the run's {_score(run_score)} "
                   f"(tolerance {SCORE_TOLERANCE:g})"},
    ]


def train_section(ctx) -> dict:
    from lumbar_jax import rundir
    from lumbar_jax.evaluate import evaluate_run
    from lumbar_jax.cross_validation import cross_validate

    config = train_config(ctx.smoke, os.path.join(ctx.cache, "data"))
    workdir = os.path.join(ctx.cache, "train_run")
    shutil.rmtree(workdir, ignore_errors=True)  # a finished fold would be skipped, not trained
    start = time.perf_counter()
    stopped = None
    try:
        cross_validate(config, workdir)
    except FloatingPointError as err:  # the loop stops on a non-finite loss
        stopped = f"{type(err).__name__}: {err}"
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    report = evaluate_run(workdir, [0], "best") if stopped is None else None
    evaluate_s = time.perf_counter() - start
    lines, result = _metric_lines(workdir), rundir.read_fold_result(workdir, 0)
    run_score = None if result is None else float(result["val"]["score"])
    losses = [line["train/loss"] for line in lines if "train/loss" in line]
    rates = [line["train/studies_per_s"] for line in lines if line.get("train/studies_per_s")]
    rate = rates[-1] if rates else None
    restored = report["folds"][0]["val"]["score"] if report else None
    checks = _checks(losses, stopped, run_score, restored, ctx.smoke)
    t = config.train
    return {
        "description": f"{'configs/vit.py:smoke (tiny)' if ctx.smoke else 'configs/vit_effnet_one_stage.py:r128'}, "
                       f"fold 0 of "
                       f"{config.cv.num_folds}, {config.data.synthetic_studies} synthetic studies, {t.steps} steps "
                       f"of batch {t.batch_size}, {config.model.dtype}: training {train_s:.0f} s (data build and "
                       f"compilation included, {rate and f'{rate:.3g}'} records/s over the loop), restore + "
                       f"evaluate {evaluate_s:.0f} s",
        "config": json.loads(config.to_json_best_effort()), "train_s": train_s, "evaluate_s": evaluate_s,
        "losses": losses, "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
        "run_score": run_score, "restored_score": restored, "records_per_s": rate, "stopped": stopped,
        "restored_step": report["folds"][0]["step"] if report else None, "checks": checks,
        "passed": all(c["passed"] for c in checks if c["enforced"]),
    }
