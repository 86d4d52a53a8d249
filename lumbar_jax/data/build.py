"""Build the `rsna_lumbar_spine` dataset from a Kaggle-layout folder (no TensorFlow needed).

  python -m lumbar_jax.data.build --manual_dir KAGGLE_DIR --data_dir OUT --config r128 [--workers N]

`tfds build` imports TensorFlow, so lumbar_jax ships this command. Studies are decoded in `--workers`
processes (default: every core). Rebuilding into an existing data dir reuses a complete dataset of the same
config and version; `--overwrite` rebuilds it from the manual dir.

Each warning about the input is one log line; at the end a build prints its summary (studies per split,
series absent, and per kind of problem the count and the commonest reasons) and the path of the full report,
`build_report.json` beside the dataset (studies written, series absent, files skipped, label points dropped,
CSV rows refused, each with its reasons and first examples).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from typing import TYPE_CHECKING

from lumbar_jax import cli
from lumbar_jax.data import problems
from lumbar_jax.dataset_configs import DATASET_SHAPES

if TYPE_CHECKING:
    from lumbar_jax.data.rsna_lumbar_spine import Builder

# The builder's configs (its BUILDER_CONFIGS are made from the same table); TFDS is imported only to build, so
# that `--help` answers at once.
CONFIG_NAMES = tuple(DATASET_SHAPES)


@contextlib.contextmanager
def tfds_scratch_tempdir():
    """Point tempfile at a scratch directory that is removed on exit. TFDS's DatasetBuilder.__init__ leaves
    an empty `mkdtemp` directory in /tmp behind whenever the dataset is not built yet
    (DatasetInfo.initialize_from_bucket, even with GCS disabled): construct builders inside this."""
    with tempfile.TemporaryDirectory() as scratch:
        previous, tempfile.tempdir = tempfile.tempdir, scratch
        try:
            yield
        finally:
            tempfile.tempdir = previous


def build_dataset(manual_dir: str, data_dir: str, config: str = "r64", workers: int | None = None,
                  overwrite: bool = False, source_fingerprint: str | None = None) -> Builder:
    """Build (or reuse) `rsna_lumbar_spine/{config}` under data_dir from the Kaggle folder manual_dir; a build
    prints its report's summary. `source_fingerprint`: the manual dir's, when the caller has computed it."""
    import tensorflow_datasets as tfds

    from lumbar_jax.data.rsna_lumbar_spine import Builder  # registers the builder with TFDS
    from lumbar_jax.data.rsna_lumbar_spine.rsna_lumbar_spine_dataset_builder import REPORT_FILE

    if config not in CONFIG_NAMES:
        raise ValueError(f"config {config!r} unknown; choose one of {CONFIG_NAMES}")
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir {manual_dir} is not a directory")
    if not os.path.exists(os.path.join(manual_dir, "train_series_descriptions.csv")):
        raise FileNotFoundError(f"manual_dir {manual_dir} holds no train_series_descriptions.csv: "
                                "point it at the unzipped Kaggle competition folder")
    with tfds_scratch_tempdir():
        builder = Builder(config=config, data_dir=data_dir, file_format="array_record",
                          num_workers=workers or os.cpu_count() or 1, source_fingerprint=source_fingerprint)
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if overwrite:
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    with problems.warnings_in_one_line():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, download_mode=mode, try_download_gcs=False))
    if builder.build_report is not None:
        print(format_build_report(builder.build_report, os.path.join(builder.data_dir, REPORT_FILE)))
    return builder


def format_build_report(report: dict, path: str, top: int = 3) -> str:
    """A few lines from a build report: studies per split, series absent, and per kind of problem found its
    count and `top` commonest reasons; then where the whole report is."""
    lines = [f"built {report['dataset']} from {report['source']['manual_dir']}: "
             + ", ".join(f"{split} {n} studies" for split, n in report["studies"].items())]
    for split, absent in report.get("series_absent_in_records", {}).items():
        if any(absent.values()):
            lines.append(f"  {split}: series absent from the records: "
                         + ", ".join(f"{name} {n}" for name, n in absent.items() if n))
    for kind, entry in report["problems"].items():
        if entry["count"]:
            reasons = sorted(entry["reasons"].items(), key=lambda r: -r[1])
            shown = "; ".join(f"{reason} {n}" for reason, n in reasons[:top])
            more = f"; {len(reasons) - top} more reasons" if len(reasons) > top else ""
            lines.append(f"  {kind}: {entry['count']} ({shown}{more})")
    if not any(entry["count"] for entry in report["problems"].values()):
        lines.append("  no input dropped")
    lines.append(f"  report: {path}")
    return "\n".join(lines)


def build_argument_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The arguments every build command takes (--manual_dir, --data_dir, --config), usage line `prog`."""
    parser = cli.argument_parser(prog, description)
    parser.add_argument("--manual_dir", required=True, help="the Kaggle competition folder (train.csv, train_images/)")
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to write rsna_lumbar_spine/CONFIG/VERSION into")
    parser.add_argument("--config", default="r64", choices=CONFIG_NAMES, help="volume size config")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_argument_parser("python -m lumbar_jax.data.build", __doc__)
    parser.add_argument("--workers", type=int, default=None, help="decoding processes; default: every core")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset exists")
    args = parser.parse_args(argv)
    cli.setup_logging()
    builder = build_dataset(args.manual_dir, args.data_dir, args.config, args.workers, args.overwrite)
    info = builder.info
    for split, split_info in info.splits.items():
        print(f"{info.full_name} {split}: {split_info.num_examples} studies in {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
