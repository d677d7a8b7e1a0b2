"""``ser-study tiny-encoder`` and ``ser-study run-fold``: one fold of the method from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

from study.cache import ArtifactCache
from study.chain import run_fold_chain
from study.errors import UserError
from trainables.atomic import atomic_write_text
from trainables.data.labels import LABEL_SETS
from trainables.data.manifest import ManifestError, Utterance, read_manifest
from trainables.models.encoder import EncoderError, TinyEncoderConfig, make_tiny_encoder, read_encoder_info
from trainables.models.pooling import POOLINGS
from trainables.phases.mfcc_pretrain import pretrain_on_mfcc_clusters
from trainables.phases.settings import Candidate, PhaseSettings, Protocol, smoke_settings

logger = logging.getLogger(__name__)

PRESETS = {"hubert": PhaseSettings, "smoke": smoke_settings}


def add_tiny_encoder_parser(subparsers) -> None:
    defaults = TinyEncoderConfig()
    parser = subparsers.add_parser("tiny-encoder", help="save a tiny randomly initialised HuBERT for demos and tests")
    parser.add_argument("out", type=Path, help="directory to create (config.json, model.safetensors)")
    parser.add_argument("--layers", type=int, default=defaults.num_layers, help="transformer layers")
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size, help="transformer width")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="initialisation seed")
    parser.add_argument("--pretrain-on", type=Path, metavar="MANIFEST", help="pretrain by masked prediction of MFCC clusters (HuBERT's first iteration) on this manifest's audio")
    parser.add_argument("--pretrain-epochs", type=int, default=8, help="epochs of that pretraining")
    parser.set_defaults(handler=run_tiny_encoder)


def run_tiny_encoder(args: argparse.Namespace) -> int:
    if args.out.exists() and any(args.out.iterdir()):
        raise UserError(f"{args.out} exists and is not empty; choose a new directory")
    if args.layers < 1 or args.hidden_size < 8 or args.hidden_size % 4:
        raise UserError("--layers must be >= 1 and --hidden-size a multiple of 4, at least 8")
    utterances = None
    if args.pretrain_on is not None:
        try:
            utterances = read_manifest(args.pretrain_on)
        except ManifestError as err:
            raise UserError(str(err)) from None
        if args.pretrain_epochs < 1:
            raise UserError("--pretrain-epochs must be at least 1")
    config = TinyEncoderConfig(hidden_size=args.hidden_size, num_layers=args.layers, intermediate_size=2 * args.hidden_size, seed=args.seed)
    if utterances is None:
        make_tiny_encoder(args.out, config)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.exists():
            args.out.rmdir()
        with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
            initial = make_tiny_encoder(Path(tmp) / "init", config)
            settings = smoke_settings(epochs=args.pretrain_epochs)
            pretrain_on_mfcc_clusters(initial, utterances, args.out, replace(settings.cpt, train=replace(settings.cpt.train, seed=args.seed)))
    print(f"tiny encoder: {args.out}")
    return 0


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


def classes_of(utterances: list[Utterance]) -> tuple[str, ...]:
    """The class order of the label set the manifest was prepared with."""
    labels = {u.label for u in utterances}
    for label_set in LABEL_SETS.values():
        if labels <= set(label_set.classes):
            return label_set.classes
    return tuple(sorted(labels))


def settings_for(preset: str, epochs: int | None, seed: int) -> PhaseSettings:
    settings = PRESETS[preset]()
    def retrain(cfg):
        train = replace(cfg.train, seed=seed, **({"epochs": epochs} if epochs else {}))
        return replace(cfg, train=train)
    return replace(settings, tapt=retrain(settings.tapt), cpt=retrain(settings.cpt), finetune=retrain(settings.finetune))


def run_run_fold(args: argparse.Namespace) -> int:
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
    protocol = Protocol(seed=args.seed)
    settings = settings_for(args.preset, args.epochs, args.seed)
    try:
        candidate.validate()
        settings.validate()
    except ValueError as err:
        raise UserError(str(err)) from None
    sessions = sorted({u.session for u in utterances})
    if args.fold not in sessions:
        raise UserError(f"--fold {args.fold} has no utterances in {args.data}; sessions present: {sessions}")
    if args.executor == "ray":
        from trainables.ray_train import RayExecutor, RayResources

        executor = RayExecutor(RayResources(workers=args.workers, gpus_per_worker=args.gpus_per_worker), storage=args.out / "ray")
    else:
        from trainables.executors import LocalExecutor

        executor = LocalExecutor()
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
