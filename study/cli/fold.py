"""``ser-study run-fold``: the phases of one method for one fold from the command line, without Ray Tune."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import yaml

from study.errors import UserError
from trainables.config import POOLINGS, PRESETS, RayResources

logger = logging.getLogger(__name__)

#: The flags of the paper's parameters, as run-fold always had them.
ALIGNMENT_FLAGS = ("layer", "clusters", "mask_ratio", "pooling")


def add_run_fold_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run-fold",
        help="run one method's phases for one leave-one-session-out fold",
        description="One fold of one method (default: alignment, TAPT -> frame embeddings -> k-means -> continued pretraining -> "
        "fine-tuning); prints UA/WA. Parameters left out take the method's defaults.",
    )
    parser.add_argument("--data", type=Path, required=True, help="manifest CSV from `ser-study prepare`")
    parser.add_argument("--encoder", required=True, help="pretrained encoder: local directory or hub id")
    parser.add_argument("--fold", type=int, required=True, help="test session (1..5)")
    parser.add_argument("--method", default="alignment", help="the method (a recipe: alignment, finetune, tapt, egemaps, ...)")
    parser.add_argument("--layer", type=int, help="alignment: hidden_states index to cluster (1..num_layers)")
    parser.add_argument("--clusters", type=int, help="alignment: k-means cluster count K")
    parser.add_argument("--mask-ratio", type=float, help="alignment: fraction of frames masked in continued pretraining")
    parser.add_argument("--pooling", choices=POOLINGS, help="utterance pooling of the final classifier")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="any parameter of the method (value read as YAML), repeatable")
    parser.add_argument("--out", type=Path, required=True, help="directory for the fold's artifacts and result.json")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="hubert", help="fixed phase settings: hubert (HuBERT-base on GPU) or smoke (tiny encoder on CPU)")
    parser.add_argument("--epochs", type=int, help="override the epochs of every training phase")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split and of training")
    parser.add_argument("--executor", choices=("local", "ray"), default="local", help="run phases in this process or as Ray Train jobs")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers per training phase (--executor ray)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray Train worker (--executor ray)")
    parser.set_defaults(handler=run_run_fold)


def _params(args: argparse.Namespace) -> dict:
    params = {name: getattr(args, name) for name in ALIGNMENT_FLAGS if getattr(args, name) is not None}
    for text in args.param:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--param {text!r}: expected NAME=VALUE, e.g. --param clusters=8")
        params[name.strip()] = yaml.safe_load(value) if value.strip() else None
    return params


def run_run_fold(args: argparse.Namespace) -> int:
    from study.cache.chain import FoldChain, run_fold_chain
    from study.cache.store import ArtifactCache
    from trainables.atomic import atomic_write_text
    from trainables.data.folds import FoldProtocol
    from trainables.data.labels import classes_of
    from trainables.data.manifest import ManifestError, read_manifest
    from trainables.executors import make_executor
    from trainables.models.encoder import EncoderError, read_encoder_info
    from trainables.recipes.registry import get_recipe

    # Everything is checked before any phase starts.
    try:
        recipe = get_recipe(args.method)
    except KeyError as err:
        raise UserError(f"--method: {err.args[0]}") from None
    try:
        params = recipe.resolve(_params(args))
    except ValueError as err:
        raise UserError(str(err)) from None
    try:
        utterances = read_manifest(args.data)
        info = read_encoder_info(args.encoder)
        for layer in sorted(recipe.layers(params)):
            info.check_layer(layer, "--layer")
    except (ManifestError, EncoderError) as err:
        raise UserError(str(err)) from None
    for param, problem in recipe.data_problems(params, utterances):
        raise UserError(f"--param {param}: {problem} ({args.data})")
    if args.epochs is not None and args.epochs < 1:
        raise UserError("--epochs must be at least 1")
    protocol = FoldProtocol(seed=args.seed)
    try:
        settings = PRESETS[args.preset]().with_training(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    except ValueError as err:
        raise UserError(str(err)) from None
    sessions = sorted({u.session for u in utterances})
    if args.fold not in sessions:
        raise UserError(f"--fold {args.fold} has no utterances in {args.data}; sessions present: {sessions}")
    executor = make_executor(args.executor, RayResources(workers=args.workers, gpus_per_worker=args.gpus_per_worker), storage=args.out / "ray")
    chain = FoldChain(utterances, args.fold, protocol, args.method, params, settings, args.encoder, classes_of(utterances))
    result = run_fold_chain(chain, ArtifactCache(args.out / "cache"), executor)
    atomic_write_text(args.out / "result.json", json.dumps(result.to_dict(), indent=2))
    print(
        f"fold {args.fold}, {args.method} {params} ({protocol.describe()})\n"
        f"  val : UA {100 * result.val['ua']:.1f}  WA {100 * result.val['wa']:.1f}\n"
        f"  test: UA {100 * result.test['ua']:.1f}  WA {100 * result.test['wa']:.1f}  macro-F1 {100 * result.test['macro_f1']:.1f}"
        f"  ({result.test['count']} utterances, {result.seconds:.0f} s)\n"
        f"result: {args.out / 'result.json'}"
    )
    return 0
