"""``ser-study tiny-encoder``: a tiny HuBERT for demos and tests, optionally pretrained on a corpus."""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from study.errors import UserError
from trainables.config import TinyEncoderConfig, smoke_settings


def add_tiny_encoder_parser(subparsers) -> None:
    defaults = TinyEncoderConfig()
    parser = subparsers.add_parser("tiny-encoder", help="save a tiny randomly initialised HuBERT for demos and tests")
    parser.add_argument("out", type=Path, help="directory to create (config.json, model.safetensors)")
    parser.add_argument("--layers", type=int, default=defaults.num_layers, help="transformer layers")
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size, help="transformer width")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="initialisation seed")
    parser.add_argument("--norm", choices=("group", "layer"), default="group",
                        help="the CNN's normalisation: group (HuBERT-base: per channel over time; the default, as its CNN learns pitch where "
                        "a layer-norm CNN, normalising every step of the waveform's features, does not: docs/learning.md) or layer (HuBERT-large)")
    parser.add_argument("--pretrain-on", type=Path, metavar="MANIFEST",
                        help="pretrain by masked prediction of k-means clusters of acoustic frames (HuBERT's first iteration) on this manifest's audio; "
                        "use a corpus other than the study's, as HuBERT is pretrained on LibriSpeech, so that no test session is in the encoder")
    parser.add_argument("--pretrain-epochs", type=int, default=8, help="epochs of that pretraining")
    parser.add_argument("--targets", choices=("mfcc", "mfcc+prosody"), default="mfcc+prosody",
                        help="the frames clustered into targets: 39 MFCCs with deltas, and log energy, log F0 and voicing (default)")
    parser.add_argument("--unmasked-weight", type=float, default=1.0,
                        help="weight of the loss on unmasked frames beside the masked ones (HuBERT-base: 0); it teaches the random CNN each frame's own features")
    parser.set_defaults(handler=run_tiny_encoder)


def run_tiny_encoder(args: argparse.Namespace) -> int:
    if args.out.exists() and any(args.out.iterdir()):
        raise UserError(f"{args.out} exists and is not empty; choose a new directory")
    if args.layers < 1 or args.hidden_size < 8 or args.hidden_size % 4:
        raise UserError("--layers must be >= 1 and --hidden-size a multiple of 4, at least 8")
    from trainables.data.manifest import ManifestError, read_manifest
    from trainables.models.encoder import make_tiny_encoder
    from trainables.phases.acoustic_pretrain import pretrain_on_acoustic_clusters

    utterances = None
    if args.pretrain_on is not None:
        try:
            utterances = read_manifest(args.pretrain_on)
        except ManifestError as err:
            raise UserError(str(err)) from None
        if args.pretrain_epochs < 1:
            raise UserError("--pretrain-epochs must be at least 1")
        if args.unmasked_weight < 0:
            raise UserError("--unmasked-weight must not be negative")
    config = TinyEncoderConfig(hidden_size=args.hidden_size, num_layers=args.layers, intermediate_size=2 * args.hidden_size, seed=args.seed, feat_extract_norm=args.norm)
    if utterances is None:
        make_tiny_encoder(args.out, config)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.exists():
            args.out.rmdir()
        with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
            initial = make_tiny_encoder(Path(tmp) / "init", config)
            settings = smoke_settings(epochs=args.pretrain_epochs)
            pretrain_on_acoustic_clusters(initial, utterances, args.out, replace(settings.cpt, train=replace(settings.cpt.train, seed=args.seed)),
                                          prosody=args.targets == "mfcc+prosody", unmasked_weight=args.unmasked_weight)
    print(f"tiny encoder: {args.out}")
    return 0
