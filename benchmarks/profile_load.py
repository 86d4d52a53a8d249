"""Where the time of `load_study_volumes` goes, by stage (cProfile, cumulative time of stage functions).

    python -m benchmarks.profile_load [--studies 12] [--shape 32,128,128]

Generates clean synthetic studies (as the data section does), runs `load_study_volumes` over them once
untimed and once under cProfile, and prints the share of each stage. cProfile inflates Python-heavy stages
(pydicom's header handling) relative to numpy ones; `py-spy record -f raw` over `python -m
benchmarks.profile_load --no-profile --loops 8` gives an unbiased sample (see benchmarks/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

from lumbar_jax import cli

# (stage, module path suffix, function name): cumulative time of these functions; first match wins.
STAGES = (
    ("pydicom.dcmread (file parsing)", "pydicom/filereader.py", "dcmread"),
    ("header -> slices (raw elements / pydicom)", "lumbar_jax/data/dicom.py", "_header_slices"),
    ("pixel decoding (_stored_pixels, pixel_array)", "lumbar_jax/data/dicom_pixels.py", "_stored_pixels"),
    ("float conversion + stacking (_stack_volume)", "lumbar_jax/data/dicom_pixels.py", "_stack_volume"),
    ("orientation grouping", "lumbar_jax/data/dicom.py", "_orientation_groups"),
    ("  slice normals (_Slice.normal, nested)", "lumbar_jax/data/dicom_slice.py", "normal"),
    ("resample to the record shape", "lumbar_jax/data/volume.py", "resample"),
    ("percentile normalisation to uint8", "lumbar_jax/data/volume.py", "normalize_uint8"),
    ("load_study_volumes (total)", "lumbar_jax/data/study.py", "load_study_volumes"),
)


def _shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"want three positive integers D,H,W, got {text!r}")
    return shape


def main(argv: list[str] | None = None) -> int:
    parser = cli.argument_parser("python -m benchmarks.profile_load", __doc__)
    parser.add_argument("--studies", type=int, default=12, help="synthetic studies to generate and load")
    parser.add_argument("--shape", type=_shape, default="32,128,128", help="D,H,W of the loaded volumes")
    parser.add_argument("--loops", type=int, default=1, help="passes over the studies")
    parser.add_argument("--no-profile", action="store_true",
                        help="just run and print ms/study (for an external sampler)")
    args = parser.parse_args(argv)
    shape = args.shape

    from lumbar_jax.data import study
    from lumbar_jax.data.synthetic import DatasetSpec, write_synthetic_dataset

    with tempfile.TemporaryDirectory(prefix="lumbar_jax_profile_") as root:
        write_synthetic_dataset(root, DatasetSpec(args.studies, seed=0, quirks=False), progress=False)
        entries = study.list_studies(root, "train")

        def load():
            for _ in range(args.loops):
                for entry in entries:
                    study.load_study_volumes(entry.series_dirs, shape)

        load()  # warm-up
        start = time.perf_counter()
        if args.no_profile:
            load()
            print(f"{(time.perf_counter() - start) / (args.studies * args.loops) * 1e3:.1f} ms/study")
            return 0
        profile = cProfile.Profile()
        profile.runcall(load)
    stats = pstats.Stats(profile).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    total = None
    rows = []
    for label, path, name in STAGES:
        cumulative = sum(v[3] for (file, _, func), v in stats.items()
                         if func == name and file.replace(os.sep, "/").endswith(path))
        rows.append((label, cumulative))
        if name == "load_study_volumes":
            total = cumulative
    n = args.studies * args.loops
    print(f"cProfile of load_study_volumes, {args.studies} studies x {args.loops}, shape {shape}")
    for label, cumulative in rows:
        share = f"{100 * cumulative / total:5.1f} %" if total else "-"
        print(f"  {label:45s} {cumulative / n * 1e3:7.1f} ms/study  {share}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
