"""Which of eGeMAPS's feature groups carry a corpus's emotions: each group alone, and all but it.

The eGeMAPS baseline's features (88 functionals) through ``encoder_probe``'s
logistic regression (standardised, class-balanced, C 0.1), scored leave-one-session-out on the manifest's sessions, with the
features grouped as openSMILE names them: pitch, loudness, tempo (rates and
segment lengths), spectral balance (alpha ratio, Hammarberg index, slopes,
flux, MFCCs) and voice quality (jitter, shimmer, HNR, harmonic differences,
formants). Where one group alone reaches all of eGeMAPS, that cue is what a
model has to hear; where leaving out any one costs little, the cues overlap.

With ``--encoder``, also what each group adds to what a smoke classifier
reads from that encoder: the probe of ``encoder_probe`` (a layer's frames'
mean and spread, frozen) with the loudness level and the spectral balance,
alone and with each group beside it. A group that lifts it to eGeMAPS is the
cue the classifier misses.

Run: ``.venv/bin/python bench/egemaps_groups.py MANIFEST [--folds 1 2 3 4 5] [--encoder DIR --layer 0]``
(seconds for the demo corpus, a minute with the encoder). Writes ``bench/results/egemaps_groups.md``.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import numpy as np

from encoder_probe import egemaps_features, encode, mean_ua, pooled_frames
from machine import describe_machine
from trainables.atomic import atomic_write_text
from trainables.data.labels import classes_of
from trainables.data.manifest import read_manifest

RESULTS = Path(__file__).parent / "results" / "egemaps_groups.md"
#: openSMILE's eGeMAPSv02 functional names, by the cue they measure.
GROUPS = {
    "pitch": lambda name: name.startswith("F0"),
    "loudness": lambda name: name.startswith(("loudness", "equivalentSoundLevel")) and "PerSec" not in name,
    "tempo": lambda name: "PerSec" in name or "SegmentLength" in name,
    "spectral balance": lambda name: any(key in name for key in ("alpha", "hammarberg", "slope", "spectralFlux", "mfcc")),
    "voice quality": lambda name: any(key in name for key in ("jitter", "shimmer", "HNR", "H1", "logRel", "F1", "F2", "F3")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--encoder", type=Path, help="also score what each group adds to this encoder's probe with the loudness level and spectral balance")
    parser.add_argument("--layer", type=int, default=0, help="the hidden_states index the encoder's probe reads")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results file to write")
    args = parser.parse_args()
    utterances = read_manifest(args.manifest)
    classes = list(classes_of(utterances))
    features, names = egemaps_features(utterances)
    everything = list(range(len(names)))
    group_columns = {group: [i for i, name in enumerate(names) if member(name)] for group, member in GROUPS.items()}
    rows = [f"| all | {len(names)} | {100 * mean_ua(features, utterances, args.folds):.1f} | - |"]
    for group, columns in group_columns.items():
        rest = [i for i in everything if i not in columns]
        alone, without = (100 * mean_ua(features[:, part], utterances, args.folds) for part in (columns, rest))
        rows.append(f"| {group} | {len(columns)} | {alone:.1f} | {without:.1f} |")
    beside = [] if args.encoder is None else encoder_rows(args.manifest, args.encoder, args.layer, features, group_columns, args.folds)
    text = "\n".join([
        "# eGeMAPS feature groups: which cues carry the emotions",
        "",
        f"- date: {datetime.date.today().isoformat()}; machine: {describe_machine()}",
        f"- command: `.venv/bin/python bench/egemaps_groups.py {args.manifest} --folds {' '.join(map(str, args.folds))}"
        + ("" if args.encoder is None else f" --encoder {args.encoder} --layer {args.layer}") + "`",
        f"- {len(utterances)} utterances, classes {classes}; test UA in %, mean over the held-out sessions {args.folds}",
        "  (training on the other sessions, no validation: C fixed at 0.1)",
        "",
        "| features | count | that group alone | all but that group |",
        "| --- | ---: | ---: | ---: |",
        *rows,
        "",
        *beside,
    ])
    atomic_write_text(args.out, text)
    print(text)


def encoder_rows(manifest: Path, encoder: Path, layer: int, features: np.ndarray, group_columns: dict[str, list[int]], folds: list[int]) -> list[str]:
    """The results' second table: the encoder's probe (``layer``, loudness level, spectral balance) alone and with each group's ``features`` columns beside it."""
    encoded = encode(manifest, encoder)
    view = np.hstack([pooled_frames(encoded, layer), encoded.loudness, encoded.spectral])
    rows = [f"| the probe alone | {view.shape[1]} | {100 * mean_ua(view, encoded.utterances, folds):.1f} |"]
    for group, columns in group_columns.items():
        rows.append(f"| the probe + {group} | {view.shape[1] + len(columns)} | {100 * mean_ua(np.hstack([view, features[:, columns]]), encoded.utterances, folds):.1f} |")
    return [
        f"What each group adds to `{encoder}`'s probe (hidden_states[{layer}]: mean and spread of the frames, with the loudness",
        "level and the spectral balance, as a smoke classifier reads them; the encoder frozen):",
        "",
        "| features | count | test UA |",
        "| --- | ---: | ---: |",
        *rows,
        "",
    ]


if __name__ == "__main__":
    main()
