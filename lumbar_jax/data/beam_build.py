"""Build `rsna_lumbar_spine` with Apache Beam (TFDS's distributed generation), e.g. on many machines.

  python -m lumbar_jax.data.beam_build --manual_dir KAGGLE_DIR --data_dir OUT --config r256 \
      [--workers 8]                                    # local DirectRunner, 8 worker processes
  python -m lumbar_jax.data.beam_build --manual_dir gs://B/kaggle --data_dir gs://B/tfds --config r256 \
      --runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py

Needs the `beam` extra (`pip install -e ".[beam]"`); the default build (`python -m lumbar_jax.data.build`,
a multiprocessing pool on one machine) does not. The records are the same as the default build's: same
features, same keys (study ids), same example order after TFDS's key-hash shuffle, so a run trains on
identical data whichever built it (tests/data/test_beam_build.py compares them). Only the number of files may
differ (TFDS picks the shard count from the dataset size in both cases).

Every study is one element of the Beam pipeline: the study list is read where the pipeline is built,
then decoding (`study.study_example`) runs on the workers, which therefore need lumbar_jax installed and the
manual dir readable (Dataflow: `--setup_file`, and the Kaggle folder on GCS). Extra arguments are Beam
pipeline options (`--runner`, `--direct_num_workers`, ...).

Its `build_report.json` is partial: the studies written per split, the source folder and what the CSV reading
dropped, but not what the readers dropped on the workers (files skipped, series absent, label points dropped:
Beam workers do not send them back; their warnings are in the workers' logs) and no count of absent series.
Build with `python -m lumbar_jax.data.build` for the full report.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING

from lumbar_jax import cli
from lumbar_jax.data.build import CONFIG_NAMES, build_argument_parser, format_build_report, tfds_scratch_tempdir

if TYPE_CHECKING:
    from lumbar_jax.data.rsna_lumbar_spine import Builder


@functools.cache
def beam_builder_class() -> type[Builder]:
    """The Beam variant of the builder, made on first use (TFDS is imported only to build: `--help` answers at
    once). It is the same dataset (name, configs, files), not a new one, so it is not registered."""
    import tensorflow_datasets as tfds

    from lumbar_jax.data.rsna_lumbar_spine import Builder
    from lumbar_jax.data.rsna_lumbar_spine.rsna_lumbar_spine_dataset_builder import keyed_study_example

    with tfds.core.registered.skip_registration():

        class BeamBuilder(Builder):
            """`rsna_lumbar_spine` whose splits are Beam PTransforms: TFDS then writes them with a Beam pipeline
            (`DownloadConfig.beam_runner` / `beam_options`) instead of iterating a generator."""

            name = Builder.name

            def _generate_examples(self, root: str, split: str):
                import apache_beam as beam

                return (f"{split}_studies" >> beam.Create(self.study_jobs(root, split))
                        | f"{split}_spread" >> beam.Reshuffle()  # one study per element, spread over the workers
                        | f"{split}_decode" >> beam.Map(keyed_study_example))

            def _report(self, manual_dir: str, fingerprint: str) -> dict:
                """The build report, marked partial: the workers' problems are not collected (module docstring)."""
                return {**super()._report(manual_dir, fingerprint),
                        "partial": "Beam build: only the CSV reading's problems; the workers' are in their logs"}

    return BeamBuilder


def pipeline_options(workers: int = 2, beam_args: list[str] | None = None):
    """Beam options: the given pipeline arguments, else a local DirectRunner with `workers` processes."""
    from apache_beam.options.pipeline_options import PipelineOptions

    beam_args = list(beam_args or [])
    if not any(a.startswith("--runner") for a in beam_args):
        beam_args += ["--runner=DirectRunner", f"--direct_num_workers={workers}",
                      "--direct_running_mode=multi_processing"]
    return PipelineOptions(beam_args)


def build_dataset_beam(manual_dir: str, data_dir: str, config: str = "r64", workers: int = 2,
                       beam_args: list[str] | None = None) -> Builder:
    """Build (or reuse) `rsna_lumbar_spine/{config}` under data_dir from manual_dir with a Beam pipeline."""
    if config not in CONFIG_NAMES:
        raise ValueError(f"config {config!r} unknown; choose one of {CONFIG_NAMES}")
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        raise ImportError("the Beam build needs apache-beam: pip install -e '.[beam]' (or use "
                          "`python -m lumbar_jax.data.build`, which does not)") from None
    import tensorflow_datasets as tfds

    with tfds_scratch_tempdir():
        builder = beam_builder_class()(config=config, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
        try_download_gcs=False, beam_options=pipeline_options(workers, beam_args)))
    return builder


def main(argv: list[str] | None = None) -> int:
    parser = build_argument_parser("python -m lumbar_jax.data.beam_build", __doc__)
    parser.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes (no --runner given)")
    args, beam_args = parser.parse_known_args(argv)
    cli.setup_logging()
    from lumbar_jax.data.rsna_lumbar_spine.rsna_lumbar_spine_dataset_builder import REPORT_FILE

    builder = build_dataset_beam(args.manual_dir, args.data_dir, args.config, args.workers, beam_args)
    if builder.build_report is not None:
        print(format_build_report(builder.build_report, os.path.join(builder.data_dir, REPORT_FILE)))
    print(f"built {builder.info.full_name} under {args.data_dir}: "
          + ", ".join(f"{name} {split.num_examples}" for name, split in builder.info.splits.items()))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
