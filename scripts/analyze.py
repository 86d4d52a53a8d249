"""Write the analysis report (PNG plots + report.md) of a Kaggle-layout dataset and, optionally, a CV run.

  python scripts/analyze.py --data_dir KAGGLE_DIR --out REPORT_DIR [--workdir WORKDIR] [--num_montages K]
                            [--crop_studies N] [--costly_rows N]

The dataset part: label statistics and montages of studies with their label coordinates. With `--workdir`
(a finished cross-validation run: oof_predictions.csv, cv_summary.json) also the OOF score vs the baseline,
calibration, confusion matrices, the worst-predicted studies and, for a target-query model, the per-target
attention of fold 0's best checkpoint on held-out studies of fold 0; for a two-stage run
(configs/vit_effnet.py, the default), the crops its classifier read in the worst-predicted held-out
studies, with each fold's localiser's point and the annotated point marked (--crop_studies). With
`--workdir`, the costliest held-out predictions with their causes and the OOF score split by cause
(--costly_rows; lumbar_jax/analysis/costly.py), also as OUT/costly.json.

--data_dir is the Kaggle-layout folder the run trained on: the run's dataset.json names it ("source":
{"manual_dir": ...}); the embedded synthetic set of the default config is generated into
~/.cache/lumbar_jax/synthetic_300_seed0 (data.cache_dir). Left targets' crops are drawn mirrored into
right-side ones, as the classifier reads them; the words at each panel's edges say which way is which.

Exit status 2 with a message naming the path for a missing train.csv (and where the run's training folder
is), run directory or run file, or OOF predictions of studies not in train.csv. The work is done by
lumbar_jax.analysis.write_report.
"""

from __future__ import annotations

import sys

from lumbar_jax import cli


def main(argv: list[str] | None = None) -> int:
    parser = cli.argument_parser("python scripts/analyze.py", __doc__)
    parser.add_argument("--data_dir", required=True,
                        help="Kaggle competition folder (train.csv, train_label_coordinates.csv, "
                             "train_series_descriptions.csv, train_images/)")
    parser.add_argument("--workdir", default=None, help="finished cross-validation run directory (optional)")
    parser.add_argument("--out", required=True, help="output folder for the PNGs and report.md (created if needed)")
    parser.add_argument("--num_montages", type=int, default=3,
                        help="studies drawn with their label coordinates; 0 for none")
    parser.add_argument("--volume_shape", type=int, nargs=3, default=(16, 64, 64), metavar=("D", "H", "W"),
                        help="shape the montage volumes are resampled to (the default model's)")
    parser.add_argument("--attention_studies", type=int, default=1,
                        help="held-out studies drawn with the model's per-target attention (needs --workdir); "
                             "0 for none")
    parser.add_argument("--crop_studies", type=int, default=3,
                        help="two-stage runs: worst-predicted held-out studies drawn with the crops the classifier "
                             "read and the localiser's and annotated points (needs --workdir); 0 for none")
    parser.add_argument("--costly_rows", type=int, default=20,
                        help="the costliest held-out predictions listed with their causes, and the OOF score split "
                             "by cause (needs --workdir; two-stage runs restore every fold); 0 for none")
    args = parser.parse_args(argv)
    if min(args.num_montages, args.attention_studies, args.crop_studies, args.costly_rows) < 0:
        parser.error("--num_montages, --attention_studies, --crop_studies and --costly_rows must be >= 0")
    cli.setup_logging()
    from lumbar_jax.analysis import Drawn, write_report  # after parsing: matplotlib, JAX

    drawn = Drawn(montages=args.num_montages, attention=args.attention_studies, crops=args.crop_studies,
                  costly=args.costly_rows)
    path = write_report(args.data_dir, args.out, workdir=args.workdir, drawn=drawn,
                        volume_shape=tuple(args.volume_shape))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
