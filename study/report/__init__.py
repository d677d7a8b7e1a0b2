"""The study report: the paper-style table, the best configuration, CSVs and figures.

Pure functions over trial records (JSON dicts, see ``build_report``) and the
study metadata; no Ray, no MLflow. One module per concern: ``model`` (what the
report says, built from the records), ``text`` (Markdown and CSV), ``figures``
and ``files`` (``write_report``: every file atomically, so a reader never sees
a half file). This package is the facade the rest of ser-study imports.

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

from study.report.figures import confusion_figure, figure_png, new_figure, pooled_confusion, write_png
from study.report.files import write_report
from study.report.model import (
    DEFAULT_OBJECTIVE,
    Cell,
    Report,
    TableRow,
    TrialSummary,
    audit_line,
    best_trial,
    build_report,
    fold_metrics,
    trial_metrics,
)
from study.report.text import describe_params, folds_csv, format_report, not_strict_line, table_csv

__all__ = [
    "DEFAULT_OBJECTIVE",
    "Cell",
    "Report",
    "TableRow",
    "TrialSummary",
    "audit_line",
    "best_trial",
    "build_report",
    "confusion_figure",
    "describe_params",
    "figure_png",
    "fold_metrics",
    "folds_csv",
    "format_report",
    "new_figure",
    "not_strict_line",
    "pooled_confusion",
    "table_csv",
    "trial_metrics",
    "write_png",
    "write_report",
]
