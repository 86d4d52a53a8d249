"""Write the analysis report (PNG plots + report.md) of a Kaggle-layout dataset and, optionally, a CV run.

  python scripts/analyze.py --data_dir KAGGLE_DIR [--workdir WORKDIR] --out REPORT_DIR [--num_montages K]

  --data_dir      Kaggle competition folder (train.csv, train_label_coordinates.csv,
                  train_series_descriptions.csv, train_images/)
  --workdir       finished cross-validation run directory (oof_predictions.csv, cv_summary.json): adds
                  OOF score vs baseline, calibration, confusion matrices and the worst-predicted studies
  --out           output folder for the PNGs and report.md (created if needed)
  --num_montages  studies drawn with their label coordinates (default 3; 0 for none)
  --volume_shape  D H W the montage volumes are resampled to (default 16 64 64, the default model's)
  --attention_studies  with a target-query run: held-out studies of fold 0 drawn with the per-target
                  attention of fold 0's best checkpoint (default 1; 0 for none)

Exit status 2 with a message naming the path for a missing train.csv, run directory or run file, or OOF
predictions of studies not in train.csv. The work is done by lumbar_jax.analysis.write_report.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lumbar_jax.analysis import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="Kaggle-layout folder holding train.csv")
    parser.add_argument("--workdir", default=None, help="finished CV run directory (optional)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs and report.md")
    parser.add_argument("--num_montages", type=int, default=3, help="studies drawn with label coordinates")
    parser.add_argument("--volume_shape", type=int, nargs=3, default=(16, 64, 64), metavar=("D", "H", "W"),
                        help="montage volume shape")
    parser.add_argument("--attention_studies", type=int, default=1,
                        help="held-out studies drawn with the model's per-target attention (needs --workdir)")
    args = parser.parse_args(argv)
    if args.num_montages < 0 or args.attention_studies < 0:
        parser.error("--num_montages and --attention_studies must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        path = write_report(args.data_dir, args.out, workdir=args.workdir, num_montages=args.num_montages,
                            volume_shape=tuple(args.volume_shape), attention_studies=args.attention_studies)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
