"""The figures read right: montage orientation words against the canonical axes (docs/conventions.md section 3)
and where they are drawn, attention overlay titles / colour bar, calibration's sparse bins, report numbering."""

import os
import re

import numpy as np
import pytest

from lumbar_jax import labels as labels_lib
from lumbar_jax.analysis import attention, montage, oof, plots, report
from lumbar_jax.data import grid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def captured(monkeypatch):
    """The figures the plotting functions would save, kept open (and closed at the end)."""
    figures = []

    def keep(fig, path):
        fig.canvas.draw()
        figures.append(fig)
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    yield figures
    import matplotlib.pyplot as plt
    for fig in figures:
        plt.close(fig)


def _conventions_table() -> dict[str, list[tuple[str, str]]]:
    """docs/conventions.md section 3's table: {plane: [(start, end) of depth, rows, cols]}."""
    text = open(os.path.join(REPO, "docs", "conventions.md")).read()
    table = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].split(" ")[0] in ("sagittal", "axial") and "->" in cells[1]:
            axes = []
            for cell in cells[1:]:
                start, end = (part.strip() for part in re.sub(r"\(.*?\)", "", cell).split("->"))
                axes.append((start, end))
            table[cells[0].split(" ")[0]] = axes
    return table


def _anatomy(word: str) -> str:
    """'patient right', 'right', 'superior', ... -> one canonical word."""
    return word.replace("patient ", "")


def test_canonical_axes_match_the_conventions_table():
    table = _conventions_table()
    assert set(table) == {"sagittal", "axial"}
    for plane, axes in table.items():
        ours = [tuple(_anatomy(w) for w in pair) for pair in montage.CANONICAL_AXES[plane]]
        assert ours == [tuple(_anatomy(w) for w in pair) for pair in axes], plane


def test_axis_words_are_at_the_ends_where_the_anatomy_is():
    # imshow draws row 0 at the top and col 0 at the left: the start of rows is the top, of cols the left.
    assert montage.axis_words("sagittal") == {"vertical": ("sup", "inf"), "horizontal": ("ant", "post")}
    assert montage.axis_words("axial") == {"vertical": ("ant", "post"), "horizontal": ("pat. R", "pat. L")}
    # Independently of the table: the sagittal layout is grid.GRID_DIRECTIONS (LPS); the end of rows points
    # to -z (inferior), the end of cols to +y (posterior).
    assert grid.GRID_DIRECTIONS[1].tolist() == [0, 0, -1] and grid.GRID_DIRECTIONS[2].tolist() == [0, 1, 0]


def test_mirrored_crops_swap_the_words_of_the_right_left_axis_where_it_is_in_the_slice():
    # Axial cols run patient right -> left: a left target's mirrored crop has the patient's left on the image left.
    assert montage.axis_words("axial", mirrored=True) == {"vertical": ("ant", "post"),
                                                          "horizontal": ("pat. L", "pat. R")}
    # Sagittal crops are mirrored across their slices: the slice drawn keeps its words.
    assert montage.axis_words("sagittal", mirrored=True) == montage.axis_words("sagittal")


def _fake_example() -> dict:
    """A study record with every series present: spinal points on sagittal T2, foraminal on T1, subarticular
    on axial T2 (one axial slice per level)."""
    rng = np.random.default_rng(0)
    shape = (16, 32, 32)
    coords = np.zeros((labels_lib.NUM_TARGETS, 3), np.float32)
    series = np.zeros(labels_lib.NUM_TARGETS, np.int64)
    for t in range(labels_lib.NUM_TARGETS):
        condition, level = t // labels_lib.NUM_LEVELS, int(labels_lib.TARGET_LEVEL[t])
        if condition == 0:
            series[t], coords[t] = 1, (0.5, 0.15 + 0.17 * level, 0.6)
        elif condition in (1, 2):
            series[t], coords[t] = 0, (0.2 if condition == 2 else 0.8, 0.15 + 0.17 * level, 0.55)
        else:
            series[t], coords[t] = 2, (0.1 + 0.2 * level, 0.6, 0.35 if condition == 4 else 0.65)
    example = {name: rng.integers(0, 255, shape, dtype=np.uint8) for name in labels_lib.SERIES_TYPES}
    example.update(study_id=1, present=np.ones(3, bool), coords=coords, coords_series=series,
                   labels=rng.integers(-1, 3, labels_lib.NUM_TARGETS))
    return example


def test_montage_words_are_drawn_at_the_ends_of_each_panel(captured, tmp_path):
    montage.plot_study(_fake_example(), str(tmp_path / "m.png"))
    (fig,) = captured
    renderer = fig.canvas.get_renderer()
    words = set(montage.SHORT_WORDS.values())
    panels = 0
    for ax in fig.axes:
        if not ax.images:
            continue
        panels += 1
        plane = "axial" if "axial" in ax.get_title() else "sagittal"
        expected = montage.axis_words(plane)
        box = ax.get_window_extent(renderer)
        texts = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts if t.get_text() in words}
        (top, bottom), (left, right) = expected["vertical"], expected["horizontal"]
        assert set(texts) == {top, bottom, left, right}, ax.get_title()
        # Display coordinates: y grows upwards. Vertical words left of the image, at its top / bottom end.
        for word in (top, bottom):
            assert texts[word].x1 <= box.x0 + 1
        assert texts[top].y0 > box.y0 + 0.6 * box.height and texts[top].y1 <= box.y1 + 1
        assert texts[bottom].y1 < box.y0 + 0.4 * box.height and texts[bottom].y0 >= box.y0 - 1
        # Horizontal words under the image, at its left / right end.
        for word in (left, right):
            assert texts[word].y1 <= box.y0 + 1
        assert texts[left].x1 < box.x0 + 0.4 * box.width and texts[left].x0 >= box.x0 - 1
        assert texts[right].x0 > box.x0 + 0.6 * box.width and texts[right].x1 <= box.x1 + 1
    assert panels >= 3


def _fake_layout(volume_shape, grid_shape=(4, 8, 8)) -> dict:
    idx = np.stack(np.meshgrid(*[np.arange(g) for g in grid_shape], indexing="ij"), -1).reshape(-1, 3)
    centre = (idx + 0.5) / np.asarray(grid_shape)
    series = np.repeat(np.arange(len(labels_lib.SERIES_TYPES)), len(idx))
    return {"series": series, "centres": np.tile(centre, (len(labels_lib.SERIES_TYPES), 1)), "grids": [grid_shape],
            "volume_shape": volume_shape}


def test_attention_overlay_titles_probabilities_and_colour_bar(captured, tmp_path):
    example = _fake_example()
    layout = _fake_layout(example["axial_t2"].shape)
    rng = np.random.default_rng(1)
    weights = rng.random((labels_lib.NUM_TARGETS, len(layout["series"])))
    probs = rng.dirichlet(np.ones(3), labels_lib.NUM_TARGETS)
    _, distances = attention.plot_query_attention(example, probs, weights / weights.sum(-1, keepdims=True), layout,
                                                  str(tmp_path / "a.png"), "study 1")
    assert len(distances) == labels_lib.NUM_TARGETS
    (fig,) = captured
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.images and ax.get_title()]
    assert len(panels) == labels_lib.NUM_TARGETS
    bars = [ax for ax in fig.axes if ax not in panels]
    assert len(bars) == 1 and "maximum" in bars[0].get_ylabel()
    titles = []
    for ax in panels:
        title = ax.title
        assert title.get_fontsize() >= 8
        assert re.search(r"P N/M \.\d\d  Mod \.\d\d  Sev \.\d\d", title.get_text()), title.get_text()
        titles.append(title.get_window_extent(renderer))
    for i, a in enumerate(titles):  # no title overlaps another title or any panel
        for j, b in enumerate(titles):
            assert i == j or not a.overlaps(b)
        for ax in panels:
            assert not a.overlaps(ax.get_window_extent(renderer))
    assert sorted(ax.get_title().splitlines()[1] for ax in panels) == sorted(map(attention.probability_text, probs))
    assert "100%" in fig._suptitle.get_text()


def test_calibration_leaves_sparse_bins_out_of_the_curve(captured, tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (40, labels_lib.NUM_TARGETS))
    probs = rng.dirichlet(np.ones(3), (40, labels_lib.NUM_TARGETS))
    bins = {g: oof.calibration_bins(labels, probs, g) for g in labels_lib.CONDITION_GROUPS}
    plots.reliability_diagrams(bins, str(tmp_path / "c.png"))
    (fig,) = captured
    top = fig.axes[0]  # first group's reliability panel
    data = bins[next(iter(bins))]
    for k, name in enumerate(labels_lib.SEVERITY_NAMES):
        (line,) = [ln for ln in top.get_lines() if ln.get_label() == name]
        enough = data["count"][k] >= plots.MIN_BIN_ROWS
        assert len(line.get_xdata()) == enough.sum()
        np.testing.assert_allclose(line.get_xdata(), data["mean_pred"][k, enough])
    assert ((data["count"] > 0) & (data["count"] < plots.MIN_BIN_ROWS)).any()  # the case is exercised
    legend = [t.get_text() for t in top.get_legend().get_texts()]
    assert any(f"< {plots.MIN_BIN_ROWS} rows" in t for t in legend)


def test_headings_are_numbered_in_order():
    lines = ["# Report\n", "## Labels\n", "text", "## Correlation\n", "### Left vs right\n", "## Run\n",
             "### Scores\n", "### Calibration\n"]
    assert report.number_headings(lines) == [
        "# Report\n", "## 1. Labels\n", "text", "## 2. Correlation\n", "### 2.1 Left vs right\n", "## 3. Run\n",
        "### 3.1 Scores\n", "### 3.2 Calibration\n"]
