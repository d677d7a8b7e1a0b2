"""The ``ser-study`` command line."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from typing import Sequence

from study.cli.data import add_demo_data_parser, add_prepare_parser
from study.cli.encoder import add_tiny_encoder_parser
from study.cli.fold import add_run_fold_parser
from study.cli.model import add_model_parsers
from study.cli.study import add_study_parsers
from study.errors import UserError

logger = logging.getLogger("study")


def _version() -> str:
    try:
        return importlib.metadata.version("ser-study")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed; run `make install`)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser-study", description="Hyperparameter studies of speech emotion recognition methods (frame-level alignment, GMP-TL, metadata-enhanced SER) and their baselines over leave-one-session-out folds.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print the installed version and exit")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_prepare_parser(subparsers)
    add_demo_data_parser(subparsers)
    add_tiny_encoder_parser(subparsers)
    add_run_fold_parser(subparsers)
    add_study_parsers(subparsers)
    add_model_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        return args.handler(args)
    except UserError as err:
        print(f"ser-study {args.command}: error: {err}", file=sys.stderr)
        return 2


