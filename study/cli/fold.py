"""``ser-study run-fold``: the phases of one fold from the command line, without Ray Tune."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from study.errors import UserError
from trainables.config import POOLINGS, PRESETS, Candidate, RayResources

logger = logging.getLogger(__name__)


def add_run_fold_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run-fold",
        help="run the five phases for one leave-one-session-out fold",
        description="TAPT -> frame embeddings -> k-means -> continued pretraining -> fine-tuning, for one fold; prints UA/WA.",
    )
    parser.add_argument("--data", type=Path, required=True, help="manifest CSV from `ser-study prepare`")
    parser.add_argument("--encoder", required=True, help="pretrained encoder: local directory or hub id")
    parser.add_argument("--fold", type=int, required=True, help="test session (1..5)")
    parser.add_argument("--layer", type=int, required=True, help="hidden_states index to cluster (1..num_layers)")
    parser.add_argument("--clusters", type=int, required=True, help="k-means cluster count K")
    parser.add_argument("--mask-ratio", type=float, required=True, help="fraction of frames masked in continued pretraining")
    parser.add_argument("--pooling", choices=POOLINGS, required=True, help="utterance pooling of the final classifier")
    parser.add_argument("--out", type=Path, required=True, help="directory for the fold's artifacts and result.json")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="hubert", help="fixed phase settings: hubert (HuBERT-base on GPU) or smoke (tiny encoder on CPU)")
    parser.add_argument("--epochs", type=int, help="override the epochs of TAPT, CPT and fine-tuning")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split and of training")
    parser.add_argument("--executor", choices=("local", "ray"), default="local", help="run phases in this process or as Ray Train jobs")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers per training phase (--executor ray)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray Train worker (--executor ray)")
    parser.set_defaults(handler=run_run_fold)


def run_run_fold(args: argparse.Namespace) -> int:
    from study.cache.chain import run_fold_chain
    from study.cache.store import ArtifactCache
    from trainables.atomic import atomic_write_text
    from trainables.data.folds import FoldProtocol
    from trainables.data.labels import classes_of
    from trainables.data.manifest import ManifestError, read_manifest
    from trainables.executors import make_executor
    from trainables.models.encoder import EncoderError, read_encoder_info

    # Everything is checked before any phase starts.
    try:
        utterances = read_manifest(args.data)
        info = read_encoder_info(args.encoder)
        info.check_layer(args.layer, "--layer")
    except (ManifestError, EncoderError) as err:
        raise UserError(str(err)) from None
    if args.epochs is not None and args.epochs < 1:
        raise UserError("--epochs must be at least 1")
    candidate = Candidate(layer=args.layer, clusters=args.clusters, mask_ratio=args.mask_ratio, pooling=args.pooling)
    protocol = FoldProtocol(seed=args.seed)
    try:
        candidate.validate()
        settings = PRESETS[args.preset]().with_training(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    except ValueError as err:
        raise UserError(str(err)) from None
    sessions = sorted({u.session for u in utterances})
    if args.fold not in sessions:
        raise UserError(f"--fold {args.fold} has no utterances in {args.data}; sessions present: {sessions}")
    executor = make_executor(args.executor, RayResources(workers=args.workers, gpus_per_worker=args.gpus_per_worker), storage=args.out / "ray")
    result = run_fold_chain(
        utterances, args.fold, protocol, candidate, settings, args.encoder, classes_of(utterances), ArtifactCache(args.out / "cache"), executor
    )
    atomic_write_text(args.out / "result.json", json.dumps(result.to_dict(), indent=2))
    print(
        f"fold {args.fold} ({protocol.describe()})\n"
        f"  val : UA {100 * result.val['ua']:.1f}  WA {100 * result.val['wa']:.1f}\n"
        f"  test: UA {100 * result.test['ua']:.1f}  WA {100 * result.test['wa']:.1f}  macro-F1 {100 * result.test['macro_f1']:.1f}"
        f"  ({result.test['count']} utterances, {result.seconds:.0f} s)\n"
        f"result: {args.out / 'result.json'}"
    )
    return 0
