"""Matplotlib figures of the analysis report: each function draws one PNG and returns its path.

Agg backend (no display on the development machines, docs/conventions.md section 6). Inputs are the outputs of
`label_stats` and `oof`; nothing here computes a statistic of its own beyond drawing it.
"""

from __future__ import annotations

import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from lumbar_jax import labels  # noqa: E402
from lumbar_jax.analysis.label_stats import short_name  # noqa: E402

CLASS_COLOURS = ("#4c9f70", "#f2a541", "#d1495b")  # normal_mild, moderate, severe
MISSING_COLOUR = "#b0b0b0"
DPI = 110
MIN_BIN_ROWS = 10  # calibration bins with fewer rows are too noisy to read: drawn grey, not joined


def save_figure(fig, path: str) -> str:
    """Write a figure as PNG (creating its folder), close it so that figures do not pile up, return path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def target_grid(panel: float, gaps: tuple[float, float], margins: tuple[float, float, float, float],
                label_size: int, label_offset: float):
    """A figure of 5 x 5 square panels (levels x conditions) laid out in inches: `panel` the side of a panel,
    `gaps` (x, y) between panels, `margins` (left, right, header, bottom); each condition named `label_offset`
    inches above its column and each level beside its row, in `label_size` points. -> (fig, axes [5, 5], width,
    height in inches)."""
    (gap_x, gap_y), (left, right, header, bottom) = gaps, margins
    width = left + labels.NUM_CONDITIONS * panel + (labels.NUM_CONDITIONS - 1) * gap_x + right
    height = header + labels.NUM_LEVELS * panel + (labels.NUM_LEVELS - 1) * gap_y + bottom
    fig, axes = plt.subplots(labels.NUM_LEVELS, labels.NUM_CONDITIONS, figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - header / height, bottom=bottom / height,
                        wspace=gap_x / panel, hspace=gap_y / panel)
    for c, name in enumerate(labels.CONDITIONS):
        axes[0, c].annotate(textwrap.fill(name.replace("_", " "), 22), (0.5, 1 + label_offset / panel),
                            xycoords="axes fraction", ha="center", va="bottom", fontsize=label_size, weight="bold",
                            annotation_clip=False)
    for level, name in enumerate(labels.LEVEL_CSV_NAMES):
        axes[level, 0].set_ylabel(name, fontsize=label_size, weight="bold")
    return fig, axes, width, height


def label_distribution(table: pd.DataFrame, path: str) -> str:
    """Stacked bars of class and missing counts: one panel per condition, the 5 levels along x.

    table: `label_stats.label_distribution` output (25 rows in TARGETS order).
    """
    fig, axes = plt.subplots(1, labels.NUM_CONDITIONS, figsize=(3.2 * labels.NUM_CONDITIONS, 3.8), sharey=True)
    columns = (*labels.SEVERITY_COLUMNS, "missing")
    names = (*labels.SEVERITY_NAMES, "missing")
    colours = (*CLASS_COLOURS, MISSING_COLOUR)
    x = np.arange(labels.NUM_LEVELS)
    for c, ax in enumerate(axes):
        part = table.iloc[c * labels.NUM_LEVELS:(c + 1) * labels.NUM_LEVELS]
        bottom = np.zeros(labels.NUM_LEVELS)
        for column, name, colour in zip(columns, names, colours):
            values = part[column].to_numpy(float)
            ax.bar(x, values, bottom=bottom, color=colour, label=name, width=0.75)
            bottom += values
        ax.set_xticks(x, labels.LEVEL_CSV_NAMES, rotation=45)
        ax.set_title(labels.CONDITION_CSV_NAMES[c], fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("studies")
    handles, labels_ = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels_, loc="upper center", ncol=4, bbox_to_anchor=(0.5, 1.06), frameon=False)
    fig.suptitle("Label distribution per condition and level", y=1.12)
    return save_figure(fig, path)


def _condition_separators(ax, size: int) -> None:
    for b in range(labels.NUM_LEVELS, size, labels.NUM_LEVELS):
        ax.axhline(b - 0.5, color="black", lw=0.8)
        ax.axvline(b - 0.5, color="black", lw=0.8)


def correlation_heatmap(rho: np.ndarray, counts: np.ndarray, path: str) -> str:
    """Two 25x25 heatmaps: Spearman rho between targets (pairwise exclusion of missing labels, values
    printed) and the number of studies each pair uses. rho, counts [25, 25] from `pairwise_spearman`."""
    names = [short_name(t) for t in range(labels.NUM_TARGETS)]
    fig, axes = plt.subplots(1, 2, figsize=(22, 10.5), gridspec_kw={"wspace": 0.35})
    ax = axes[0]
    # Symmetric colour range around 0 fitted to the off-diagonal values (label correlations are small; a
    # -1..1 scale would wash them out); the diagonal is clipped to it.
    off = np.abs(rho[~np.eye(len(rho), dtype=bool)])
    limit = float(np.clip(np.ceil(np.nanmax(off, initial=0.1) * 10) / 10, 0.1, 1.0))
    image = ax.imshow(np.ma.masked_invalid(rho), cmap="RdBu_r", vmin=-limit, vmax=limit)
    for i in range(labels.NUM_TARGETS):
        for j in range(labels.NUM_TARGETS):
            if i != j and np.isfinite(rho[i, j]):
                ax.text(j, i, f"{rho[i, j]:.2f}".replace("0.", "."), ha="center", va="center", fontsize=5.5,
                        color="white" if abs(rho[i, j]) > 0.7 * limit else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label=f"Spearman rho (colour clipped to +-{limit:.1f})")
    ax.set_title("Spearman rank correlation of severity codes (missing excluded pairwise)")
    ax = axes[1]
    image = ax.imshow(counts, cmap="viridis")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="studies labelled on both targets")
    ax.set_title(f"Pair counts (min {counts.min()}, max {counts.max()})")
    for ax in axes:
        ax.set_xticks(range(labels.NUM_TARGETS), names, rotation=90, fontsize=7)
        ax.set_yticks(range(labels.NUM_TARGETS), names, fontsize=7)
        _condition_separators(ax, labels.NUM_TARGETS)
    return save_figure(fig, path)


def reliability_diagrams(bins_per_group: dict[str, dict], path: str, min_rows: int = MIN_BIN_ROWS) -> str:
    """Per condition group (columns): the reliability curve of each severity class (top; diagonal =
    calibrated, marker area ~ bin count) and the bin counts on a log scale (bottom). Bins with fewer than
    `min_rows` rows are left out of the curve and drawn as small grey hollow markers (said in the legend);
    their count bars are grey too.

    bins_per_group: {group: `oof.calibration_bins` output}.
    """
    groups = list(bins_per_group)
    fig, axes = plt.subplots(2, len(groups), figsize=(4.6 * len(groups), 7.2), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1.3], "hspace": 0.3})
    for g, group in enumerate(groups):
        data = bins_per_group[group]
        edges, centres = data["edges"], (data["edges"][:-1] + data["edges"][1:]) / 2
        width = (edges[1] - edges[0]) / (labels.NUM_SEVERITIES + 1)
        top, bottom = axes[0, g], axes[1, g]
        top.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="calibrated")
        for k, (name, colour) in enumerate(zip(labels.SEVERITY_NAMES, CLASS_COLOURS)):
            count = data["count"][k]
            enough, sparse = count >= min_rows, (count > 0) & (count < min_rows)
            top.plot(data["mean_pred"][k, enough], data["observed"][k, enough], "-", color=colour, lw=1.2,
                     label=name)
            top.scatter(data["mean_pred"][k, enough], data["observed"][k, enough], color=colour, zorder=3,
                        s=12 + 60 * np.sqrt(count[enough] / max(data["count"].max(), 1)))
            top.scatter(data["mean_pred"][k, sparse], data["observed"][k, sparse], facecolors="none",
                        edgecolors=MISSING_COLOUR, s=14, lw=0.9, zorder=2)
            bottom.bar(centres + (k - 1) * width, count, width=width, log=True,
                       color=[colour if n >= min_rows else MISSING_COLOUR for n in count])
        top.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", title=f"{group}: {data['count'][0].sum()} rows",
                xlabel="mean predicted probability", ylabel="observed frequency")
        top.grid(alpha=0.3)
        bottom.yaxis.set_minor_formatter(NullFormatter())  # decade labels only
        bottom.axhline(min_rows, color=MISSING_COLOUR, ls=":", lw=1)
        bottom.set(xlim=(0, 1), xlabel="predicted probability bin", ylabel="rows (log)")
        bottom.grid(axis="y", alpha=0.3)
    handles, _ = axes[0, 0].get_legend_handles_labels()
    handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec=MISSING_COLOUR,
                          label=f"bin with < {min_rows} rows\n(grey, not joined)"))
    axes[0, 0].legend(handles=handles, loc="upper left", fontsize=8)
    fig.suptitle("OOF calibration per condition group (one-vs-rest per severity class)", y=0.95)
    return save_figure(fig, path)


def confusion_matrices(matrices: dict[str, np.ndarray], normalised: dict[str, np.ndarray], path: str) -> str:
    """Per condition group (columns): argmax-vs-true counts (top) and row-normalised rates (bottom).

    matrices, normalised: {group: [3, 3]} from `oof.confusion_matrix` / `oof.row_normalise`.
    """
    groups = list(matrices)
    fig, axes = plt.subplots(2, len(groups), figsize=(3.9 * len(groups), 7.4), squeeze=False,
                             gridspec_kw={"hspace": 0.45, "wspace": 0.45})
    ticks = ("Normal/\nMild", "Moderate", "Severe")
    for g, group in enumerate(groups):
        for r, (values, fmt, title) in enumerate(((matrices[group], "{:.0f}", "counts"),
                                                  (normalised[group], "{:.2f}", "row-normalised"))):
            ax = axes[r, g]
            shown = np.nan_to_num(values / max(values.max(), 1) if r == 0 else values)
            ax.imshow(shown, cmap="Blues", vmin=0, vmax=1)
            for i in range(labels.NUM_SEVERITIES):
                for j in range(labels.NUM_SEVERITIES):
                    text = "-" if not np.isfinite(values[i, j]) else fmt.format(values[i, j])
                    ax.text(j, i, text, ha="center", va="center", fontsize=10,
                            color="white" if shown[i, j] > 0.55 else "black")
            ax.set_xticks(range(3), ticks, fontsize=8)
            ax.set_yticks(range(3), ticks, fontsize=8)
            ax.set(xlabel="predicted (argmax)", ylabel="true", title=f"{group}: {title}")
    return save_figure(fig, path)


def fold_scores(table: pd.DataFrame, path: str) -> str:
    """Grouped bars per fold and OOF: the model's score, the class-prior baseline and the best constant
    (lower is better). table: `oof.fold_scores` output."""
    series = (("model", "model", "#3a6ea5"), ("baseline", "class-prior baseline", "#b0b0b0"),
              ("weighted_prior", "best constant (weighted prior)", "#7f7f7f"))
    x = np.arange(len(table))
    width = 0.27
    fig, ax = plt.subplots(figsize=(1.3 * len(table) + 3, 4))
    for s, (column, name, colour) in enumerate(series):
        values = table[column].to_numpy(float)
        bars = ax.bar(x + (s - 1) * width, values, width=width, color=colour, label=name)
        for bar, value in zip(bars, values):
            if np.isfinite(value):
                ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.3f}", ha="center", va="bottom",
                        fontsize=7, rotation=90)
    ax.set_xticks(x, table.index)
    ax.set_ylabel("competition score (lower is better)")
    top = np.nanmax(table[[c for c, _, _ in series]].to_numpy(float))
    ax.set_ylim(0, top * 1.25)
    ax.legend(loc="upper center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.1), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Validation score per fold and out-of-fold")
    return save_figure(fig, path)
