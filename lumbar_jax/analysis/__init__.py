"""Analysis of the data and of a cross-validation run: PNG plots and a Markdown report.

  label_stats  class counts per target, pairwise Spearman correlation, left/right agreement (pure)
  oof          OOF predictions of a run directory: reading, calibration bins, confusion, worst studies (pure)
  plots        one matplotlib PNG per function (Agg backend)
  montage      canonical volumes of a few studies with their annotated points (a geometry check)
  report       write_report (`Drawn`: studies per drawn section): all of the above into out_dir/report.md

CLI: `python scripts/analyze.py --data_dir KAGGLE_DIR [--workdir W] --out REPORT_DIR`.
"""

from lumbar_jax.analysis.report import Drawn, write_report

__all__ = ["Drawn", "write_report"]
