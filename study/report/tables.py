"""The report as CSV: ``table.csv`` (one row per trial and baseline) and ``folds.csv`` (one row per fold), fractions, not %."""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable, Mapping, Sequence

from study.report.model import FOLD_KEYS, SPLITS, Report, TrialSummary


_METRIC_COLUMNS = [f"{split}_{key}_{stat}" for split in SPLITS for key in FOLD_KEYS for stat in ("mean", "std")]


def _csv_text(header: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()})
    return buffer.getvalue()


def _param_names(rows: Sequence[TrialSummary]) -> list[str]:
    """Every parameter name of ``rows``, the method first, in the order they first appear."""
    return list(dict.fromkeys(["method", *(name for t in rows for name in t.params)]))


def table_csv(report: Report) -> str:
    """One row per trial and per baseline: kind, params, status, folds, objective, the mean/std metrics and Δ vs each baseline."""
    everyone = sorted(report.trials, key=lambda t: t.order) + report.baselines
    names = _param_names(everyone)
    metric_columns = list(_METRIC_COLUMNS)
    metric_columns += sorted({k for t in everyone for k in t.metrics if k not in metric_columns})
    deltas = [f"delta_test_{m}_vs_{b.method}_{part}" for b in report.baselines for m in ("ua", "wa") for part in ("mean", "low", "high")]
    header = ["kind", "trial_id", "status", *names, "strict", "folds_done", "folds_total", "objective", *metric_columns, *deltas, "started", "finished", "error"]
    rows = []
    for trial in everyone:
        row: dict[str, Any] = {
            "kind": trial.record.get("kind", "trial"),
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
        row.update({name: trial.params.get(name, trial.method if name == "method" else None) for name in names})
        row.update({name: trial.metrics.get(name) for name in metric_columns})
        for baseline, by_metric in report.comparisons.get(trial.trial_id, {}).items():
            for metric, comparison in by_metric.items():
                row.update({f"delta_test_{metric}_vs_{baseline}_{part}": getattr(comparison, part) for part in ("mean", "low", "high")})
        rows.append(row)
    return _csv_text(header, rows)


def _cached_phases(fold: Mapping[str, Any]) -> list[str]:
    built = set(fold.get("built") or [])
    return [phase for phase in (fold.get("artifacts") or {}) if phase not in built]


def folds_csv(report: Report) -> str:
    """One row per trial (and baseline) per finished fold and seed (fractions, not %)."""
    everyone = sorted(report.trials, key=lambda t: t.order) + report.baselines
    names = _param_names(everyone)
    header = ["kind", "trial_id", "status", *names, "test_session", "seed", "strict", "seconds"]
    header += [f"{split}_{key}" for split in SPLITS for key in (*FOLD_KEYS, "count")]
    header += ["built", "cached", "node"]
    rows = []
    for trial in everyone:
        for fold in trial.folds:
            row: dict[str, Any] = {
                "kind": trial.record.get("kind", "trial"),
                "seed": fold.get("seed", 0),
                "trial_id": trial.trial_id,
                "status": trial.status,
                "test_session": fold.get("test_session"),
                "strict": fold.get("strict", trial.strict),
                "seconds": fold.get("seconds"),
                "built": ";".join(fold.get("built") or []),
                "cached": ";".join(_cached_phases(fold)),
                "node": fold.get("node", ""),
            }
            row.update({name: trial.params.get(name, trial.method if name == "method" else None) for name in names})
            for split in SPLITS:
                values = fold.get(split) or {}
                row.update({f"{split}_{key}": values.get(key) for key in (*FOLD_KEYS, "count")})
            rows.append(row)
    return _csv_text(header, rows)
