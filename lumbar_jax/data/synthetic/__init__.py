"""Synthetic RSNA-2024-lumbar studies in the exact Kaggle layout, with images that carry their labels.

Why: the training job needs a dataset that exists without a download (docs/conventions.md section 6), and the
reader / builder need files that exercise every oddity of the real DICOMs. Everything here is deterministic:
study `i` of seed `s` draws from `np.random.default_rng([s, 0, i, stream])` (labels, anatomy, pixel noise are
separate streams), ids from `[s, 1, 0, 0]`, so any number of workers writes byte-identical output.

The modules, in the order a dataset is made:
    labels        latent severities, the label noise written over them, missing cells; the noise floor
    phantom       the 3D anatomy a study's severities narrow, and the images a series takes of it
    acquisition   the series of a study (slice geometry, encoding) and where the real data's quirks land
    plan          one study planned without pixels: ids, labels, phantom, series, label coordinates
    dicom_writer  a planned study's files, encoded as the real ones are (and the PHI sentinels in them)
    layout        a whole dataset in the Kaggle folder layout: images, CSVs, synthetic_summary.json
CLI (`__main__`): `python -m lumbar_jax.data.synthetic --out DIR --studies N --seed S [--test_studies M]
[--no-quirks] [--workers W] [--matrix_scale K]`; K multiplies the in-plane matrix, default 1: 64-96 px, 5:
320-480 px as in the real data.

API: `write_synthetic_dataset(out_dir, DatasetSpec(...))`; `make_study` plans one study (ids, labels, anatomy,
series geometry, label coordinates; no pixels), `render_series` its pixels, `write_study` its files; `draw_labels`
(label-only, fast), `label_noise_matrix`, `noise_floor_score`; `phantom` / `Anatomy` for geometric checks. The
names are imported from their submodule on first use, so that the CLI's `--help` answers before NumPy, SciPy and
pydicom load.
"""

from __future__ import annotations

import importlib
import sys
import types

# public name -> the submodule that defines it, imported on first use
_SUBMODULE_OF = {
    "Series": "acquisition",
    **dict.fromkeys(("PHI_BIRTH_DATE", "PHI_INSTITUTION", "PHI_MARKER", "PHI_PATIENT_NAME", "PHI_SENTINELS",
                     "phi_patient_id", "write_study"), "dicom_writer"),
    **dict.fromkeys(("KAPPA", "P_MISSING_CELL", "PRIORS", "QUIRK_PERIOD", "draw_labels", "label_noise_matrix",
                     "noise_floor_score"), "labels"),
    **dict.fromkeys(("VERSION", "latent_severities", "write_synthetic_dataset"), "layout"),
    **dict.fromkeys(("SHRINK", "Anatomy", "phantom"), "phantom"),
    **dict.fromkeys(("DatasetSpec", "Study", "choose_series", "draw_ids", "make_study", "render_series"), "plan"),
}
__all__ = sorted(_SUBMODULE_OF)


def __getattr__(name: str):
    if name not in _SUBMODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SUBMODULE_OF[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps `synthetic.phantom` the function: importing the submodule `phantom` would bind it there instead."""

    def __setattr__(self, name: str, value) -> None:
        if not (name == "phantom" and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
