"""Montages of canonical study volumes with their annotated points: a geometry check by eye.

The volumes come from `data.study.study_example`, the very reader the TFDS builder uses, so what is drawn
is what the model is trained on (docs/conventions.md sections 3-4): sagittal slices [H, W] = (superior -> inferior,
anterior -> posterior), i.e. the spine vertical with the discs stacked and the patient facing left; axial
slices = (anterior -> posterior, patient right -> left), a cross-section seen from the feet (radiological
convention, patient's left on the image right). A point with normalised (depth, row, col) lies on slice
round(depth * (D - 1)) at pixel (row * (H - 1), col * (W - 1)).
"""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lumbar_jax import labels  # noqa: E402
from lumbar_jax.analysis import plots  # noqa: E402
from lumbar_jax.analysis.label_stats import short_name  # noqa: E402
from lumbar_jax.data import study  # noqa: E402
from lumbar_jax.data.dicom_geometry import CANONICAL_DIRECTIONS  # noqa: E402

log = logging.getLogger(__name__)

MAX_SLICES = 3  # panels per series: enough to see every plane the points are on, few enough to read

# The canonical orientation of docs/conventions.md section 3: per plane, for volume axes (depth, rows, cols),
# the anatomy at index 0 and at the last index.
# Per LPS world axis (x, y, z): the words at its negative and positive ends.
_LPS_ENDS = (("patient right", "patient left"), ("anterior", "posterior"), ("inferior", "superior"))


def _axis_ends(direction: np.ndarray) -> tuple[str, str]:
    """(word at the start, word at the end) of a canonical axis running along the LPS unit `direction`."""
    k = int(np.argmax(np.abs(direction)))
    negative, positive = _LPS_ENDS[k]
    return (negative, positive) if direction[k] > 0 else (positive, negative)


# Per plane, (start word, end word) of the canonical axes (depth, rows, cols), read off the reader's own table.
CANONICAL_AXES = {plane: tuple(_axis_ends(d) for d in directions)
                  for plane, directions in CANONICAL_DIRECTIONS.items()}
SHORT_WORDS = {"patient right": "pat. R", "patient left": "pat. L", "superior": "sup", "inferior": "inf",
               "anterior": "ant", "posterior": "post"}


def axis_words(plane: str, mirrored: bool = False) -> dict[str, tuple[str, str]]:
    """Where each anatomical direction lies on a drawn slice of a `plane` volume (imshow: row 0 at the top,
    col 0 at the left): {'vertical': (word at the top, word at the bottom), 'horizontal': (word at the left,
    word at the right)}, short words (SHORT_WORDS), from CANONICAL_AXES' rows and cols. `mirrored`: the slice
    of a left target's crop (data/crops.py), reversed along the patient's right -> left axis, so where that axis
    is in the slice (axial cols) its words swap sides."""
    _, rows, cols = (tuple(reversed(ends)) if mirrored and "patient right" in ends else ends
                     for ends in CANONICAL_AXES[plane])
    return {"vertical": tuple(SHORT_WORDS[w] for w in rows), "horizontal": tuple(SHORT_WORDS[w] for w in cols)}


def orientation_labels(ax, plane: str, mirrored: bool = False) -> None:
    """The direction words at the ends of a panel's edges: left of the image at its top and bottom (rotated),
    under it at its left and right (`axis_words`)."""
    words = axis_words(plane, mirrored)
    top, bottom = words["vertical"]
    left, right = words["horizontal"]
    style = dict(transform=ax.transAxes, fontsize=8, color="black")
    ax.text(-0.03, 1.0, top, rotation=90, ha="right", va="top", **style)
    ax.text(-0.03, 0.0, bottom, rotation=90, ha="right", va="bottom", **style)
    ax.text(0.0, -0.03, left, ha="left", va="top", **style)
    ax.text(1.0, -0.03, right, ha="right", va="top", **style)


def load_examples(kaggle_dir: str, num_studies: int, volume_shape: tuple[int, int, int] = (16, 64, 64),
                  progress: bool = True) -> list[dict]:
    """The records of the first `num_studies` train studies (by study_id) that have label coordinates.

    Reads DICOMs (the slow part: about a second per study), so it shows a progress bar. A study whose
    coordinates all fail to map (record coords all -1) is skipped and the next one taken.
    """
    entries = [e for e in study.list_studies(kaggle_dir, "train") if e.annotations]
    examples: list[dict] = []
    with tqdm(total=num_studies, desc="montage: reading studies", unit="study", disable=not progress) as bar:
        for entry in entries:
            if len(examples) >= num_studies:
                break
            example = study.study_example(entry, tuple(volume_shape))
            if (example["coords_series"] >= 0).any():
                examples.append(example)
                bar.update()
            else:
                log.info("study %s: no label coordinate maps into its volumes, not shown", entry.study_id)
    if len(examples) < num_studies:
        log.warning("only %d studies with label coordinates found (asked for %d)", len(examples), num_studies)
    return examples


def point_slice(example: dict, target: int) -> int:
    """The slice index of a target's annotated point in the volume it was annotated on: round(depth * (D - 1))."""
    depth = example[labels.SERIES_TYPES[int(example["coords_series"][target])]].shape[0]
    return int(round(float(example["coords"][target, 0]) * (depth - 1)))


def slices_to_show(example: dict, kind: int, max_slices: int = MAX_SLICES) -> list[tuple[int, list[int]]]:
    """The slices of series type `kind` to draw and the targets drawn on each.

    A point is drawn on its own slice or, hollow, on a shown neighbour (+-1 slice): a tilted spine spreads
    the five levels of one side over two adjacent sagittal slices, and one panel should still show them all.
    Slices are chosen greedily among the annotated ones: most not-yet-drawn points within +-1, then farthest
    from the slices already chosen (so that 3 of 5 axial levels are the first, last and middle one), then
    most points exactly on it, then lowest index; at most `max_slices`.

    Returns [(slice index, [target indices])] sorted by slice; points farther than one slice from every
    shown slice are not drawn. A present series without any annotated point gets its middle slice with no
    target; an absent series gets [].
    """
    if not example["present"][kind]:
        return []
    depth = example[labels.SERIES_TYPES[kind]].shape[0]
    where = {int(t): point_slice(example, int(t)) for t in np.flatnonzero(example["coords_series"] == kind)}
    if not where:
        return [(depth // 2, [])]
    remaining, chosen = set(where), []
    while remaining and len(chosen) < max_slices:
        def key(s: int) -> tuple:
            near = sum(abs(where[t] - s) <= 1 for t in remaining)
            exact = sum(where[t] == s for t in remaining)
            spread = min((abs(s - c) for c in chosen), default=depth)
            return near, spread, exact, -s
        best = max(sorted(set(where.values()) - set(chosen)), key=key, default=None)
        if best is None or key(best)[0] == 0:
            break
        chosen.append(best)
        remaining -= {t for t in remaining if abs(where[t] - best) <= 1}
    drawn: dict[int, list[int]] = {s: [] for s in chosen}
    for t, s in where.items():  # each point on the nearest shown slice (its own when shown)
        nearest = min(chosen, key=lambda c: (abs(c - s), c))
        if abs(nearest - s) <= 1:
            drawn[nearest].append(t)
    return [(s, sorted(drawn[s])) for s in sorted(chosen)]


def _draw_points(ax, example: dict, targets: list[int], index: int, height: int, width: int, plane: str) -> None:
    """Markers coloured by the target's severity label (hollow when the point lies on a neighbouring slice),
    each with its short name beside it. Sagittal: all names on the side of the slice with more room (the
    points of one slice form a vertical column); axial: each name outward, away from the midline."""
    cols = [float(example["coords"][t, 2]) for t in targets]
    for t, col in zip(targets, cols):
        row = float(example["coords"][t, 1])
        y, x = row * (height - 1), col * (width - 1)
        code = int(example["labels"][t])
        colour = plots.CLASS_COLOURS[code] if code >= 0 else plots.MISSING_COLOUR
        on_slice = point_slice(example, t) == index
        ax.plot(x, y, "o", ms=5 if on_slice else 6, mfc=colour if on_slice else "none", mec=colour if not on_slice
                else "white", mew=0.8 if on_slice else 1.6)
        right = np.mean(cols) < 0.5 if plane == "sagittal" else col >= 0.5
        ax.annotate(short_name(t), (x, y), xytext=(5 if right else -5, 0), textcoords="offset points",
                    ha="left" if right else "right", va="center", fontsize=6.5, color="white",
                    bbox=dict(boxstyle="round,pad=0.12", fc="black", ec="none", alpha=0.55))


def plot_study(example: dict, path: str, max_slices: int = MAX_SLICES) -> str:
    """One PNG per study: a row per series type (labels.SERIES_TYPES order), a panel per slice through its
    annotated points (at most `max_slices`), points drawn and named; an absent series is one blank panel
    titled 'absent'."""
    rows = len(labels.SERIES_TYPES)
    fig, axes = plt.subplots(rows, max_slices, figsize=(3.4 * max_slices, 3.6 * rows), squeeze=False)
    for kind, series_type in enumerate(labels.SERIES_TYPES):
        shown = slices_to_show(example, kind, max_slices)
        volume = example[series_type]
        depth, height, width = volume.shape
        for c in range(max_slices):
            ax = axes[kind, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if not shown:
                if c == 0:
                    ax.set_facecolor("#f0f0f0")
                    ax.set_title(f"{series_type}: absent", fontsize=9)
                    ax.text(0.5, 0.5, "absent", transform=ax.transAxes, ha="center", va="center", color="grey")
                else:
                    ax.axis("off")
                continue
            if c >= len(shown):
                ax.axis("off")
                continue
            index, targets = shown[c]
            ax.imshow(volume[index], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            _draw_points(ax, example, targets, index, height, width, study.PLANE_OF_SERIES[series_type])
            nearby = sum(point_slice(example, t) != index for t in targets)
            ax.set_title(f"{series_type}  slice {index}/{depth - 1}  ({len(targets)} pts"
                         + (f", {nearby} from +-1 slice)" if nearby else ")"), fontsize=9)
            orientation_labels(ax, study.PLANE_OF_SERIES[series_type])
    legend = [Line2D([], [], ls="", marker="o", mfc=c, mec="white", label=n)
              for c, n in zip((*plots.CLASS_COLOURS, plots.MISSING_COLOUR), (*labels.SEVERITY_NAMES, "no label"))]
    legend.append(Line2D([], [], ls="", marker="o", mfc="none", mec="black", mew=1.4,
                         label="hollow: point on the neighbouring slice"))
    fig.legend(handles=legend, loc="lower center", ncol=5, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.01))
    fig.suptitle(f"study {example['study_id']}: canonical volumes {tuple(volume.shape)} with label coordinates",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.02, 1, 0.98))
    return plots.save_figure(fig, path)
