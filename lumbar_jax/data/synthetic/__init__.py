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

API: `write_synthetic_dataset`; `make_study` plans one study (ids, labels, anatomy, series geometry, label
coordinates; no pixels), `render_series` its pixels, `write_study` its files; `draw_labels` (label-only,
fast), `label_noise_matrix`, `noise_floor_score`; `phantom` / `Anatomy` for geometric checks.
"""

from lumbar_jax.data.synthetic.acquisition import Series
from lumbar_jax.data.synthetic.dicom_writer import (PHI_BIRTH_DATE, PHI_INSTITUTION, PHI_MARKER, PHI_PATIENT_NAME,
                                                    PHI_SENTINELS, phi_patient_id, write_study)
from lumbar_jax.data.synthetic.labels import (KAPPA, P_MISSING_CELL, PRIORS, QUIRK_PERIOD, draw_labels,
                                              label_noise_matrix, noise_floor_score)
from lumbar_jax.data.synthetic.layout import VERSION, write_synthetic_dataset
from lumbar_jax.data.synthetic.phantom import SHRINK, Anatomy, phantom, render_series
from lumbar_jax.data.synthetic.plan import Study, choose_series, draw_ids, make_study

__all__ = [
    "KAPPA", "P_MISSING_CELL", "PHI_BIRTH_DATE", "PHI_INSTITUTION", "PHI_MARKER", "PHI_PATIENT_NAME",
    "PHI_SENTINELS", "PRIORS", "QUIRK_PERIOD", "SHRINK", "VERSION", "Anatomy", "Series", "Study",
    "choose_series", "draw_ids", "draw_labels", "label_noise_matrix", "make_study", "noise_floor_score",
    "phantom", "phi_patient_id", "render_series", "write_study", "write_synthetic_dataset",
]
