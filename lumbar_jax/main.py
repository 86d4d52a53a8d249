"""The main job: k-fold training and out-of-fold evaluation of a config.

  python -m lumbar_jax.main --config configs/vit_effnet.py [--workdir runs/vit_effnet]
  python -m lumbar_jax.main --config configs/vit_effnet.py:smoke --config.train.steps=20

`--config FILE[:VARIANT]` loads FILE and calls its get_config(VARIANT). Any field of that config can then be
set with `--config.FIELD=VALUE` (or `--config.FIELD VALUE`), read as the field's type:
  --config.train.steps=20  --config.data.cache_dir=/tmp/x  --config.model.patch=(4,8,8)
  --config.model.share_encoders=false  --config.mesh.num_devices=4  --config.fold=0
An unknown field or a value that is not of the field's type stops the command before any work
(lumbar_jax/config_overrides.py). Only flags live here; the work is
`lumbar_jax.cross_validation.cross_validate(config, workdir)`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from lumbar_jax import cli, config_overrides, huge_pages

PROG = "python -m lumbar_jax.main"


def default_workdir(config_path: str) -> str:
    path, _, variant = config_path.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{name}_{variant}" if variant else name)


def main(argv: Sequence[str] | None = None) -> int:
    rest, overrides = config_overrides.split_overrides(sys.argv[1:] if argv is None else argv)
    parser = cli.argument_parser(PROG, __doc__)
    parser.add_argument("--config", required=True, metavar="FILE[:VARIANT]",
                        help="config file, optionally with a variant: configs/vit_effnet.py:smoke")
    parser.add_argument("--workdir", metavar="DIR",
                        help="run directory; default: runs/<config file name>[_<variant>]")
    args = parser.parse_args(rest)
    workdir = args.workdir or default_workdir(args.config)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir {workdir} is a file, not a directory")
    config = config_overrides.load_config(args.config)
    config_overrides.apply_overrides(config, overrides)
    cli.setup_logging()
    from lumbar_jax import cross_validation  # after flag parsing: keeps `--help` fast
    from lumbar_jax.train import config as config_lib

    try:
        summary = cross_validation.cross_validate(config, workdir)
    except (config_lib.ConfigError, FileNotFoundError):
        raise  # bad input, named by the message: one line (cli.run)
    except (ValueError, OSError) as err:  # a failure of the run, not of its input: keep the traceback
        raise RuntimeError(f"the run in {workdir} failed: {err}") from err
    if summary is None:
        print(f"fold {config.cv.fold} done; run the remaining folds to get the CV summary in {workdir}")
    else:
        print(f"wrote {workdir}/cv_summary.json and {workdir}/oof_predictions.csv")
    return 0


if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages("lumbar_jax.main")  # once, before any work: XLA:CPU's step buffers on huge pages
    sys.exit(cli.run(main))
