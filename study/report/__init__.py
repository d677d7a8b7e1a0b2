"""The study report: the paper-style table, the best configuration, CSVs and figures.

Pure functions over trial records (JSON dicts, see ``build_report``) and the
study metadata; no Ray, no MLflow. One module per concern: ``model`` (what the
report says, built from the records), ``text`` (Markdown and CSV), ``figures``
and ``files`` (``write_report``: every file atomically, so a reader never sees
a half file).

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
