"""Writing a report's files: every file atomically (temporary name, then ``os.replace``), so a reader never sees a half file."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from matplotlib.figure import Figure

from study.report.figures import confusion_best_figure, folds_figure, heatmap_figure, history_figure, paired_folds_figure, write_png
from study.report.model import Report
from study.report.tables import folds_csv, table_csv
from study.report.text import format_report, not_strict_line
from trainables.atomic import atomic_write_text

logger = logging.getLogger(__name__)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "none"


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write ``report.md``, ``table.csv``, ``folds.csv`` and the PNGs under ``out_dir``; return the paths written.

    PNGs: ``heatmap_<pooling>.png`` per pooling with results, ``folds_best.png`` and
    ``confusion_best.png`` (only with a best configuration), ``paired_folds.png``
    (with a best configuration and baselines), ``history.png`` (only when some
    trial has an objective value). Each file is written atomically.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, text in (("report.md", format_report(report)), ("table.csv", table_csv(report)), ("folds.csv", folds_csv(report))):
        atomic_write_text(out_dir / name, text)
        written.append(out_dir / name)
    figures: list[tuple[str, Figure | None]] = [(f"heatmap_{_safe_name(p)}.png", heatmap_figure(report, p)) for p in report.poolings]
    figures += [("folds_best.png", folds_figure(report)), ("paired_folds.png", paired_folds_figure(report)), ("confusion_best.png", confusion_best_figure(report)), ("history.png", history_figure(report))]
    for name, figure in figures:
        if figure is None:
            logger.info("report %s: nothing to plot for %s", report.name, name)
            continue
        written.append(write_png(figure, out_dir / name))
    for message in report.messages:
        logger.warning("report %s: %s", report.name, message)
    flag = not_strict_line(report)
    if flag:
        logger.warning("report %s: %s", report.name, flag)
    logger.info("report %s written to %s (%d files)", report.name, out_dir, len(written))
    return written
