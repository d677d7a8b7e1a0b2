"""The study report: the paper-style table, the best configuration, CSVs and figures.

Pure functions over trial records (JSON dicts, see ``build_report``) and the
study metadata; no Ray, no MLflow. ``write_report`` writes every file
atomically (temporary name, then ``os.replace``), so a reader never sees a half
file.

Trial record (the parts used here)::

    {"trial_id": str, "params": {"layer", "clusters", "mask_ratio", "pooling"},
     "status": "complete" | "partial" | "error", "error": str | None,
     "protocol": {"strict": bool, "description": str}, "classes": [str, ...],
     "folds": [{"test_session": int, "seconds": float, "strict": bool,
                "val": {"ua", "wa", "macro_f1", "confusion", "count"}, "test": {...},
                "artifacts": {phase: key}, "built": [phase, ...], ...}, ...],
     "metrics": {"val_ua_mean": float, ...}, "folds_done": int, "folds_total": int,
     "started": float, "finished": float}

Study metadata: ``{"name", "study_dir", "objective": {"metric", "mode"},
"protocol": {...}, "data_fingerprint", "code_version"}``.
"""

from __future__ import annotations

import collections

import csv
import io
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from trainables.atomic import atomic_file, atomic_write_text
from trainables.metrics import aggregate

logger = logging.getLogger(__name__)

SEARCHED = ("layer", "clusters", "mask_ratio", "pooling")
SPLITS = ("val", "test")
FOLD_KEYS = ("ua", "wa", "macro_f1")
DEFAULT_OBJECTIVE = {"metric": "val_ua_mean", "mode": "max"}
_AGG_METRIC = re.compile(r"^(val|test)_(ua|wa|macro_f1)_(mean|std)$")
_MISSING = "-"


# ----------------------------------------------------------------------------
# Data model
# ----------------------------------------------------------------------------


@dataclass
class TrialSummary:
    """One trial as the report sees it: its record plus derived numbers."""

    trial_id: str
    params: dict[str, Any]
    status: str
    error: str | None
    strict: bool
    protocol: str
    folds_done: int
    folds_total: int | None
    metrics: dict[str, float]  # recorded aggregate metrics, completed from the folds where missing
    objective: float  # NaN when unknown
    order: int  # position in completion order (0 = first finished)
    record: dict[str, Any] = field(repr=False)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def folds(self) -> list[dict[str, Any]]:
        return list(self.record.get("folds") or [])

    @property
    def classes(self) -> list[str]:
        return list(self.record.get("classes") or [])


@dataclass
class Cell:
    """One cell of the paper table: the trial shown there and its test UA/WA over folds."""

    trial_id: str
    ua_mean: float
    ua_std: float
    wa_mean: float
    wa_std: float
    folds: int
    complete: bool
    candidates: int  # trials that fell into this cell (one is shown)

    def text(self) -> str:
        """``"UA mean ± std / WA mean ± std"`` in percent, one decimal; ``*`` marks an incomplete trial."""
        body = f"{_pct_pm(self.ua_mean, self.ua_std)} / {_pct_pm(self.wa_mean, self.wa_std)}"
        return body if self.complete else body + " *"


@dataclass
class TableRow:
    """One row of the paper table: its key (layer, clusters[, mask_ratio]) and a cell per pooling."""

    key: tuple[Any, ...]
    cells: dict[str, Cell]


@dataclass
class Report:
    """Everything the report files are made of."""

    name: str
    objective_metric: str
    objective_mode: str
    protocol: str
    strict: bool
    not_strict_trials: list[str]
    data_fingerprint: str | None
    code_version: str | None
    trials: list[TrialSummary]
    row_fields: tuple[str, ...]
    poolings: list[str]
    table: list[TableRow]
    best: TrialSummary | None
    messages: list[str]
    study: dict[str, Any] = field(repr=False)
    audit: str | None = None  # the leakage audit's verdict over the trials that carry one

    def counts(self) -> dict[str, int]:
        """Number of trials per status."""
        result: dict[str, int] = {}
        for trial in self.trials:
            result[trial.status] = result.get(trial.status, 0) + 1
        return result


# ----------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _float(value: Any) -> float:
    return float(value) if _finite(value) else math.nan


def fold_metrics(folds: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{split}_{ua,wa,macro_f1}_{mean,std}`` over ``folds`` (std 0 for one fold); empty without folds."""
    result: dict[str, float] = {}
    for split in SPLITS:
        per_fold = []
        for fold in folds:
            values = fold.get(split) or {}
            per_fold.append({key: _float(values.get(key)) for key in FOLD_KEYS})
        if per_fold:
            result.update({f"{split}_{key}": value for key, value in aggregate(per_fold, FOLD_KEYS).items()})
    return result


def trial_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The trial's aggregate metrics: the recorded ones, completed from its folds where missing."""
    metrics = fold_metrics(record.get("folds") or [])
    for key, value in (record.get("metrics") or {}).items():
        if _finite(value):
            metrics[key] = float(value)
    return metrics


def _protocol_of(record: Mapping[str, Any], study: Mapping[str, Any]) -> tuple[bool, str]:
    protocol = record.get("protocol") or study.get("protocol") or {}
    strict = bool(protocol.get("strict", True))
    if any(fold.get("strict") is False for fold in record.get("folds") or []):
        strict = False
    description = str(protocol.get("description") or ("strict" if strict else "NOT strict"))
    return strict, description


def _completion_order(trials: Sequence[Mapping[str, Any]]) -> list[int]:
    """Index of each trial in completion order (by ``finished``; unfinished ones last, in input order)."""

    def key(index: int) -> tuple[bool, float, int]:
        finished = trials[index].get("finished")
        return (not _finite(finished), float(finished) if _finite(finished) else 0.0, index)

    keyed = sorted(range(len(trials)), key=key)
    order = [0] * len(trials)
    for position, index in enumerate(keyed):
        order[index] = position
    return order


def _better(a: float, b: float, mode: str) -> bool:
    """Whether objective ``a`` beats ``b`` (NaN never wins)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if mode == "max" else a < b


def _sort_value(value: Any) -> tuple:
    if value is None:
        return (2, 0, "")
    if _finite(value):
        return (0, float(value), "")
    return (1, 0, str(value))


def _cell_preference(trial: TrialSummary, mode: str) -> tuple:
    """Sort key choosing the trial shown in a cell: complete first, then best objective, then most folds."""
    objective = trial.objective
    score = -math.inf if math.isnan(objective) else (objective if mode == "max" else -objective)
    return (not trial.complete, -score, -trial.folds_done, trial.order)


def _make_cell(trial: TrialSummary, candidates: int) -> Cell:
    m = trial.metrics
    return Cell(
        trial_id=trial.trial_id,
        ua_mean=m.get("test_ua_mean", math.nan),
        ua_std=m.get("test_ua_std", math.nan),
        wa_mean=m.get("test_wa_mean", math.nan),
        wa_std=m.get("test_wa_std", math.nan),
        folds=trial.folds_done,
        complete=trial.complete,
        candidates=candidates,
    )


def _mask_ratio_varies(trials: Iterable[TrialSummary]) -> bool:
    values = {trial.params.get("mask_ratio") for trial in trials}
    return len(values) > 1


def _group_cells(trials: Sequence[TrialSummary], fields: tuple[str, ...], mode: str) -> dict[tuple, dict[str, Cell]]:
    """``{row key: {pooling: Cell}}`` over the trials with at least one fold."""
    groups: dict[tuple, dict[str, list[TrialSummary]]] = {}
    for trial in trials:
        if not trial.folds:
            continue
        key = tuple(trial.params.get(name) for name in fields)
        pooling = str(trial.params.get("pooling"))
        groups.setdefault(key, {}).setdefault(pooling, []).append(trial)
    cells: dict[tuple, dict[str, Cell]] = {}
    for key, by_pooling in groups.items():
        for pooling, members in by_pooling.items():
            chosen = min(members, key=lambda t: _cell_preference(t, mode))
            cells.setdefault(key, {})[pooling] = _make_cell(chosen, len(members))
    return cells


def build_report(trials: list[dict], study: dict) -> Report:
    """Summarise ``trials`` (trial records) of ``study`` (study metadata) into a :class:`Report`.

    The paper table has one row per (layer, clusters) -- plus mask_ratio when the
    trials do not all share one -- and one column per pooling; a cell shows test
    UA and WA, mean ± std over folds. Where several trials fall into one cell, a
    complete one is preferred, then the best by the objective. The best
    configuration is chosen by the study objective among complete trials only.
    """
    objective = {**DEFAULT_OBJECTIVE, **(study.get("objective") or {})}
    metric = str(objective["metric"])
    mode = str(objective["mode"]).lower()
    if mode not in ("max", "min"):
        raise ValueError(f"objective mode must be 'max' or 'min', got {objective['mode']!r}")
    order = _completion_order(trials)
    summaries: list[TrialSummary] = []
    for index, record in enumerate(trials):
        strict, description = _protocol_of(record, study)
        metrics = trial_metrics(record)
        folds = record.get("folds") or []
        summaries.append(
            TrialSummary(
                trial_id=str(record.get("trial_id", f"#{index}")),
                params=dict(record.get("params") or {}),
                status=str(record.get("status", "error")),
                error=record.get("error"),
                strict=strict,
                protocol=description,
                folds_done=int(record["folds_done"]) if _finite(record.get("folds_done")) else len(folds),
                folds_total=record.get("folds_total"),
                metrics=metrics,
                objective=metrics.get(metric, math.nan),
                order=order[index],
                record=record,
            )
        )

    messages: list[str] = []
    complete = [t for t in summaries if t.complete]
    best: TrialSummary | None = None
    for trial in sorted(complete, key=lambda t: t.order):
        if _better(trial.objective, best.objective if best else math.nan, mode):
            best = trial
    if not summaries:
        messages.append("No trials were recorded.")
    elif not complete:
        messages.append(f"No complete trials yet ({len(summaries)} recorded): there is no best configuration.")
    elif best is None:
        messages.append(f"No complete trial has a value for the objective {metric!r}: there is no best configuration.")

    study_strict, study_description = _protocol_of({}, study) if study.get("protocol") else (True, "")
    not_strict = [t.trial_id for t in summaries if not t.strict]
    strict = study_strict and not not_strict
    if best is not None:
        protocol_line = best.protocol
    elif study_description:
        protocol_line = study_description
    else:
        protocol_line = summaries[0].protocol if summaries else "unknown"

    fields: tuple[str, ...] = ("layer", "clusters")
    if _mask_ratio_varies(t for t in summaries if t.folds):
        fields = fields + ("mask_ratio",)
    cells = _group_cells(summaries, fields, mode)
    table = [TableRow(key=key, cells=cells[key]) for key in sorted(cells, key=lambda k: tuple(_sort_value(v) for v in k))]
    poolings = sorted({pooling for row in table for pooling in row.cells})

    return Report(
        name=str(study.get("name", "study")),
        objective_metric=metric,
        objective_mode=mode,
        protocol=protocol_line,
        strict=strict,
        not_strict_trials=not_strict,
        data_fingerprint=study.get("data_fingerprint"),
        code_version=study.get("code_version"),
        trials=summaries,
        row_fields=fields,
        poolings=poolings,
        table=table,
        best=best,
        messages=messages,
        study=dict(study),
        audit=audit_line(trials),
    )


def audit_line(trials: Sequence[dict]) -> str | None:
    """One line on the leakage audits of the trials (``record["audit"]``, see :mod:`study.audit`)."""
    audits = [t["audit"] for t in trials if t.get("audit")]
    if not audits:
        return None
    verdicts = collections.Counter(a.get("verdict", "?") for a in audits)
    shared = sorted({s for a in audits for s in a.get("shared", [])})
    text = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items()))
    return f"{text} (of {len(audits)} audited trials)" + (f"; shared: {'; '.join(shared)}" if shared else "")


def best_trial(trials: Sequence[dict], metric: str = "val_ua_mean", mode: str = "max") -> dict | None:
    """The record of the best complete trial by ``metric`` (``mode`` "max" or "min"); None without one.

    The same choice as :func:`build_report`: complete trials only, ties to the earliest finished.
    """
    report = build_report(list(trials), {"objective": {"metric": metric, "mode": mode}})
    return report.best.record if report.best is not None else None


# ----------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f}" if _finite(value) else "n/a"


def _pct_pm(mean: float, std: float) -> str:
    return f"{_pct(mean)} ± {_pct(std)}" if _finite(mean) else "n/a"


def _param_text(value: Any) -> str:
    if value is None:
        return _MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _objective_text(value: float, metric: str) -> str:
    if not _finite(value):
        return "n/a"
    return _pct(value) if _AGG_METRIC.match(metric) else f"{value:.4g}"


def describe_params(params: Mapping[str, Any]) -> str:
    """``"layer 9, K 50, mask 0.2, attention pooling"`` (other parameters appended as ``name=value``)."""
    parts = [
        f"layer {_param_text(params.get('layer'))}",
        f"K {_param_text(params.get('clusters'))}",
        f"mask {_param_text(params.get('mask_ratio'))}",
        f"{_param_text(params.get('pooling'))} pooling",
    ]
    parts += [f"{name}={_param_text(value)}" for name, value in sorted(params.items()) if name not in SEARCHED]
    return ", ".join(parts)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]


_FIELD_HEADERS = {"layer": "layer", "clusters": "K", "mask_ratio": "mask ratio"}


def not_strict_line(report: Report) -> str | None:
    """The loud warning line when any trial ran under a protocol that is not strict."""
    if report.strict:
        return None
    who = ", ".join(report.not_strict_trials) if report.not_strict_trials else "the study"
    descriptions = sorted({t.protocol for t in report.trials if not t.strict}) or [report.protocol]
    return (
        "**WARNING: NOT strict protocol** -- the held-out session entered a phase other than the test "
        f"(trials: {who}; {'; '.join(descriptions)}). These numbers are not comparable to a strict study."
    )


def format_report(report: Report) -> str:
    """The report as Markdown (the content of ``report.md``)."""
    lines = [f"# Study report: {report.name}", ""]
    flag = not_strict_line(report)
    if flag:
        lines += [f"> {flag}", ""]
    counts = report.counts()
    status_text = ", ".join(f"{counts[s]} {s}" for s in sorted(counts)) or "none"
    lines += [
        f"- Protocol: {report.protocol}",
        f"- Objective: {report.objective_metric} ({report.objective_mode})",
        f"- Data fingerprint: {report.data_fingerprint or 'n/a'}; code version: {report.code_version or 'n/a'}",
        f"- Trials: {len(report.trials)} ({status_text})",
        *([f"- Leakage audit: {report.audit} (details: `ser-study audit DIR`)"] if report.audit else []),
        "",
    ]
    for message in report.messages:
        lines += [f"**{message}**", ""]

    lines += ["## Results", "", "Test UA / WA in %, mean ± std over folds.", ""]
    if report.table:
        header = [_FIELD_HEADERS[f] for f in report.row_fields] + report.poolings
        rows = []
        for row in report.table:
            cells = [row.cells[p].text() if p in row.cells else _MISSING for p in report.poolings]
            rows.append([_param_text(v) for v in row.key] + cells)
        lines += _md_table(header, rows)
        notes = []
        if any(not c.complete for row in report.table for c in row.cells.values()):
            notes.append("`*` an incomplete trial (not all folds finished).")
        if any(c.candidates > 1 for row in report.table for c in row.cells.values()):
            notes.append("Where several trials share a cell, the best complete one by the objective is shown.")
        if notes:
            lines += [""] + notes
    else:
        lines.append("No trial has finished a fold yet.")
    lines.append("")

    lines += ["## Best configuration", ""]
    best = report.best
    if best is None:
        lines += ["None: no complete trial with an objective value.", ""]
    else:
        m = best.metrics
        lines += [
            f"**{describe_params(best.params)}** (trial `{best.trial_id}`, {best.folds_done} folds)",
            "",
            f"- Objective {report.objective_metric}: {_objective_text(best.objective, report.objective_metric)}",
            f"- Val UA {_pct_pm(m.get('val_ua_mean', math.nan), m.get('val_ua_std', math.nan))}; "
            f"test UA {_pct_pm(m.get('test_ua_mean', math.nan), m.get('test_ua_std', math.nan))}; "
            f"test WA {_pct_pm(m.get('test_wa_mean', math.nan), m.get('test_wa_std', math.nan))}; "
            f"test macro-F1 {_pct_pm(m.get('test_macro_f1_mean', math.nan), m.get('test_macro_f1_std', math.nan))}",
            f"- Protocol: {best.protocol}",
            "",
        ]
        rows = []
        for fold in best.folds:
            val, test = fold.get("val") or {}, fold.get("test") or {}
            rows.append(
                [
                    str(fold.get("test_session", _MISSING)),
                    _pct(_float(val.get("ua"))),
                    _pct(_float(test.get("ua"))),
                    _pct(_float(test.get("wa"))),
                    _pct(_float(test.get("macro_f1"))),
                    str(test.get("count", _MISSING)),
                ]
            )
        lines += _md_table(["test session", "val UA", "test UA", "test WA", "test macro-F1", "test utterances"], rows)
        lines.append("")

    lines += ["## Trials", "", f"In completion order; objective {report.objective_metric}.", ""]
    rows = []
    for trial in sorted(report.trials, key=lambda t: t.order):
        total = trial.folds_total if trial.folds_total is not None else "?"
        note = "" if trial.strict else "NOT strict"
        if trial.error:
            note = (note + "; " if note else "") + str(trial.error).splitlines()[0][:200]
        rows.append(
            [
                f"`{trial.trial_id}`",
                trial.status,
                _param_text(trial.params.get("layer")),
                _param_text(trial.params.get("clusters")),
                _param_text(trial.params.get("mask_ratio")),
                _param_text(trial.params.get("pooling")),
                f"{trial.folds_done}/{total}",
                _objective_text(trial.objective, report.objective_metric),
                _pct_pm(trial.metrics.get("test_ua_mean", math.nan), trial.metrics.get("test_ua_std", math.nan)),
                _pct_pm(trial.metrics.get("test_wa_mean", math.nan), trial.metrics.get("test_wa_std", math.nan)),
                note,
            ]
        )
    if rows:
        lines += _md_table(["trial", "status", "layer", "K", "mask", "pooling", "folds", "objective", "test UA", "test WA", "note"], rows)
    else:
        lines.append("None.")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# CSVs
# ----------------------------------------------------------------------------

_METRIC_COLUMNS = [f"{split}_{key}_{stat}" for split in SPLITS for key in FOLD_KEYS for stat in ("mean", "std")]


def _csv_text(header: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()})
    return buffer.getvalue()


def _extra_params(report: Report) -> list[str]:
    return sorted({name for t in report.trials for name in t.params if name not in SEARCHED})


def table_csv(report: Report) -> str:
    """One row per trial: params, status, folds, objective and the mean/std metrics (fractions, not %)."""
    extra = _extra_params(report)
    metric_columns = list(_METRIC_COLUMNS)
    metric_columns += sorted({k for t in report.trials for k in t.metrics if k not in metric_columns})
    header = ["trial_id", "status", *SEARCHED, *extra, "strict", "folds_done", "folds_total", "objective", *metric_columns, "started", "finished", "error"]
    rows = []
    for trial in sorted(report.trials, key=lambda t: t.order):
        row: dict[str, Any] = {
            "trial_id": trial.trial_id,
            "status": trial.status,
            "strict": trial.strict,
            "folds_done": trial.folds_done,
            "folds_total": trial.folds_total,
            "objective": trial.objective,
            "started": trial.record.get("started"),
            "finished": trial.record.get("finished"),
            "error": trial.error,
        }
        row.update({name: trial.params.get(name) for name in (*SEARCHED, *extra)})
        row.update({name: trial.metrics.get(name) for name in metric_columns})
        rows.append(row)
    return _csv_text(header, rows)


def _cached_phases(fold: Mapping[str, Any]) -> list[str]:
    built = set(fold.get("built") or [])
    return [phase for phase in (fold.get("artifacts") or {}) if phase not in built]


def folds_csv(report: Report) -> str:
    """One row per trial per finished fold (fractions, not %)."""
    header = ["trial_id", "status", *SEARCHED, "test_session", "strict", "seconds"]
    header += [f"{split}_{key}" for split in SPLITS for key in (*FOLD_KEYS, "count")]
    header += ["built", "cached"]
    rows = []
    for trial in sorted(report.trials, key=lambda t: t.order):
        for fold in trial.folds:
            row: dict[str, Any] = {
                "trial_id": trial.trial_id,
                "status": trial.status,
                "test_session": fold.get("test_session"),
                "strict": fold.get("strict", trial.strict),
                "seconds": fold.get("seconds"),
                "built": ";".join(fold.get("built") or []),
                "cached": ";".join(_cached_phases(fold)),
            }
            row.update({name: trial.params.get(name) for name in SEARCHED})
            for split in SPLITS:
                values = fold.get(split) or {}
                row.update({f"{split}_{key}": values.get(key) for key in (*FOLD_KEYS, "count")})
            rows.append(row)
    return _csv_text(header, rows)


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


def _heatmap_figure(report: Report, pooling: str) -> Figure | None:
    """Test UA mean over layer x clusters for one pooling (best trial by the objective per cell)."""
    cells = _group_cells([t for t in report.trials if str(t.params.get("pooling")) == pooling], ("layer", "clusters"), report.objective_mode)
    values = {key: cell.ua_mean for key, by_pooling in cells.items() for cell in by_pooling.values()}
    if not any(_finite(v) for v in values.values()):
        return None
    layers = sorted({k[0] for k in values}, key=_sort_value)
    clusters = sorted({k[1] for k in values}, key=_sort_value)
    grid = np.full((len(layers), len(clusters)), np.nan)
    for (layer, k), value in values.items():
        grid[layers.index(layer), clusters.index(k)] = 100 * value
    figure = new_figure(1.1 * len(clusters) + 2.5, 0.8 * len(layers) + 1.8)
    ax = figure.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=ax, label="test UA (%)")
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(layers)):
        for j in range(len(clusters)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="black" if grid[i, j] > middle else "white")
    ax.set_xticks(range(len(clusters)), [_param_text(k) for k in clusters])
    ax.set_yticks(range(len(layers)), [_param_text(layer) for layer in layers])
    ax.set_xlabel("clusters K")
    ax.set_ylabel("layer")
    suffix = " (best mask ratio per cell)" if "mask_ratio" in report.row_fields else ""
    ax.set_title(f"{report.name}: test UA mean, {pooling} pooling{suffix}")
    return figure


def _folds_figure(report: Report) -> Figure | None:
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
        heights = [100 * _float((fold.get(split) or {}).get(key)) for fold in folds]
        ax.bar(x + (index - (len(series) - 1) / 2) * width, heights, width, label=label)
    ax.set_xticks(x, [f"session {fold.get('test_session', '?')}" for fold in folds])
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Best: {describe_params(best.params)}", fontsize=9)
    return figure


def _confusion_best_figure(report: Report) -> Figure | None:
    best = report.best
    if best is None:
        return None
    matrix = pooled_confusion(best.folds, "test")
    if matrix is None:
        return None
    return confusion_figure(matrix, best.classes, f"Best ({best.trial_id}): test sets of {len(best.folds)} folds pooled")


def _history_figure(report: Report) -> Figure | None:
    trials = [t for t in sorted(report.trials, key=lambda t: t.order) if _finite(t.objective)]
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
        if _better(trial.objective, current, report.objective_mode):
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


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "none"


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """Write ``report.md``, ``table.csv``, ``folds.csv`` and the PNGs under ``out_dir``; return the paths written.

    PNGs: ``heatmap_<pooling>.png`` per pooling with results, ``folds_best.png`` and
    ``confusion_best.png`` (only with a best configuration), ``history.png`` (only
    when some trial has an objective value). Each file is written atomically.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, text in (("report.md", format_report(report)), ("table.csv", table_csv(report)), ("folds.csv", folds_csv(report))):
        atomic_write_text(out_dir / name, text)
        written.append(out_dir / name)
    figures: list[tuple[str, Figure | None]] = [(f"heatmap_{_safe_name(p)}.png", _heatmap_figure(report, p)) for p in report.poolings]
    figures += [("folds_best.png", _folds_figure(report)), ("confusion_best.png", _confusion_best_figure(report)), ("history.png", _history_figure(report))]
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
