"""``ser-study run | plan | resume | report | ui | audit``: the study from the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from study.io import layout, storage
from study.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_UI_PORT = 5000
STUDY_EXIT_STATUS = (
    "exit status: 0 when every trial ran to the end; 1 when a trial failed (the others still run, the report is "
    "still written, and each failed trial is listed with its cause); 2 on bad input, before anything starts."
)


def add_study_parsers(subparsers) -> None:
    run = subparsers.add_parser("run", help="run a study file (Ray Tune + Optuna over LOSO folds)", epilog=STUDY_EXIT_STATUS)
    run.add_argument("study", type=Path, help="study YAML, e.g. search_spaces/smoke.yaml")
    run.add_argument("--study-dir", help="where the study's state, cache, MLflow store and report go (default: storage.study_dir)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help="override a field of the study file, e.g. --set data.manifest=my.csv (repeatable)")
    run.add_argument("--address", help="Ray cluster to join (e.g. auto); default: start a local one")
    run.add_argument("--quiet", action="store_true", help="no live progress view (trials, folds, phases being built, ETA); Tune's status lines instead")
    run.set_defaults(handler=run_run)

    plan = subparsers.add_parser(
        "plan",
        help="a dry run: validate a study file, list its candidates, the phase artifacts it would build or reuse, an estimate",
        description="Validate the study file and its inputs (as `run` does before starting), then walk every candidate's and "
        "baseline's chain of phases per fold without building anything: the artifacts the run would build, those the "
        "cache already holds, and an estimate from this cache's earlier build times.",
    )
    plan.add_argument("study", type=Path, help="study YAML, e.g. search_spaces/smoke.yaml")
    plan.add_argument("--study-dir", help="the study directory the run would use (its cache is the one consulted)")
    plan.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help="override a field of the study file (repeatable), as for run")
    plan.set_defaults(handler=run_plan)

    resume = subparsers.add_parser("resume", help="continue an interrupted study from its directory", epilog=STUDY_EXIT_STATUS)
    resume.add_argument("study_dir", help="study directory (local path or s3:// URI)")
    resume.add_argument("--address", help="Ray cluster to join (e.g. auto); default: start a local one")
    resume.set_defaults(handler=run_resume)

    report = subparsers.add_parser("report", help="print and write the study's report (tables, plots)")
    report.add_argument("study_dir", help="study directory (local path or s3:// URI)")
    report.set_defaults(handler=run_report)

    ui = subparsers.add_parser("ui", help="open the MLflow UI on the study's store (bound to 127.0.0.1)")
    ui.add_argument("study_dir", help="study directory (local path or s3:// URI)")
    ui.add_argument("--port", type=int, default=DEFAULT_UI_PORT, help=f"port of the UI on 127.0.0.1 (default {DEFAULT_UI_PORT})")
    ui.set_defaults(handler=run_ui)

    audit = subparsers.add_parser(
        "audit",
        help="prove per fold that the test session entered no phase but the test (exit 1 on a leak)",
        description="Leakage audit: for every fold of every trial, read the phase artifacts' records and check that no "
        "test-session utterance entered TAPT, the k-means fit, continued pretraining or fine-tuning, and that validation "
        "never overlapped test. Under a looser protocol it states exactly what was shared (audio only, which phases). "
        "Prints a table per trial and writes DIR/report/audit.json.",
        epilog="exit status: 0 if no fold leaked (test-session data shared under a looser protocol is reported, not failed); "
        "1 if a leak is found or a fold cannot be audited (an artifact record missing or not matching the fold); 2 on bad input.",
    )
    audit.add_argument("study_dir", help="study directory (local path or s3:// URI)")
    audit.set_defaults(handler=run_audit)


def ui_command(study_dir: str, port: int = DEFAULT_UI_PORT) -> str:
    """The shell line that opens the MLflow UI on ``study_dir``'s store."""
    return f"ser-study ui {study_dir}" + ("" if port == DEFAULT_UI_PORT else f" --port {port}")


def run_run(args: argparse.Namespace) -> int:
    from study.config.loading import load_study
    from study.tune.runner import run_study

    overrides = list(args.overrides)
    if args.study_dir is not None:
        overrides.append(f"storage.study_dir={args.study_dir}")
    config = load_study(args.study, overrides)
    run_study(config, address=args.address, progress=not args.quiet)
    _print_report(str(config.storage.study_dir))
    return _report_failed_trials(str(config.storage.study_dir))


def run_plan(args: argparse.Namespace) -> int:
    from study.config.loading import load_study
    from study.tune.plan import format_plan, make_plan

    overrides = list(args.overrides)
    if args.study_dir is not None:
        overrides.append(f"storage.study_dir={args.study_dir}")
    config = load_study(args.study, overrides)
    config.check_inputs()
    print(format_plan(make_plan(config)))
    return 0


def run_resume(args: argparse.Namespace) -> int:
    from study.tune.runner import resume_study

    resume_study(args.study_dir, address=args.address)
    _print_report(args.study_dir)
    return _report_failed_trials(args.study_dir)


def _report_failed_trials(study_dir: str) -> int:
    """1 (with each failed trial and its cause on stderr) if a trial of the study failed, else 0."""
    from study.io.records import read_trial_records

    failed = [r for r in read_trial_records(study_dir) if r.get("status") == "error"]
    if not failed:
        return 0
    cache = layout.cache_dir(study_dir)
    lines = [f"{len(failed)} trial(s) failed; the others ran to the end and are in the report:"]
    lines += [f"  {r['trial_id']} {r.get('params')}: {r.get('error')}" for r in failed]
    lines.append(f"Fix the cause, then run the study again with --set storage.cache_dir={cache} to reuse every phase already built.")
    print("\n".join(lines), file=sys.stderr)
    return 1


def _served_uri(study_dir: str) -> str | None:
    """The study's MLflow server URL, or None when its store is a local SQLite file (opened with `ser-study ui`)."""
    from study.config.loading import load_resolved_study

    uri = load_resolved_study(study_dir).tracking_uri()
    return uri if uri.startswith(("http://", "https://")) else None


def _print_report(study_dir: str) -> None:
    report = storage.join(layout.report_dir(study_dir), "report.md")
    if storage.is_file(report):
        print(storage.read_text(report))
    print(f"report: {layout.report_dir(study_dir)}")
    served = _served_uri(study_dir)
    if served:
        print(f"MLflow UI: {_runs_view(study_dir, served)}   (the study's tracking server)")
    else:
        print(f"MLflow UI: {ui_command(study_dir)}   (then open {_runs_view(study_dir, f'http://127.0.0.1:{DEFAULT_UI_PORT}')})")


def _runs_view(study_dir: str, server: str) -> str:
    """The URL of the study's runs table on the MLflow UI at ``server`` (its home page if the store cannot be read)."""
    from study.config.loading import load_resolved_study
    from study.tracking.store import runs_view_url

    config = load_resolved_study(study_dir)
    try:
        return runs_view_url(server, config.tracking_uri(), config.name)
    except Exception as err:  # a server that is down: the link to its home page still helps
        logger.warning("could not read the experiment of %s from %s (%s)", config.name, config.tracking_uri(), err)
        return server


def run_report(args: argparse.Namespace) -> int:
    from study.tune.publish import write_study_report

    layout.require_study_dir(args.study_dir)
    print(write_study_report(args.study_dir))
    print(f"files: {layout.report_dir(args.study_dir)}")
    return 0


def run_ui(args: argparse.Namespace) -> int:
    from study.config.loading import load_resolved_study

    layout.require_study_dir(args.study_dir)
    config = load_resolved_study(args.study_dir)
    served = _served_uri(args.study_dir)
    if served:
        print(f"{args.study_dir} tracks to the MLflow server {served}: open {_runs_view(args.study_dir, served)} in a browser (on a cluster, through `ray attach cluster.yaml -p PORT`)")
        return 0
    # MLflow from this environment (not whichever `mlflow` is first on PATH), bound to loopback only.
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", config.tracking_uri(), "--host", "127.0.0.1", "--port", str(args.port)]
    print(f"MLflow UI: {_runs_view(args.study_dir, f'http://127.0.0.1:{args.port}')}   (the study's runs; Ctrl-C to stop)", flush=True)
    os.execv(sys.executable, argv)
    return 0  # not reached


def run_audit(args: argparse.Namespace) -> int:
    from study.audit.study import audit_study, write_audit
    from study.io.records import read_baseline_records, read_trial_records

    records = read_trial_records(args.study_dir) + read_baseline_records(args.study_dir)
    if not records:
        raise UserError(f"{args.study_dir} has no trial records ({layout.trials_dir(args.study_dir)} is empty or missing); run a study first")
    audit = audit_study(args.study_dir, records)
    print(audit.format())
    print(f"written: {write_audit(args.study_dir, audit)}")
    return 0 if audit.clean else 1
