"""Write a synthetic RSNA-2024-lumbar dataset in the Kaggle layout (train and optional test studies).

Same arguments -> byte-identical files, whatever --workers. The folder holds train.csv,
train_label_coordinates.csv, train_series_descriptions.csv, train_images/, with --test_studies also
test_series_descriptions.csv, test_images/, sample_submission.csv and test_solution.csv, and
synthetic_summary.json last (its presence marks a complete dataset). The quirks are listed in
lumbar_jax/data/synthetic/acquisition.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from lumbar_jax import cli


def main(argv=None) -> int:
    """Write the dataset `argv` asks for; print its summary (quirk details left out) and the studies each
    quirk landed in."""
    parser = cli.argument_parser("python -m lumbar_jax.data.synthetic", __doc__)
    parser.add_argument("--out", required=True, help="output folder (created; files of an earlier run rewritten)")
    parser.add_argument("--studies", type=int, required=True, help="number of train (labelled) studies")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed: same seed -> identical files")
    parser.add_argument("--test_studies", type=int, default=0, help="number of unlabelled test studies")
    parser.add_argument("--quirks", action=argparse.BooleanOptionalAction, default=True,
                        help="real-data oddities (rescale, MONOCHROME1, RLE, JPEG 2000, broken files, ...); "
                             "--no-quirks for clean files")
    parser.add_argument("--workers", type=int, default=1, help="processes writing studies")
    parser.add_argument("--matrix_scale", type=int, default=1,
                        help="multiply the in-plane matrix of every series (64-96 px) by this: 5 gives 320-480 px "
                             "slices, the Kaggle sizes (same studies, labels and geometry; ~25x the pixels)")
    args = parser.parse_args(argv)
    from lumbar_jax.data.synthetic.layout import DatasetSpec, write_synthetic_dataset

    spec = DatasetSpec(args.studies, args.seed, args.test_studies, args.quirks, args.matrix_scale)
    summary = write_synthetic_dataset(args.out, spec, workers=args.workers)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("quirks", "unreadable_files")}, indent=1))
    print("quirks:", json.dumps({k: sorted({o["study_id"] for o in v}) for k, v in summary["quirks"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
