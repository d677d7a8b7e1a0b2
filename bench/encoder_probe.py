"""What a frozen encoder's features hold: emotion (a linear probe per layer) and prosody (frame-level decoding).

Two measurements of an encoder before any fine-tuning, on a prepared manifest:

* the probe: each layer's frames pooled to their mean and standard deviation
  per utterance, standardised, a class-balanced logistic regression trained
  on the other sessions, test UA per held-out session (what any recipe
  on this encoder can hope to read out linearly);
* prosody decoding: a ridge regression from each layer's frames to the
  frame's log energy, log F0 (voiced frames) and voicing strength (the
  pretraining targets' prosodic features), R^2 on held-out utterances: whether
  the encoder represents pitch and energy at all, frame by frame.

``--egemaps`` adds eGeMAPSv02 functionals through the same logistic
regression and folds, the baseline to compare with, also split into its
loudness functionals, its F0 functionals and the rest.
``--loudness`` adds the utterance's loudness level (``UtteranceLoudness``, what
a classifier with ``loudness: true`` appends), alone and beside each layer;
``--spectral-balance`` adds its spectral balance (``UtteranceSpectralBalance``,
``spectral_balance: true``) the same way, beside the loudness level.

Run: ``.venv/bin/python bench/encoder_probe.py MANIFEST ENCODER [--folds 1 2] [--egemaps]``
(seconds to a minute for the tiny encoder on a few hundred utterances).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Inverse regularisation of the probe's logistic regression (strong: a few hundred utterances, 2H features).
PROBE_C = 0.1


@dataclass
class Encoded:
    """A manifest's utterances through a frozen encoder: per utterance, hidden states ``[layers+1][F, H]``, prosodic features ``[F, 3]``, loudness ``[2]`` and spectral balance ``[8]``."""

    utterances: list
    states: list[list[np.ndarray]]
    prosody: list[np.ndarray]
    loudness: np.ndarray
    spectral: np.ndarray


def encode(manifest: Path, encoder: Path) -> Encoded:
    """Every utterance of ``manifest`` through ``encoder`` (eval mode, one at a time), with its frames' prosodic features."""
    import torch

    from trainables.data.audio import load_waveform
    from trainables.data.manifest import read_manifest
    from trainables.models.encoder import load_encoder
    from trainables.models.loudness import UtteranceLoudness
    from trainables.models.spectral_balance import UtteranceSpectralBalance
    from trainables.phases.acoustic_pretrain import prosody_features

    utterances = read_manifest(manifest)
    model = load_encoder(encoder).eval()
    level, balance = UtteranceLoudness(model.info), UtteranceSpectralBalance(model.info)
    states, prosody, loudness, spectral = [], [], [], []
    with torch.no_grad():
        for u in utterances:
            waveform = load_waveform(u.path, model.info.sample_rate)
            mask = torch.ones(1, waveform.numel(), dtype=torch.long)
            out = model(waveform[None], mask, output_hidden_states=True)
            states.append([h[0].numpy() for h in out.hidden_states])
            prosody.append(prosody_features(waveform, model.info))
            loudness.append(level(waveform[None], mask)[0].numpy())
            spectral.append(balance(waveform[None], mask)[0].numpy())
    return Encoded(utterances, states, prosody, np.stack(loudness), np.stack(spectral))


def session_uas(features: np.ndarray, utterances, folds: list[int] | None) -> dict[int, float]:
    """Test UA of the probe's logistic regression per held-out session (``folds``; None: every session)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from trainables.data.labels import classes_of
    from trainables.metrics import classification_metrics

    classes = list(classes_of(utterances))
    labels = np.array([classes.index(u.label) for u in utterances])
    sessions = np.array([u.session for u in utterances])
    scores = {}
    for fold in folds or sorted(set(sessions.tolist())):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced", C=PROBE_C))
        model.fit(features[sessions != fold], labels[sessions != fold])
        scores[fold] = classification_metrics(labels[sessions == fold].tolist(), model.predict(features[sessions == fold]).tolist(), len(classes))["ua"]
    return scores


def pooled_frames(encoded: Encoded, layer: int) -> np.ndarray:
    """Each utterance's ``layer`` frames pooled to their mean and standard deviation: ``[N, 2H]``."""
    return np.stack([np.concatenate([s[layer].mean(0), s[layer].std(0)]) for s in encoded.states])


def probe(encoded: Encoded, folds: list[int] | None, loudness: bool = False, spectral: bool = False) -> dict[int, float]:
    """Mean test UA over ``folds`` of the probe on each layer's mean+std pooled frames (and the loudness level, the spectral balance): ``{layer: UA}``."""
    extra = [encoded.loudness] * loudness + [encoded.spectral] * spectral
    return {layer: mean_ua(np.hstack([pooled_frames(encoded, layer), *extra]), encoded.utterances, folds) for layer in range(len(encoded.states[0]))}


def mean_ua(features: np.ndarray, utterances, folds: list[int] | None) -> float:
    return float(np.mean(list(session_uas(features, utterances, folds).values())))


def prosody_r2(encoded: Encoded, held_out: float = 1 / 3) -> dict[int, dict[str, float]]:
    """Per layer, R^2 of a ridge regression from frames to log energy, log F0 (voiced frames) and voicing, on the last ``held_out`` of the utterances."""
    from sklearn.linear_model import Ridge

    utterances, states, prosody = encoded.utterances, encoded.states, encoded.prosody
    split = int(len(utterances) * (1 - held_out))
    targets = np.concatenate(prosody)
    in_train = np.concatenate([np.full(len(p), i < split) for i, p in enumerate(prosody)])
    voiced = targets[:, 1] > 0
    results = {}
    for layer in range(len(states[0])):
        frames = np.concatenate([s[layer] for s in states])
        results[layer] = {}
        for column, name, rows in ((0, "log energy", np.ones_like(voiced)), (1, "log F0", voiced), (2, "voicing", np.ones_like(voiced))):
            train, test = rows & in_train, rows & ~in_train
            ridge = Ridge(alpha=1.0).fit(frames[train], targets[train, column])
            results[layer][name] = float(ridge.score(frames[test], targets[test, column]))
    return results


def egemaps_features(utterances) -> tuple[np.ndarray, list[str]]:
    """The eGeMAPS baseline's own features (``run_egemaps_features``) of ``utterances``: ``[N, 88]`` in their order, and the feature names."""
    import json
    import tempfile

    from trainables.phases.egemaps import FEATURES_FILE, INDEX_FILE, run_egemaps_features

    with tempfile.TemporaryDirectory(prefix="ser-egemaps-") as tmp:
        run_egemaps_features(utterances, Path(tmp) / "features")
        features = np.load(Path(tmp) / "features" / FEATURES_FILE)
        names = json.loads((Path(tmp) / "features" / INDEX_FILE).read_text())["features"]
    return features, names


def egemaps_uas(manifest: Path, folds: list[int] | None) -> dict[str, float]:
    """Mean test UA of the probe's logistic regression on the eGeMAPS baseline's own features: all, and per group."""
    from trainables.data.manifest import read_manifest

    utterances = read_manifest(manifest)
    features, names = egemaps_features(utterances)
    loudness = np.array(["loudness" in name for name in names])
    pitch = np.array([name.startswith("F0") for name in names])
    groups = {"all": np.ones_like(loudness), "loudness": loudness, "F0": pitch, "the rest": ~loudness & ~pitch}
    return {group: mean_ua(features[:, columns], utterances, folds) for group, columns in groups.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="a manifest from `ser-study prepare`")
    parser.add_argument("encoder", type=Path, help="an encoder directory (e.g. from `ser-study tiny-encoder --pretrain-on`)")
    parser.add_argument("--folds", type=int, nargs="+", help="held-out sessions (default: every session)")
    parser.add_argument("--egemaps", action="store_true", help="also eGeMAPS functionals through the same probe (all, and per group)")
    parser.add_argument("--loudness", action="store_true", help="also the utterance's loudness level, alone and beside each layer")
    parser.add_argument("--spectral-balance", action="store_true", help="also the utterance's spectral balance, alone and beside each layer with the loudness level")
    args = parser.parse_args()
    encoded = encode(args.manifest, args.encoder)
    uas, r2 = probe(encoded, args.folds), prosody_r2(encoded)
    with_loudness = probe(encoded, args.folds, loudness=True) if args.loudness else {}
    with_both = probe(encoded, args.folds, loudness=True, spectral=True) if args.spectral_balance else {}
    header = ["layer", f"probe test UA % (folds {args.folds or 'all'})", "with loudness", "with loudness and spectral balance", "R^2 log energy", "R^2 log F0", "R^2 voicing"]
    print("| " + " | ".join(header) + " |")
    print("| --- " * len(header) + "|")

    def summary_row(name: str, ua: float) -> None:
        print(f"| {name} | {100 * ua:.1f} |" + " |" * (len(header) - 2))

    for layer, ua in uas.items():
        beside = " | ".join(f"{100 * extra[layer]:.1f}" if extra else "" for extra in (with_loudness, with_both))
        print(f"| {layer} | {100 * ua:.1f} | {beside} | " + " | ".join(f"{r2[layer][name]:.2f}" for name in ("log energy", "log F0", "voicing")) + " |")
    alone = {"loudness alone": [encoded.loudness] if args.loudness else [], "spectral balance alone": [encoded.spectral] if args.spectral_balance else [],
             "loudness and spectral balance": [encoded.loudness, encoded.spectral] if args.spectral_balance else []}
    for name, parts in alone.items():
        if parts:
            summary_row(name, mean_ua(np.hstack(parts), encoded.utterances, args.folds))
    if args.egemaps:
        for group, ua in egemaps_uas(args.manifest, args.folds).items():
            summary_row(f"eGeMAPS, {group}", ua)


if __name__ == "__main__":
    main()
