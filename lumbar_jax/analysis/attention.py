"""Where the model looked: per-target attention overlays of a target-query model on a held-out study.

Each of the 25 target queries of the 'target_query' head attends over the spatial tokens of every series (ViT
patches and EfficientNet cells, `OneStageRestorer.query_attention` of pipelines/one_stage.py). Here that attention
is spread back over the voxels of each series (every key's weight evenly over its cell, so sources with different
cell sizes add up as densities) and drawn over the slice of the target's annotated point, with the annotated point
and the attention peak marked. The study is taken from a fold's held-out part and shown with that fold's best
checkpoint, so the picture is of a study the model did not train on.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from lumbar_jax import inference
from lumbar_jax import labels
from lumbar_jax.analysis import oof, plots
from lumbar_jax.data import study
from lumbar_jax.train import mesh as mesh_lib

log = logging.getLogger(__name__)

# What every overlay shows, said once in the report above the overlays.
ATTENTION_INTRO = (
    "Where each of the 25 target queries of fold 0's model looked in studies held out of fold 0. Each panel is "
    "the slice of the target's annotated point in the series it was annotated on (without a point: the series "
    "and slice of the attention peak), with the query's attention over that series as heat, relative to its "
    "maximum over the series (colour bar). Panel titles: the series and slice, the share of the query's "
    "attention on that series ('34% attn': 100% = it looked at nothing on the other two series), the predicted "
    "probabilities Normal/Mild, Moderate, Severe, the true grade and the distance from the attention peak "
    "(cyan +) to the annotated point (green o) in voxels.")


def attention_volumes(attention: np.ndarray, layout: dict, num_series: int) -> np.ndarray:
    """One query's attention over the keys float [K] -> attention density float [S, D, H, W] (sums to 1 over
    all series): each key's weight spread evenly over the voxels of its token cell."""
    volume_shape = tuple(layout["volume_shape"])
    heat = np.zeros((num_series, *volume_shape), np.float64)
    offset = 0
    for grid in layout["grids"]:
        size = num_series * math.prod(grid)
        cells = attention[offset:offset + size].reshape(num_series, *grid)
        offset += size
        for axis, (g, n) in enumerate(zip(grid, volume_shape)):  # cell g spans voxels [g n / G, (g + 1) n / G)
            cells = np.take(cells, np.arange(n) * g // n, axis=axis + 1) / (n / g)
        heat += cells
    return heat


def attention_peak(attention: np.ndarray, layout: dict, series: int) -> np.ndarray:
    """Voxel (depth, row, col) float [3] of the centre of the key on `series` with the most attention: the
    peak the held-out peak distance of training measures (train.loss.localisation_loss)."""
    on_series = np.asarray(layout["series"]) == series
    key = np.argmax(np.where(on_series, attention, -1.0))
    extent = np.array([max(n - 1, 1) for n in layout["volume_shape"]])
    return np.asarray(layout["centres"])[key] * extent


def probability_text(probs: np.ndarray) -> str:
    """A target's three predicted probabilities float [3] in one short line: 'P N/M .12 Mod .55 Sev .33'."""
    names = ("N/M", "Mod", "Sev")
    return "P " + "  ".join(f"{n} {p:.2f}".replace("0.", ".") for n, p in zip(names, probs))


def _panel(ax, record: dict, attention: np.ndarray, layout: dict, target: int, probs: np.ndarray):
    """Draw one target's panel (attention float [K] of its query, heat relative to the maximum over its series,
    so that 0..1 matches the figure's colour bar); returns (the heat image, the voxel distance from attention
    peak to annotated point or None)."""
    heat = attention_volumes(attention, layout, len(labels.SERIES_TYPES))
    kind = int(record["coords_series"][target])
    annotated = kind >= 0
    if not annotated:  # no annotated point: the series the query looked at most
        kind = int(np.argmax(heat.reshape(heat.shape[0], -1).sum(-1)))
    series_heat = heat[kind]
    volume = np.asarray(record[labels.SERIES_TYPES[kind]])
    extent = np.array([max(n - 1, 1) for n in volume.shape])
    peak = attention_peak(attention, layout, kind)
    point = np.asarray(record["coords"][target]) * extent if annotated else None
    index = int(round(point[0] if annotated else peak[0]))
    ax.imshow(volume[index], cmap="gray", interpolation="nearest")
    image = ax.imshow(series_heat[index] / max(series_heat.max(), 1e-30), cmap="inferno", alpha=0.5, vmin=0,
                      vmax=1, interpolation="bilinear")
    ax.plot(peak[2], peak[1], "+", color="cyan", ms=9, mew=1.8 if round(peak[0]) == index else 0.8)
    distance = None
    if annotated:
        ax.plot(point[2], point[1], "o", mfc="none", mec="lime", ms=7, mew=1.4)
        distance = float(np.linalg.norm(peak - point))
    label = int(record["labels"][target])
    truth = labels.SEVERITY_NAMES[label] if label >= 0 else "no label"
    mass = series_heat.sum()
    where = f"peak {distance:.1f} vox off" if annotated else "no point"
    ax.set_title(f"{labels.SERIES_TYPES[kind]} s{index}, {mass:.0%} attn\n{probability_text(probs[target])}\n"
                 f"true {truth}, {where}", fontsize=8, linespacing=1.25)
    ax.set_xticks([])
    ax.set_yticks([])
    return image, distance


def plot_query_attention(record: dict, probs: np.ndarray, attention: np.ndarray, layout: dict, path: str,
                         title: str) -> tuple[str, list[float]]:
    """A 5x5 grid (levels x conditions) of attention overlays for one study -> (PNG path, the peak-to-point
    distances in voxels of its annotated targets). attention float [25, K], probs float [25, 3].

    Each panel's title: the series and slice drawn and the share of the query's attention on that series,
    the three predicted probabilities, the true grade and the peak-to-point distance; one colour bar for all
    panels (heat relative to the maximum over the drawn series)."""
    # Square panels, room above each for its three-line title, a header for the suptitle and condition names,
    # a colour bar on the right.
    right, header, bottom = 1.2, 2.0, 0.15
    fig, axes, width, height = plots.target_grid(2.3, gaps=(0.25, 0.65), margins=(0.5, right, header, bottom),
                                                 label_size=11, label_offset=0.6)
    distances = []
    image = None
    for t in range(labels.NUM_TARGETS):
        ax = axes[labels.TARGET_LEVEL[t], labels.TARGET_CONDITION[t]]
        image, distance = _panel(ax, record, attention[t], layout, t, probs)
        if distance is not None:
            distances.append(distance)
    bar_height = 0.5 * (1 - (header + bottom) / height)
    bar = fig.colorbar(image, cax=fig.add_axes((1 - 0.95 * right / width, 0.5 - bar_height / 2 - header / height / 2
                                                + bottom / height / 2, 0.18 / width, bar_height)))
    bar.set_label("attention density on the slice / its maximum over the drawn series", fontsize=10)
    fig.suptitle(title + "\nheat: the target query's attention on the slice of the annotated point;  "
                 "green o: annotated point;  cyan +: attention peak (thin: peak on another slice)\n"
                 "'NN% attn': share of the query's attention on the drawn series (100% = all on it, none on the "
                 "other two);  P: predicted probabilities Normal/Mild, Moderate, Severe", fontsize=11,
                 y=1 - 0.1 / height, va="top")
    return plots.save_figure(fig, path), distances


def attention_sections(workdir: str, kaggle_dir: str, out_dir: str, num_studies: int = 1
                       ) -> list[tuple[str, str, str]]:
    """(title, PNG path, caption) of the attention overlays of the first `num_studies` held-out studies of
    fold 0 (by study id) that have every series and label coordinates; [] for a model without a
    target-query head."""
    config, pipeline = inference.load_run(workdir)  # cheap: decide before building a model
    if not pipeline.has_target_queries(config):
        log.info("%s: the %s model (fusion head %r) has no target queries; no attention overlays", workdir,
                 pipeline.name, config.model.fusion)
        return []
    oof_path, _ = oof.check_run_dir(workdir)
    oof_ids, _, folds = oof.read_oof(oof_path)
    held_out = set(oof_ids[folds == 0].tolist())
    restorer = pipeline.restorer(workdir, config, mesh_lib.make_mesh(1))
    model = restorer.restore(0)
    sections = []
    for entry in study.list_studies(kaggle_dir, "train"):
        if len(sections) >= num_studies:
            break
        if entry.study_id not in held_out or not entry.annotations:
            continue
        record = study.study_example(entry, tuple(config.model.volume_shape))
        if not record["present"].all() or (record["coords_series"] < 0).all():
            continue
        probs, attention, layout = restorer.query_attention(model, [record])
        png, distances = plot_query_attention(
            record, probs[0], attention[0], layout, os.path.join(out_dir, f"attention_{entry.study_id}.png"),
            f"study {entry.study_id}, held out in fold 0 (fold 0 model, step {model.step})")
        near = sum(d <= 4 for d in distances)
        caption = (f"Study {entry.study_id}, which fold 0's model (best checkpoint, step {model.step}) did not "
                   f"train on. Attention peak to annotated point: mean {np.mean(distances):.1f} voxels over "
                   f"{len(distances)} annotated targets, {near} within 4 voxels (volumes "
                   f"{tuple(config.model.volume_shape)}).")
        sections.append((f"Study {entry.study_id}", png, caption))
    return sections
