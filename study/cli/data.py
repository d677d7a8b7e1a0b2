"""``ser-study prepare`` and ``ser-study demo-data``: from a corpus on disk to a manifest."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from study.errors import UserError
from trainables.atomic import atomic_write_text
from trainables.data.demo_corpus import ENGINES, DemoCorpusConfig, generate_demo_corpus
from trainables.data.iemocap import ALL_SESSIONS, CorpusError, problem_report_path, problem_report_text, read_iemocap, summary_table
from trainables.data.labels import DEFAULT_LABEL_SET, LABEL_SETS, get_label_set
from trainables.data.manifest import write_manifest

logger = logging.getLogger(__name__)


def _sessions(text: str) -> tuple[int, ...]:
    try:
        sessions = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sessions must be comma-separated numbers in 1..5, got {text!r}") from None
    if not sessions or any(s not in ALL_SESSIONS for s in sessions):
        raise argparse.ArgumentTypeError(f"sessions must be comma-separated numbers in 1..5, got {text!r}")
    return sessions


def add_prepare_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="read an IEMOCAP release into a manifest CSV",
        description="Read IEMOCAP (or the generated demo corpus) into a manifest CSV, with a problem report beside it.",
    )
    parser.add_argument("root", type=Path, help="folder holding Session1..5, IEMOCAP_full_release/ or IEMOCAP/")
    parser.add_argument("--out", type=Path, required=True, help="manifest CSV to write (a <stem>.problems.csv is written beside it)")
    parser.add_argument(
        "--label-set",
        default=DEFAULT_LABEL_SET,
        choices=sorted(LABEL_SETS),
        help="which labels to keep: " + "; ".join(f"{n}: {s.description}" for n, s in LABEL_SETS.items()),
    )
    parser.add_argument("--sessions", type=_sessions, default=ALL_SESSIONS, help="comma-separated sessions to read (default: 1,2,3,4,5)")
    parser.set_defaults(handler=run_prepare)


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"cannot write {path}: {existing} is not a writable folder; choose another --out")
    if path.is_dir():
        raise UserError(f"--out {path} is a folder; give a file name such as {path / 'manifest.csv'}")


def run_prepare(args: argparse.Namespace) -> int:
    _check_writable(args.out)
    label_set = get_label_set(args.label_set)
    try:
        reading = read_iemocap(args.root, label_set, args.sessions)
    except CorpusError as err:
        raise UserError(str(err)) from None
    for problem in reading.problems:
        logger.warning("%s%s: %s (%s)", problem.path, f" [{problem.utt_id}]" if problem.utt_id else "", problem.problem, problem.action)
    report = problem_report_path(args.out)
    atomic_write_text(report, problem_report_text(reading.problems))
    write_manifest(reading.utterances, args.out)
    print(summary_table(reading))
    print(f"\nmanifest: {args.out}\nproblem report: {report} ({len(reading.problems)} entries)")
    return 0


def add_demo_data_parser(subparsers) -> None:
    defaults = DemoCorpusConfig()
    parser = subparsers.add_parser(
        "demo-data",
        help="generate a small IEMOCAP-shaped corpus",
        description="Write a synthetic corpus in the exact IEMOCAP layout: emotions carried by prosody, 5 sessions x 2 speakers.",
    )
    parser.add_argument("out", type=Path, help="folder to create; the corpus lands in OUT/IEMOCAP_full_release")
    parser.add_argument("--utterances-per-session", type=int, default=defaults.utterances_per_session, help="labelled turns per session, all labels included")
    parser.add_argument("--median-duration", type=float, default=defaults.median_duration_s, help="median utterance length in seconds")
    parser.add_argument("--max-duration", type=float, default=defaults.max_duration_s, help="longest line in seconds at a neutral rate (synth engine)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the corpus is a function of this seed (other seeds: other speakers, lines and draws)")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=defaults.engine,
        help="synth: built-in source-filter syllables (no external program); espeak: English sentences from espeak-ng and sox (Debian packages espeak-ng, sox)",
    )
    parser.set_defaults(handler=run_demo_data)


def run_demo_data(args: argparse.Namespace) -> int:
    config = DemoCorpusConfig(
        utterances_per_session=args.utterances_per_session,
        median_duration_s=args.median_duration,
        max_duration_s=args.max_duration,
        seed=args.seed,
        engine=args.engine,
    )
    try:
        release = generate_demo_corpus(args.out, config)
    except (ValueError, FileExistsError, RuntimeError) as err:
        raise UserError(str(err)) from None
    print(f"generated corpus: {release}")
    return 0
