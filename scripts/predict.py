"""Predict new studies from DICOM with a trained run: Kaggle submission.csv, or one study's report.

  python scripts/predict.py --workdir W --data_dir KAGGLE_DIR --output submission.csv [--tta] [--no_calibration]
                            [--sr_dir SR_DIR]
  python scripts/predict.py --workdir W --study_dir PATH/TO/STUDY [--descriptions CSV] [--json report.json]
                            [--sr report.dcm]

The first form reads KAGGLE_DIR/test_series_descriptions.csv and test_images/ (no prebuilt dataset), runs
the best checkpoint of every trained fold, averages their probabilities, and writes submission.csv with the
competition's header and 25 rows per study; it then prints the run's quality (out-of-fold score against the
best constant) and warns about studies whose localised points are implausible. The second reads one study
folder ({study_id}/{series_id}/*.dcm); series types come from --descriptions (a *_series_descriptions.csv)
or the DICOM SeriesDescription, and it prints a per-level report: warnings first (the run does not beat the
best constant; this study's localised points are implausible), each target's three probabilities
(Normal/Mild, Moderate, Severe), `!` where the target is flagged (its grade, the median severity, is
Moderate or Severe: P(Normal/Mild) < 0.5), a legend, the run's quality (out-of-fold score, best constant,
class prior; two-stage: the localiser's held-out median and p90 error in mm), the provenance (run, folds,
checkpoint steps, TTA, model and package version) and a research-use note; --json also writes it as JSON
(nothing is written without --json). A missing series is predicted without it (`~` in the report), and each
series folder not used is named with its reason (empty, no readable DICOM file, unreadable, type unknown); a
study folder with no usable series is an error (exit status 2). --tta averages with the left/right-mirrored
study (left and right targets swapped back; one-stage runs). The rules are in docs/conventions.md section 7.

Every path, fold and checkpoint argument is checked before any model is built (a wrong one costs seconds);
building, restoring and compiling show progress, and a last `time:` line accounts for the wall time.

The probabilities are calibrated with the run's temperatures per condition group (cv_summary.json
"calibration", fitted on its out-of-fold predictions) when it has them; --no_calibration switches that off,
and the provenance says which. A two-stage run (configs/vit_effnet.py, the default) works the same way:
each fold's localiser finds the 25 points and that fold's crop classifier reads crops of the native series
there; the --json report also holds, per target, the series, the normalised point and its patient
coordinates (mm, LPS). Research use only: not a medical device.

--workdir may also be a seed-ensemble directory of scripts/ensemble.py (it holds ensemble_summary.json): every
member's folds are restored (--fold and --checkpoint apply to each member), their probabilities averaged with
equal weights, calibrated with the ensemble's own temperatures, and the run's quality is the ensemble's
out-of-fold score; the provenance names the members.

--sr (with --study_dir) also writes the report as a DICOM Comprehensive 3D SR (TID 1500 Measurement Report): one
measurement group per target with the localised point in the series' Frame of Reference, the grade and the
three probabilities, referencing the source images, and carrying the study's Patient and Study modules so that
a PACS files it with the study (the one output with the patient's identity; docs/conventions.md section 8).
--sr_dir (with --data_dir) writes one per study, SR_DIR/{study_id}.dcm.
"""

import json
import os
import sys

from lumbar_jax import cli, huge_pages


def main(argv=None) -> int:
    parser = cli.argument_parser("python scripts/predict.py", __doc__)
    parser.add_argument("--workdir", required=True, help="run directory of python -m lumbar_jax.main, or a seed-"
                                                         "ensemble directory of scripts/ensemble.py")
    parser.add_argument("--data_dir", help="Kaggle folder with test_series_descriptions.csv and test_images/")
    parser.add_argument("--output", default="submission.csv", help="submission path (with --data_dir)")
    parser.add_argument("--split", default="test", help="which {split}_series_descriptions.csv to predict")
    parser.add_argument("--study_dir", help="one study folder instead of --data_dir")
    parser.add_argument("--descriptions", help="series descriptions CSV for --study_dir")
    parser.add_argument("--json", default=None, help="also write the --study_dir report as JSON here")
    parser.add_argument("--sr", default=None,
                        help="also write the --study_dir report as a DICOM SR (TID 1500) here, e.g. report.dcm")
    parser.add_argument("--sr_dir", default=None,
                        help="with --data_dir: also write each study's DICOM SR as SR_DIR/{study_id}.dcm (created)")
    parser.add_argument("--fold", type=int, action="append", default=None,
                        help="use only this fold (repeatable); default: every trained fold")
    parser.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step number")
    parser.add_argument("--tta", action="store_true",
                        help="average with the left/right flip (one-stage runs; a two-stage run's localiser "
                             "always does)")
    parser.add_argument("--no_calibration", action="store_true",
                        help="do not apply the run's calibration temperatures (cv_summary.json)")
    args = parser.parse_args(argv)
    if bool(args.data_dir) == bool(args.study_dir):
        parser.error("give exactly one of --data_dir and --study_dir")
    if (args.sr and not args.study_dir) or (args.sr_dir and not args.data_dir):
        parser.error("--sr goes with --study_dir, --sr_dir with --data_dir")
    if args.sr_dir and os.path.exists(args.sr_dir) and not os.path.isdir(args.sr_dir):
        raise NotADirectoryError(f"--sr_dir {args.sr_dir} is a file, not a folder")
    for path, flag, folder in ((args.data_dir, "--data_dir", True), (args.study_dir, "--study_dir", True),
                               (args.descriptions, "--descriptions", False)):
        if path:
            cli.check_input_path(path, flag, folder)
    for path, flag in ((args.data_dir and args.output, "--output"), (args.study_dir and args.json, "--json"),
                       (args.study_dir and args.sr, "--sr")):
        if path:
            cli.check_output_path(path, flag)
    cli.setup_logging()
    from lumbar_jax import predict, study_report  # after parsing: JAX, Orbax, TFDS

    # Everything that can be refused is checked before any model is built (predict.PredictionRun).
    run = predict.PredictionRun(args.workdir, args.fold, args.checkpoint, args.tta, calibrate=not args.no_calibration)
    if args.data_dir:
        entries = predict.split_entries(args.data_dir, args.split)
        predictor = predict.Predictor(run)
        table, timing = predict.predict_split(predictor, entries, args.sr_dir)
        table.to_csv(args.output, index=False, float_format="%.6g")
        print(f"wrote {args.output}: {len(table)} rows for {timing['studies']} studies "
              f"({timing['absent_series']} absent series, {timing['implausible_studies']} with implausible "
              f"localised points); {timing['studies_per_s']:.2f} studies/s after compiling")
        print(study_report.quality_text(run.quality))
        for warning in study_report.quality_warnings(run.quality):
            print(f"WARNING: {warning}")
        if args.sr_dir:
            print(f"wrote {timing['studies']} DICOM SRs to {args.sr_dir} in {timing['structured_reports_s']:.1f} s")
        print("time: " + predict.timing_text({**predictor.timings, **timing}, cli.wall_s()))
        return 0
    read_from = cli.wall_s()
    entry, record, unused = predict.read_study_dir(run, args.study_dir, args.descriptions)
    read_s = cli.wall_s() - read_from
    predictor = predict.Predictor(run)
    report, predict_s = predict.predict_study(predictor, entry, record, unused)
    print(study_report.format_study_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    if args.sr:
        predict.write_structured_report(report, entry, record, args.sr)
        print(f"wrote {args.sr} (DICOM SR)")
    print("time: " + predict.timing_text({**predictor.timings, "read_s": read_s, "predict_s": predict_s},
                                         cli.wall_s()))
    return 0


if __name__ == "__main__":
    huge_pages.reexec_with_huge_pages(__file__)  # once, before any work: XLA:CPU's buffers on huge pages
    sys.exit(cli.run(main))
