"""Train one config with several seeds, average them, and report the out-of-fold score of the average.

  python scripts/ensemble.py --config configs/vit_effnet.py --seeds 0 1 2 [--workdir runs/vit_effnet_seeds]
                             [--config.FIELD=VALUE ...]
  python scripts/ensemble.py --workdirs W1 W2 ... [--out DIR]

With --config, each seed is an ordinary run of python -m lumbar_jax.main in WORKDIR/seed_S (the config with
`seed` = S and the `--config.FIELD=VALUE` overrides, as the main job reads them): a finished member is not
trained again, an unfinished one resumes, and one whose stored config.json differs in a field that changes
results is refused before any work. Then the members' out-of-fold probabilities are averaged per row and the
average is scored like a run (OOF score beside the class-prior baseline and the best constant, accuracy,
balanced accuracy, per fold of the first member, cross-fitted calibration, verdict); the table and
WORKDIR/ensemble_summary.json, WORKDIR/ensemble_oof_predictions.csv are written.
With --workdirs, finished runs of one setting that differ only in their seed are averaged (no training); the
table is printed, and with --out the two files are written there.
A bad flag, seed list or run directory is one line `error: ...` (exit status 2).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from lumbar_jax import cli, config_overrides, huge_pages
from lumbar_jax.main import default_workdir

PROG = "python scripts/ensemble.py"


def main(argv: Sequence[str] | None = None) -> int:
    rest, overrides = config_overrides.split_overrides(sys.argv[1:] if argv is None else argv)
    parser = cli.argument_parser(PROG, __doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE[:VARIANT]", help="config file to train with every seed")
    source.add_argument("--workdirs", nargs="+", metavar="W", help="finished runs to average (no training)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="S", help="with --config: the members' seeds")
    parser.add_argument("--workdir", metavar="DIR",
                        help="with --config: the ensemble's directory; default: runs/<config name>[_<variant>]_seeds")
    parser.add_argument("--out", metavar="DIR", help="with --workdirs: write the two ensemble files into DIR")
    args = parser.parse_args(rest)
    if args.config is None and (args.seeds or args.workdir or overrides):
        parser.error("--seeds, --workdir and --config.FIELD overrides go with --config")
    if args.config is not None and (args.seeds is None or args.out):
        parser.error("--config needs --seeds and writes into --workdir (--out goes with --workdirs)")
    cli.setup_logging()

    if args.config is None:
        from lumbar_jax import seed_ensemble  # after flag parsing: keeps `--help` fast

        workdirs, out = args.workdirs, args.out
    else:
        workdir = args.workdir or default_workdir(args.config) + "_seeds"
        if os.path.exists(workdir) and not os.path.isdir(workdir):
            raise NotADirectoryError(f"--workdir {workdir} is a file, not a directory")
        config = config_overrides.load_config(args.config)
        config_overrides.apply_overrides(config, overrides)
        from lumbar_jax import seed_ensemble
        from lumbar_jax.train import config as config_lib

        try:
            workdirs, out = seed_ensemble.train_seeds(config, workdir, args.seeds), workdir
        except (config_lib.ConfigError, FileNotFoundError):
            raise  # bad input, named by the message: one line (cli.run)
        except (ValueError, OSError) as err:  # a failure of a member's run, not of its input: keep the traceback
            raise RuntimeError(f"the seed ensemble in {workdir} failed: {err}") from err

    result, predictions = seed_ensemble.average_runs(workdirs)
    print(seed_ensemble.format_ensemble(result))
    if out:
        print("wrote " + " and ".join(seed_ensemble.write_ensemble(out, result, predictions)))
    return 0


if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages(__file__)  # once, before any work: XLA:CPU's step buffers on huge pages
    sys.exit(cli.run(main))
