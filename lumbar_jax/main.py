"""The main job: k-fold training and out-of-fold evaluation of a config.

  python -m lumbar_jax.main --config configs/vit_effnet.py [--workdir runs/vit_effnet]
  python -m lumbar_jax.main --config configs/vit_effnet.py:smoke --config.train.steps=20

Only flags live here; the work is `lumbar_jax.train.cv.cross_validate(config, workdir)`.
"""

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with a variant: configs/x.py:smoke",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config file name>[_<variant>])")
flags.mark_flags_as_required(["config"])


def default_workdir(config_path: str) -> str:
    path, _, variant = config_path.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{name}_{variant}" if variant else name)


def main(argv):
    del argv
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax and TFDS narrate every file they touch
    from lumbar_jax.train import config as config_lib, cv  # after flag parsing: keeps `--help` fast

    workdir = FLAGS.workdir or default_workdir(config_flags.get_config_filename(FLAGS["config"]))
    try:
        summary = cv.cross_validate(FLAGS.config, workdir)
    except (config_lib.ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if summary is None:
        print(f"fold {FLAGS.config.cv.fold} done; run the remaining folds to get the CV summary in {workdir}")
    else:
        print(f"wrote {workdir}/cv_summary.json and {workdir}/oof_predictions.csv")


if __name__ == "__main__":
    app.run(main)
