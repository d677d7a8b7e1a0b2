"""The report's figures: heatmaps of the table, per-fold bars, the pooled confusion matrix, the search history.

Figures are drawn on matplotlib's Agg canvas without pyplot, so they are safe
in worker processes.
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from study.report.compare import pair_key
from study.report.model import PAPER_METHOD, Report, as_float, better, finite, group_cells, sort_value
from study.report.text import describe_params, param_text
from trainables.atomic import atomic_file

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas (no pyplot state, safe in worker processes)."""
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure) -> bytes:
    """The figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def write_png(figure: Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` atomically."""
    data = figure_png(figure)
    with atomic_file(path, "wb") as handle:
        handle.write(data)
    return path


def pooled_confusion(folds: Sequence[Mapping[str, Any]], split: str = "test") -> np.ndarray | None:
    """The sum of the folds' confusion matrices of ``split`` (None when no fold has one)."""
    total: np.ndarray | None = None
    for fold in folds:
        matrix = (fold.get(split) or {}).get("confusion")
        if not matrix:
            continue
        array = np.asarray(matrix, dtype=np.int64)
        if total is None:
            total = array.copy()
        elif total.shape == array.shape:
            total += array
        else:
            logger.warning("skipping a %s confusion matrix of shape %s (expected %s)", split, array.shape, total.shape)
    return total


def confusion_figure(matrix: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Figure:
    """A row-normalised confusion matrix (recall per true class) annotated with percent and counts."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = counts.shape[0]
    names = list(classes) if len(classes) == n else [str(i) for i in range(n)]
    support = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, support, out=np.zeros(counts.shape, dtype=float), where=support > 0)
    figure = new_figure(1.2 * n + 2.0, 1.1 * n + 1.5)
    ax = figure.subplots()
    image = ax.imshow(normalised, vmin=0.0, vmax=1.0, cmap="Blues")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    for i in range(n):
        for j in range(n):
            colour = "white" if normalised[i, j] > 0.5 else "black"
            ax.text(j, i, f"{100 * normalised[i, j]:.1f}%\n({counts[i, j]})", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(n), names)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return figure


def heatmap_figure(report: Report, pooling: str) -> Figure | None:
    """Test UA mean over layer x clusters for one pooling (best trial by the objective per cell)."""
    cells = group_cells([t for t in report.of_method(PAPER_METHOD) if str(t.params.get("pooling")) == pooling], ("layer", "clusters"), report.objective_mode)
    values = {key: cell.ua_mean for key, by_pooling in cells.items() for cell in by_pooling.values()}
    if not any(finite(v) for v in values.values()):
        return None
    layers = sorted({k[0] for k in values}, key=sort_value)
    clusters = sorted({k[1] for k in values}, key=sort_value)
    grid = np.full((len(layers), len(clusters)), np.nan)
    for (layer, k), value in values.items():
        grid[layers.index(layer), clusters.index(k)] = 100 * value
    figure = new_figure(1.1 * len(clusters) + 2.5, 0.8 * len(layers) + 1.8)
    ax = figure.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=ax, label="test UA (%)")
    shown = grid[np.isfinite(grid)]
    middle = (shown.min() + shown.max()) / 2 if shown.size else 0.0
    for i in range(len(layers)):
        for j in range(len(clusters)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="black" if grid[i, j] > middle else "white")
    ax.set_xticks(range(len(clusters)), [param_text(k) for k in clusters])
    ax.set_yticks(range(len(layers)), [param_text(layer) for layer in layers])
    ax.set_xlabel("clusters K")
    ax.set_ylabel("layer")
    suffix = " (best mask ratio per cell)" if "mask_ratio" in report.row_fields else ""
    ax.set_title(f"{report.name}: test UA mean, {pooling} pooling{suffix}")
    return figure


def folds_figure(report: Report) -> Figure | None:
    best = report.best
    if best is None or not best.folds:
        return None
    folds = best.folds
    series = [("val UA", "val", "ua"), ("test UA", "test", "ua"), ("test WA", "test", "wa")]
    x = np.arange(len(folds))
    width = 0.8 / len(series)
    figure = new_figure(max(4.0, 1.4 * len(folds) + 2.0), 3.8)
    ax = figure.subplots()
    for index, (label, split, key) in enumerate(series):
        heights = [100 * as_float((fold.get(split) or {}).get(key)) for fold in folds]
        ax.bar(x + (index - (len(series) - 1) / 2) * width, heights, width, label=label)
    ax.set_xticks(x, [f"session {fold.get('test_session', '?')}" for fold in folds])
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Best: {describe_params(best.params)}", fontsize=9)
    return figure


def paired_folds_figure(report: Report) -> Figure | None:
    """Test UA per fold (and seed) of the best candidate and of each baseline, the points of one fold joined: the paired comparison drawn."""
    best = report.best
    if best is None or not best.folds or not report.baselines:
        return None
    keys = sorted({pair_key(fold) for fold in best.folds})
    labels = [f"s{session}" + (f"/seed {seed}" if len({k[1] for k in keys}) > 1 else "") for session, seed in keys]
    series = [("best: " + describe_params(best.params), best)] + [(b.method, b) for b in report.baselines]
    figure = new_figure(max(5.0, 0.9 * len(series) + 4.0), 4.0)
    ax = figure.subplots()
    for index, key in enumerate(keys):
        points = [100 * as_float(next(((f.get("test") or {}).get("ua") for f in record.folds if pair_key(f) == key), math.nan)) for _, record in series]
        ax.plot(range(len(series)), points, color="grey", alpha=0.5, zorder=1)
        ax.scatter(range(len(series)), points, zorder=2, label=labels[index])
    ax.set_xticks(range(len(series)), [name if len(name) < 28 else name[:25] + "..." for name, _ in series], rotation=15, fontsize=8)
    ax.set_ylabel("test UA (%)")
    ax.legend(title="fold", fontsize=7, loc="best")
    ax.set_title(f"{report.name}: test UA per fold, best candidate and baselines", fontsize=9)
    return figure


def confusion_best_figure(report: Report) -> Figure | None:
    best = report.best
    if best is None:
        return None
    matrix = pooled_confusion(best.folds, "test")
    if matrix is None:
        return None
    return confusion_figure(matrix, best.classes, f"Best ({best.trial_id}): test sets of {len(best.folds)} folds pooled")


def history_figure(report: Report) -> Figure | None:
    trials = [t for t in sorted(report.trials, key=lambda t: t.order) if finite(t.objective)]
    if not trials:
        return None
    figure = new_figure(6.0, 3.6)
    ax = figure.subplots()
    positions = {t.trial_id: i + 1 for i, t in enumerate(sorted(report.trials, key=lambda t: t.order))}
    done = [t for t in trials if t.complete]
    other = [t for t in trials if not t.complete]
    if done:
        ax.scatter([positions[t.trial_id] for t in done], [t.objective for t in done], label="complete trial", zorder=3)
    if other:
        ax.scatter([positions[t.trial_id] for t in other], [t.objective for t in other], marker="x", color="grey", label="partial / error", zorder=3)
    running: list[tuple[int, float]] = []
    current = math.nan
    for trial in done:
        if better(trial.objective, current, report.objective_mode):
            current = trial.objective
        running.append((positions[trial.trial_id], current))
    if running:
        ax.step([p for p, _ in running], [v for _, v in running], where="post", color="tab:red", label="running best")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (completion order)")
    ax.set_ylabel(f"{report.objective_metric} ({report.objective_mode})")
    ax.set_title(f"{report.name}: search history")
    ax.legend(fontsize=8)
    return figure
