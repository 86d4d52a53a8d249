"""Markdown pieces of the analysis report: tables, numbers, images with captions."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table (no tabulate dependency); floats as given by the caller."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def image(title: str, png: str, out_dir: str, caption: str) -> str:
    return f"![{title}]({os.path.relpath(png, out_dir)})\n\n{caption}\n"


def fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"
