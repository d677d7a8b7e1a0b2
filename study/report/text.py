"""The report as Markdown (``report.md``): protocol, baselines, each method's candidates with their paired comparisons, the best configuration."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from study.report.compare import INTERVAL_METHOD, comparison_text, verdict
from study.report.model import AGG_METRIC, MISSING, PAPER_METHOD, Report, TrialSummary, as_float, finite, pct, pct_pm

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


#: How the paper's parameters read in a sentence; any other parameter reads ``name=value``.
_SPOKEN = {"layer": "layer {}", "clusters": "K {}", "mask_ratio": "mask {}", "pooling": "{} pooling"}


def describe_params(params: Mapping[str, Any]) -> str:
    """``"alignment: layer 9, K 50, mask 0.2, attention pooling"`` (the method first when given; other parameters as ``name=value``)."""
    method = params.get("method")
    parts = [_SPOKEN[name].format(param_text(value)) for name, value in params.items() if name in _SPOKEN]
    parts += [f"{name}={param_text(value)}" for name, value in sorted(params.items()) if name not in _SPOKEN and name != "method"]
    text = ", ".join(parts) or "default settings"
    return f"{method}: {text}" if method else text


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


def _metric_pm(trial: TrialSummary, name: str) -> str:
    return pct_pm(trial.metrics.get(f"{name}_mean", math.nan), trial.metrics.get(f"{name}_std", math.nan))


def _folds_text(trial: TrialSummary) -> str:
    total = trial.folds_total if trial.folds_total is not None else "?"
    return f"{trial.folds_done}/{total}"


def method_title(report: Report, method: str) -> str:
    info = (report.study.get("methods") or {}).get(method) or {}
    title = f"`{method}`" + (f": {info['title']}" if info.get("title") else "")
    reconstructed = info.get("reconstructed") or any(t.reconstructed for t in report.trials + report.baselines if t.method == method)
    return title + (" (**reconstructed** from the paper's abstract: every unstated choice is an option with a default, see the parameters)" if reconstructed else "")


def _delta_cells(report: Report, trial: TrialSummary) -> list[str]:
    compared = report.comparisons.get(trial.trial_id, {})
    return [comparison_text(compared[b.method]["ua"]) if b.method in compared else MISSING for b in report.baselines]


def _baselines_section(report: Report) -> list[str]:
    lines = ["## Baselines", ""]
    if not report.baselines:
        return lines + ["None in this study (list them under `baselines:`, e.g. `[finetune, tapt, egemaps]`).", ""]
    rows = [[f"`{b.method}`", b.status, _folds_text(b), _metric_pm(b, "val_ua"), _metric_pm(b, "test_ua"), _metric_pm(b, "test_wa")] for b in report.baselines]
    lines += _md_table(["baseline", "status", "folds", "val UA", "test UA", "test WA"], rows)
    for b in report.baselines:
        if b.error:
            lines.append(f"- `{b.method}` failed: {str(b.error).splitlines()[0][:200]}")
    return lines + [""]


def _paper_table(report: Report) -> list[str]:
    lines = [f"### The paper's table (`{PAPER_METHOD}`)", "", "Test UA / WA in %, mean ± std over folds.", ""]
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
    return lines + ([""] + notes if notes else []) + [""]


def _method_section(report: Report, method: str) -> list[str]:
    trials = sorted(report.of_method(method), key=lambda t: t.order)
    lines = [f"### {method_title(report, method)}", ""]
    names = list(dict.fromkeys(name for t in trials for name in t.searched))
    header = ["trial", *names, "folds", "val UA", "test UA", "test WA", *[f"Δ UA vs {b.method}" for b in report.baselines]]
    rows = [[f"`{t.trial_id}`", *[param_text(t.searched.get(n)) for n in names], _folds_text(t), _metric_pm(t, "val_ua"), _metric_pm(t, "test_ua"), _metric_pm(t, "test_wa"), *_delta_cells(report, t)] for t in trials]
    return lines + _md_table(header, rows) + [""]


def best_section(report: Report) -> list[str]:
    lines = ["## Best configuration", ""]
    best = report.best
    if best is None:
        return lines + ["None: no complete trial with an objective value.", ""]
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
    ]
    if (report.study.get("protocol") or {}).get("validation") == "test_session_speaker":
        published = [(as_float((f.get("val") or {}).get("ua")) + as_float((f.get("test") or {}).get("ua"))) / 2 for f in best.folds]
        mean = sum(published) / len(published) if published else math.nan
        lines.append(f"- The published code's number, (best val UA + test UA) / 2 over the test session's two speakers: {pct(mean)} "
                     "(not a test score: half of it is the speaker the checkpoint was selected on; the honest test UA is above)")
    compared = report.comparisons.get(best.trial_id, {})
    for baseline in report.baselines:
        if baseline.method in compared:
            lines.append(f"- It {verdict(baseline.method, compared[baseline.method]['ua'])}.")
    lines.append("")
    by_fold = {b.method: {(f.get("test_session"), f.get("seed", 0)): f for f in b.folds} for b in report.baselines}
    seeds = len({fold.get("seed", 0) for fold in best.folds}) > 1
    rows = []
    for fold in best.folds:
        val, test = fold.get("val") or {}, fold.get("test") or {}
        key = (fold.get("test_session"), fold.get("seed", 0))
        others = [pct(as_float(((by_fold[b.method].get(key) or {}).get("test") or {}).get("ua"))) for b in report.baselines]
        rows.append([str(fold.get("test_session", MISSING)), *([str(fold.get("seed", 0))] if seeds else []), pct(as_float(val.get("ua"))), pct(as_float(test.get("ua"))),
                     pct(as_float(test.get("wa"))), pct(as_float(test.get("macro_f1"))), str(test.get("count", MISSING)), *others])
    header = ["test session", *(["seed"] if seeds else []), "val UA", "test UA", "test WA", "test macro-F1", "test utterances"]
    lines += _md_table([*header, *[f"{b.method} test UA" for b in report.baselines]], rows)
    return lines + [""]


def format_report(report: Report) -> str:
    """The report as Markdown (the content of ``report.md``)."""
    lines = [f"# Study report: {report.name}", ""]
    flag = not_strict_line(report)
    if flag:
        lines += [f"> {flag}", ""]
    counts = report.counts()
    status_text = ", ".join(f"{counts[s]} {s}" for s in sorted(counts)) or "none"
    seeds = report.study.get("seeds")
    lines += [
        f"- Protocol: {report.protocol}",
        f"- Objective: {report.objective_metric} ({report.objective_mode})",
        f"- Data fingerprint: {report.data_fingerprint or 'n/a'}; code version: {report.code_version or 'n/a'}",
        f"- Trials: {len(report.trials)} ({status_text})",
        *([f"- Seeds: {', '.join(map(str, seeds))} (every fold trained once per seed; means and intervals over folds and seeds)"] if seeds else []),
        "- Aggregation: mean over folds (and seeds) of the per-fold scores; ± is their standard deviation with ddof 1",
        f"- Comparisons: candidate minus baseline, test UA in points, {INTERVAL_METHOD}",
        *([f"- Leakage audit: {report.audit} (details: `ser-study audit DIR`)"] if report.audit else []),
        "",
    ]
    for message in report.messages:
        lines += [f"**{message}**", ""]
    lines += _baselines_section(report)
    lines += ["## Results", ""]
    if not any(t.folds for t in report.trials):
        lines += ["No trial has finished a fold yet.", ""]
    for method in report.methods():
        if method == PAPER_METHOD and report.table:
            lines += _paper_table(report)
        lines += _method_section(report, method)
    lines += best_section(report)
    lines += ["## Trials", "", f"In completion order; objective {report.objective_metric}.", ""]
    rows = []
    for trial in sorted(report.trials, key=lambda t: t.order):
        note = "" if trial.strict else "NOT strict"
        if trial.error:
            note = (note + "; " if note else "") + str(trial.error).splitlines()[0][:200]
        rows.append([f"`{trial.trial_id}`", trial.status, describe_params(trial.params), _folds_text(trial), _objective_text(trial.objective, report.objective_metric),
                     _metric_pm(trial, "test_ua"), _metric_pm(trial, "test_wa"), note])
    lines += _md_table(["trial", "status", "candidate", "folds", "objective", "test UA", "test WA", "note"], rows) if rows else ["None."]
    lines.append("")
    return "\n".join(lines)
