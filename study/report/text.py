"""The report as text: Markdown (``report.md``) and the CSVs (``table.csv``, ``folds.csv``)."""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable, Mapping, Sequence

from study.config.space import SEARCHED_PARAMS
from study.report.model import AGG_METRIC, FOLD_KEYS, MISSING, SPLITS, Report, as_float, finite, pct, pct_pm

# ----------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------


def param_text(value: Any) -> str:
    """A parameter value as the report prints it (floats to 4 significant digits, ``-`` for none)."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _objective_text(value: float, metric: str) -> str:
    if not finite(value):
        return "n/a"
    return pct(value) if AGG_METRIC.match(metric) else f"{value:.4g}"


def describe_params(params: Mapping[str, Any]) -> str:
    """``"layer 9, K 50, mask 0.2, attention pooling"`` (other parameters appended as ``name=value``)."""
    parts = [
        f"layer {param_text(params.get('layer'))}",
        f"K {param_text(params.get('clusters'))}",
        f"mask {param_text(params.get('mask_ratio'))}",
        f"{param_text(params.get('pooling'))} pooling",
    ]
    parts += [f"{name}={param_text(value)}" for name, value in sorted(params.items()) if name not in SEARCHED_PARAMS]
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
            cells = [row.cells[p].text() if p in row.cells else MISSING for p in report.poolings]
            rows.append([param_text(v) for v in row.key] + cells)
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
            f"- Val UA {pct_pm(m.get('val_ua_mean', math.nan), m.get('val_ua_std', math.nan))}; "
            f"test UA {pct_pm(m.get('test_ua_mean', math.nan), m.get('test_ua_std', math.nan))}; "
            f"test WA {pct_pm(m.get('test_wa_mean', math.nan), m.get('test_wa_std', math.nan))}; "
            f"test macro-F1 {pct_pm(m.get('test_macro_f1_mean', math.nan), m.get('test_macro_f1_std', math.nan))}",
            f"- Protocol: {best.protocol}",
            "",
        ]
        rows = []
        for fold in best.folds:
            val, test = fold.get("val") or {}, fold.get("test") or {}
            rows.append(
                [
                    str(fold.get("test_session", MISSING)),
                    pct(as_float(val.get("ua"))),
                    pct(as_float(test.get("ua"))),
                    pct(as_float(test.get("wa"))),
                    pct(as_float(test.get("macro_f1"))),
                    str(test.get("count", MISSING)),
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
                param_text(trial.params.get("layer")),
                param_text(trial.params.get("clusters")),
                param_text(trial.params.get("mask_ratio")),
                param_text(trial.params.get("pooling")),
                f"{trial.folds_done}/{total}",
                _objective_text(trial.objective, report.objective_metric),
                pct_pm(trial.metrics.get("test_ua_mean", math.nan), trial.metrics.get("test_ua_std", math.nan)),
                pct_pm(trial.metrics.get("test_wa_mean", math.nan), trial.metrics.get("test_wa_std", math.nan)),
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
    return sorted({name for t in report.trials for name in t.params if name not in SEARCHED_PARAMS})


def table_csv(report: Report) -> str:
    """One row per trial: params, status, folds, objective and the mean/std metrics (fractions, not %)."""
    extra = _extra_params(report)
    metric_columns = list(_METRIC_COLUMNS)
    metric_columns += sorted({k for t in report.trials for k in t.metrics if k not in metric_columns})
    header = ["trial_id", "status", *SEARCHED_PARAMS, *extra, "strict", "folds_done", "folds_total", "objective", *metric_columns, "started", "finished", "error"]
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
        row.update({name: trial.params.get(name) for name in (*SEARCHED_PARAMS, *extra)})
        row.update({name: trial.metrics.get(name) for name in metric_columns})
        rows.append(row)
    return _csv_text(header, rows)


def _cached_phases(fold: Mapping[str, Any]) -> list[str]:
    built = set(fold.get("built") or [])
    return [phase for phase in (fold.get("artifacts") or {}) if phase not in built]


def folds_csv(report: Report) -> str:
    """One row per trial per finished fold (fractions, not %)."""
    header = ["trial_id", "status", *SEARCHED_PARAMS, "test_session", "strict", "seconds"]
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
            row.update({name: trial.params.get(name) for name in SEARCHED_PARAMS})
            for split in SPLITS:
                values = fold.get(split) or {}
                row.update({f"{split}_{key}": values.get(key) for key in (*FOLD_KEYS, "count")})
            rows.append(row)
    return _csv_text(header, rows)
