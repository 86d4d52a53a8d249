"""Compare finished runs in one table: OOF competition score, per-condition losses, accuracy, balanced accuracy,
the class-prior baseline and the best constant, one row per run.

  python scripts/compare.py --workdirs W1 W2 ... [--markdown] [--json out.json]

Reads each run's cv_summary.json (and config.json for the model, data and loss names); nothing is recomputed.
Runs whose configs differ only in their seed are summarised below the table: the OOF score's mean, standard
deviation and range over the seeds, and the worst fold of any of them.
A missing or unfinished run directory is an error naming it (exit status 2).
"""

import sys

from lumbar_jax import cli


def main(argv=None) -> int:
    parser = cli.argument_parser("python scripts/compare.py", __doc__)
    parser.add_argument("--workdirs", nargs="+", required=True, help="run directories of python -m lumbar_jax.main")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table instead of plain text")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    args = parser.parse_args(argv)
    from lumbar_jax import compare

    rows = compare.compare_runs(args.workdirs)
    print(compare.format_markdown(rows) if args.markdown else compare.format_table(rows))
    seeds = compare.format_seed_groups(compare.seed_groups(rows))
    if seeds:
        print(seeds)
    if args.json:
        with open(args.json, "w") as f:
            f.write(compare.to_json(rows))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
