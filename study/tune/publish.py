"""The study report from the study directory alone: trial and baseline records -> tables, plots, the MLflow summary and each trial run's paired comparisons."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

from study.config.loading import load_resolved_study
from study.io import layout, storage
from study.io.records import read_baseline_records, read_trial_records
from study.report.files import write_report
from study.report.model import Report, build_report
from study.report.text import format_report
from study.tracking.summary import log_comparisons, log_study_summary
from trainables.data.manifest import read_manifest

logger = logging.getLogger(__name__)


def study_report(study_dir: str | Path) -> Report:
    """The report of ``study_dir`` from its records (nothing written)."""
    config = load_resolved_study(study_dir)
    study = config.report_metadata(read_manifest(config.data.manifest))
    return build_report(read_trial_records(study_dir), study, read_baseline_records(study_dir))


def write_study_report(study_dir: str | Path, log_to_mlflow: bool = True) -> str:
    """Build the report of ``study_dir``, write it under ``report/``, log it to MLflow; returns the text."""
    config = load_resolved_study(study_dir)
    report = study_report(study_dir)
    study = report.study
    text = format_report(report)
    remote = layout.is_remote(study_dir)
    with contextlib.ExitStack() as stack:
        # A remote study's report is written locally, then published next to the study's other state.
        out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ser-study-report-"))) if remote else layout.report_dir(study_dir)
        files = write_report(report, out)
        if remote:
            storage.upload_tree(out, layout.report_dir(study_dir))
        if log_to_mlflow:  # while the files still exist
            log_study_summary(config.tracking_uri(), config.name, study, files, report=report)
            log_comparisons(config.tracking_uri(), config.name, report)
    return text
