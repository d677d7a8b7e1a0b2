"""``ser-study predict | export``: the best configuration's models, used on new audio or exported for transformers."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from study.io import layout

FORMATS = ("table", "json", "csv")
DEFAULT_CHUNK_SECONDS = 20.0
DEFAULT_BATCH_SECONDS = 60.0


def add_model_parsers(subparsers) -> None:
    predict = subparsers.add_parser(
        "predict",
        help="class probabilities of audio files from the best configuration's fold models",
        epilog="exit status: 0 when every file was scored; 1 when some were skipped (not readable audio; each is named on stderr); 2 on bad input.",
    )
    predict.add_argument("study_dir", help="study directory (local path or s3:// URI)")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="audio files, folders (searched recursively for audio) or quoted glob patterns")
    predict.add_argument("--format", choices=FORMATS, default="table", help="table (default), json (one object per file) or csv")
    predict.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N")
    predict.add_argument("--fold", type=int, help="only the model of this test session's fold (default: the ensemble of every fold)")
    predict.add_argument("--chunk-seconds", type=float, default=DEFAULT_CHUNK_SECONDS, help=f"score longer audio in chunks of this length, averaged (default {DEFAULT_CHUNK_SECONDS:g})")
    predict.add_argument("--batch-seconds", type=float, default=DEFAULT_BATCH_SECONDS, help=f"at most this much audio per batch (default {DEFAULT_BATCH_SECONDS:g})")
    predict.set_defaults(handler=run_predict)

    export = subparsers.add_parser(
        "export",
        help="write the best configuration's model as a HuggingFace directory (pipeline('audio-classification'))",
        description="Write one fold model of the study's best configuration as a HuggingFace model directory: config.json "
        "(id2label, pooling, auto_map), model.safetensors, preprocessor_config.json, the modeling code and a model card. "
        "It is also logged to the trial's MLflow run.",
    )
    export.add_argument("study_dir", help="study directory (local path or s3:// URI)")
    export.add_argument("out", type=Path, help="the directory to write (must not exist, or be empty)")
    export.add_argument("--fold", type=int, help="the test session whose fold model to export (default: the fold with the best validation UA)")
    export.add_argument("--register", metavar="NAME", help="also register the model in the MLflow model registry under NAME")
    export.add_argument("--no-mlflow", action="store_true", help="do not log the model to the trial's MLflow run")
    export.set_defaults(handler=run_export)


def run_predict(args: argparse.Namespace) -> int:
    from study.predict import predict

    layout.require_study_dir(args.study_dir)
    predictions, skipped = predict(args.study_dir, args.paths, device=args.device, chunk_seconds=args.chunk_seconds, batch_seconds=args.batch_seconds, fold=args.fold)
    classes = list(predictions[0].probabilities) if predictions else []
    if args.format == "json":
        for p in predictions:
            print(json.dumps({"path": p.path, "label": p.label, "probabilities": p.probabilities, "seconds": round(p.seconds, 3), "chunks": p.chunks}))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "label", *classes, "seconds", "chunks"])
        for p in predictions:
            writer.writerow([p.path, p.label, *(f"{p.probabilities[c]:.6f}" for c in classes), f"{p.seconds:.3f}", p.chunks])
    else:
        for p in predictions:
            probs = "  ".join(f"{c} {v:.3f}" for c, v in p.probabilities.items())
            print(f"{p.path}: {p.label}   ({probs})")
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} of {len(skipped) + len(predictions)} file(s) skipped", file=sys.stderr)
    return 1 if skipped else 0


def run_export(args: argparse.Namespace) -> int:
    from study.export.hf import export_model

    layout.require_study_dir(args.study_dir)
    exported = export_model(args.study_dir, args.out, fold=args.fold, log_to_mlflow=not args.no_mlflow, register=args.register)
    print(f"exported trial {exported.trial_id}, fold {exported.test_session} (test UA {exported.test_ua:.3f}) to {exported.out}")
    if exported.model_uri:
        print(f"MLflow model: {exported.model_uri}" + (f"   registered as {args.register} version {exported.registered_version}" if exported.registered_version else ""))
    print(f'load it: transformers.pipeline("audio-classification", model="{exported.out}", trust_remote_code=True)')
    return 0
