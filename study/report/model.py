"""The report's data model and how it is built from trial records: the paper-style table, the best configuration.

Pure functions over trial records (JSON dicts, see :func:`build_report`) and
the study metadata; no Ray, no MLflow, no files.
"""

from __future__ import annotations

import collections
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from study.report.compare import Comparison, compare
from trainables.metrics import aggregate

logger = logging.getLogger(__name__)

T = TypeVar("T")

SPLITS = ("val", "test")
FOLD_KEYS = ("ua", "wa", "macro_f1")
DEFAULT_OBJECTIVE = {"metric": "val_ua_mean", "mode": "max"}
#: The method of the paper table (layer x K rows, a column per pooling).
PAPER_METHOD = "alignment"
AGG_METRIC = re.compile(r"^(val|test)_(ua|wa|macro_f1)_(mean|std)$")
MISSING = "-"


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
    def method(self) -> str:
        """The method the record scored (records made before methods existed: the paper's, ``alignment``)."""
        return str(self.record.get("method") or self.params.get("method") or PAPER_METHOD)

    @property
    def reconstructed(self) -> bool:
        """The method is known only from its abstract (every report flags it)."""
        return bool(self.record.get("reconstructed"))

    @property
    def searched(self) -> dict[str, Any]:
        """The parameters of its method, without the method's name."""
        return {k: v for k, v in self.params.items() if k != "method"}

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
        body = f"{pct_pm(self.ua_mean, self.ua_std)} / {pct_pm(self.wa_mean, self.wa_std)}"
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
    baselines: list[TrialSummary] = field(default_factory=list)
    #: trial id -> baseline name -> metric ("ua", "wa") -> the paired comparison of test scores
    comparisons: dict[str, dict[str, dict[str, Comparison]]] = field(default_factory=dict)

    def methods(self) -> list[str]:
        """The methods of the trials, in the order they first appear."""
        return list(dict.fromkeys(t.method for t in sorted(self.trials, key=lambda t: t.order)))

    def of_method(self, method: str) -> list[TrialSummary]:
        return [t for t in self.trials if t.method == method]

    def counts(self) -> dict[str, int]:
        """Number of trials per status."""
        result: dict[str, int] = {}
        for trial in self.trials:
            result[trial.status] = result.get(trial.status, 0) + 1
        return result


# ----------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------


def finite(value: Any) -> bool:
    """A real, finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pct(value: float) -> str:
    """A fraction in percent with one decimal (``"n/a"`` when not a finite number)."""
    return f"{100 * value:.1f}" if finite(value) else "n/a"


def pct_pm(mean: float, std: float) -> str:
    """``"mean ± std"`` in percent."""
    return f"{pct(mean)} ± {pct(std)}" if finite(mean) else "n/a"


def as_float(value: Any) -> float:
    """``value`` as a float, NaN when it is not a finite number."""
    return float(value) if finite(value) else math.nan


def fold_metrics(folds: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``{split}_{ua,wa,macro_f1}_{mean,std}`` over ``folds`` (std 0 for one fold); empty without folds."""
    result: dict[str, float] = {}
    for split in SPLITS:
        per_fold = []
        for fold in folds:
            values = fold.get(split) or {}
            per_fold.append({key: as_float(values.get(key)) for key in FOLD_KEYS})
        if per_fold:
            result.update({f"{split}_{key}": value for key, value in aggregate(per_fold, FOLD_KEYS).items()})
    return result


def trial_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The trial's aggregate metrics: the recorded ones, completed from its folds where missing."""
    metrics = fold_metrics(record.get("folds") or [])
    for key, value in (record.get("metrics") or {}).items():
        if finite(value):
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
        return (not finite(finished), float(finished) if finite(finished) else 0.0, index)

    keyed = sorted(range(len(trials)), key=key)
    order = [0] * len(trials)
    for position, index in enumerate(keyed):
        order[index] = position
    return order


def better(a: float, b: float, mode: str) -> bool:
    """Whether objective ``a`` beats ``b`` (NaN never wins)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if mode == "max" else a < b


def best_of(items: Iterable[T], value: Callable[[T], float], mode: str) -> T | None:
    """The item of ``items`` with the best ``value`` (``mode`` "max" or "min"; NaN never wins); a tie goes to the earlier item.

    The one rule for "the best trial", whether from trial records (the report)
    or from MLflow runs (the study summary): give the complete ones in the
    order they finished.
    """
    best: T | None = None
    for item in items:
        if better(as_float(value(item)), as_float(value(best)) if best is not None else math.nan, mode):
            best = item
    return best


def sort_value(value: Any) -> tuple:
    """Sort key for parameter values: numbers first (by value), then text, then missing."""
    if value is None:
        return (2, 0, "")
    if finite(value):
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


def group_cells(trials: Sequence[TrialSummary], fields: tuple[str, ...], mode: str) -> dict[tuple, dict[str, Cell]]:
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


def _summaries(records: Sequence[dict], study: Mapping[str, Any], metric: str) -> list[TrialSummary]:
    order = _completion_order(records)
    summaries: list[TrialSummary] = []
    for index, record in enumerate(records):
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
                folds_done=int(record["folds_done"]) if finite(record.get("folds_done")) else len(folds),
                folds_total=record.get("folds_total"),
                metrics=metrics,
                objective=metrics.get(metric, math.nan),
                order=order[index],
                record=record,
            )
        )
    return summaries


def build_report(trials: list[dict], study: dict, baselines: Sequence[dict] = ()) -> Report:
    """Summarise ``trials`` (trial records) and ``baselines`` (baseline records) of ``study`` (study metadata) into a :class:`Report`.

    The paper table (trials of the paper's method, ``alignment``) has one row
    per (layer, clusters) -- plus mask_ratio when the trials do not all share
    one -- and one column per pooling; a cell shows test UA and WA, mean ± std
    over folds. Where several trials fall into one cell, a complete one is
    preferred, then the best by the objective. The best configuration is chosen
    by the study objective among complete trials only, whatever their method.
    Every trial is compared with every baseline, fold by fold (:mod:`study.report.compare`).
    """
    objective = {**DEFAULT_OBJECTIVE, **(study.get("objective") or {})}
    metric = str(objective["metric"])
    mode = str(objective["mode"]).lower()
    if mode not in ("max", "min"):
        raise ValueError(f"objective mode must be 'max' or 'min', got {objective['mode']!r}")
    summaries = _summaries(trials, study, metric)
    baseline_summaries = _summaries(list(baselines), study, metric)
    comparisons = {
        trial.trial_id: {base.method: {m: compare(trial.folds, base.folds, m) for m in ("ua", "wa")} for base in baseline_summaries if base.folds}
        for trial in summaries
        if trial.folds
    }

    messages: list[str] = []
    complete = [t for t in summaries if t.complete]
    best = best_of(sorted(complete, key=lambda t: t.order), lambda t: t.objective, mode)
    if not summaries:
        messages.append("No trials were recorded.")
    elif not complete:
        messages.append(f"No complete trials yet ({len(summaries)} recorded): there is no best configuration.")
    elif best is None:
        messages.append(f"No complete trial has a value for the objective {metric!r}: there is no best configuration.")

    study_strict, study_description = _protocol_of({}, study) if study.get("protocol") else (True, "")
    not_strict = [t.trial_id for t in summaries + baseline_summaries if not t.strict]
    strict = study_strict and not not_strict
    if best is not None:
        protocol_line = best.protocol
    elif study_description:
        protocol_line = study_description
    else:
        protocol_line = summaries[0].protocol if summaries else "unknown"

    fields: tuple[str, ...] = ("layer", "clusters")
    if _mask_ratio_varies(t for t in summaries if t.folds and t.method == PAPER_METHOD):
        fields = fields + ("mask_ratio",)
    cells = group_cells([t for t in summaries if t.method == PAPER_METHOD], fields, mode)
    table = [TableRow(key=key, cells=cells[key]) for key in sorted(cells, key=lambda k: tuple(sort_value(v) for v in k))]
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
        audit=audit_line(trials, baselines),
        baselines=baseline_summaries,
        comparisons=comparisons,
    )


def audit_line(trials: Sequence[dict], baselines: Sequence[dict] = ()) -> str | None:
    """One line on the leakage audits of the trials and the baselines (``record["audit"]``, see :mod:`study.audit.checks`)."""

    def verdicts(records: Sequence[dict]) -> tuple[str, list[dict]]:
        audits = [r["audit"] for r in records if r.get("audit")]
        counts = collections.Counter(a.get("verdict", "?") for a in audits)
        return ", ".join(f"{n} {v}" for v, n in sorted(counts.items())), audits

    trial_text, trial_audits = verdicts(trials)
    baseline_text, baseline_audits = verdicts(baselines)
    if not trial_audits and not baseline_audits:
        return None
    shared = sorted({s for a in trial_audits + baseline_audits for s in a.get("shared", [])})
    parts = [f"{trial_text} (of {len(trial_audits)} audited trials)"] if trial_audits else []
    parts += [f"baselines: {baseline_text} (of {len(baseline_audits)})"] if baseline_audits else []
    return "; ".join(parts) + (f"; shared: {'; '.join(shared)}" if shared else "")


def best_trial(trials: Sequence[dict], metric: str = "val_ua_mean", mode: str = "max") -> dict | None:
    """The record of the best complete trial by ``metric`` (``mode`` "max" or "min"); None without one.

    The same choice as :func:`build_report`: complete trials only, ties to the earliest finished.
    """
    report = build_report(list(trials), {"objective": {"metric": metric, "mode": mode}})
    return report.best.record if report.best is not None else None
