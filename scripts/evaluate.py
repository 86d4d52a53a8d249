"""Re-score a run's checkpoints on each fold's held-out studies.

  python scripts/evaluate.py --workdir W [--fold k] [--checkpoint best|latest|STEP] [--output report.json]

Restores each fold's checkpoint onto the devices present (a run trained on 4 devices evaluates on 1),
recomputes the run's folds from its config.json, and prints per fold (and, with every fold, out of fold):
the competition score, class-prior baseline, best constant, accuracy, balanced accuracy, per-condition
losses, any_severe_spinal and per-class recall. With the best checkpoints of every fold the OOF score is
checked against cv_summary.json, and with the best checkpoint each fold's score against its result.json.
A two-stage run (configs/vit_effnet.py, the default) is evaluated as it trained: fold k's held-out studies
are located by fold k's localiser (its best checkpoint) and read by fold k's crop classifier; the report
adds the localiser's held-out error in mm and correct-level share, and how far its points are from the
saved localiser_predictions.npz. The report is also written as JSON (default: W/evaluation_CHECKPOINT.json).
"""

import os
import sys

from lumbar_jax import cli, huge_pages


def main(argv=None) -> int:
    parser = cli.argument_parser("python scripts/evaluate.py", __doc__)
    parser.add_argument("--workdir", required=True, help="run directory of python -m lumbar_jax.main")
    parser.add_argument("--fold", type=int, action="append", default=None,
                        help="evaluate only this fold (repeatable); default: every fold")
    parser.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step number")
    parser.add_argument("--output", default=None,
                        help="JSON report path; default: WORKDIR/evaluation_CHECKPOINT.json")
    args = parser.parse_args(argv)
    if args.output:
        cli.check_output_path(args.output, "--output")
    cli.setup_logging()
    from lumbar_jax import evaluate  # after parsing: JAX, Orbax

    report = evaluate.evaluate_run(args.workdir, args.fold, args.checkpoint)
    print(evaluate.format_report(report))
    output = args.output or os.path.join(args.workdir, f"evaluation_{args.checkpoint}.json")
    with open(output, "w") as f:
        f.write(evaluate.to_json(report))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages(__file__)  # once, before any work: XLA:CPU's buffers on huge pages
    sys.exit(cli.run(main))
