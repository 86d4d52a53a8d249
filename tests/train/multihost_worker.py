"""One process of a multi-process CPU run of the main job, for tests/train/test_multihost.py.

    python tests/train/multihost_worker.py --data_dir D --workdir W --out O.json \
        --coordinator_address localhost:PORT --num_processes 2 --process_id 0

Trains `multihost_config(data_dir)` through the real entry (`lumbar_jax.cross_validation.cross_validate`) and writes
what this process saw (process index/count, devices, the fold result it returned) to `--out`. The caller sets
XLA_FLAGS (fake CPU devices per process) and JAX_PLATFORMS=cpu in the environment; with no
`--coordinator_address` it is an ordinary single-process run. CPU collectives across processes use gloo.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

# Run as a script from anywhere: make the repository root importable (for `tests.train...`, not needed by
# lumbar_jax itself, which is installed).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def multihost_config(data_dir: str):
    """The tiny config of tests/train/test_train.py (smoke variant, tiny ViT, target-query head with the
    coordinate loss) with 4x16x16 tubelets (fewer tokens: faster on CPU); one fold, 3 steps of global batch 4,
    evaluated (and the best kept) at steps 2 and 3."""
    from lumbar_jax.train import config as config_lib

    c = config_lib.apply_variant(config_lib.default_config(), "smoke")
    c.data.data_dir = data_dir
    c.model.update(name="vit", head_hidden=32, drop_path=0.0, patch=(4, 16, 16))
    c.train.update(batch_size=4, eval_batch_size=4, steps=3, warmup_steps=1, eval_every=2, checkpoint_every=2,
                   log_every=1)
    c.cv.fold = 0
    return c


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"[p{args.process_id}] %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process CPU collectives
    from lumbar_jax import cross_validation

    config = multihost_config(args.data_dir)
    config.distributed.update(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                              process_id=args.process_id)
    result = cross_validation.cross_validate(config, args.workdir)
    from lumbar_jax import rundir

    fold = rundir.read_fold_result(args.workdir, 0)  # every process reads what process 0 wrote
    with open(args.out, "w") as f:
        json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
                   "local_devices": jax.local_device_count(), "devices": jax.device_count(),
                   "summary": result, "val_score": fold["val"]["score"], "best_step": fold["best_step"]}, f)


if __name__ == "__main__":
    main()
