"""Running small studies through the real command line, and reading what they leave, for the study-level tests."""

from __future__ import annotations

import collections
import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from study.io import layout, storage
from study.io.records import read_trial_records

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"

#: A two-trial study (K 4 then K 5, one at a time): trials share TAPT and embeddings, not k-means onwards.
KILL_STUDY = ("name=faults", "search.space.clusters={choice: [4, 5]}", "search.space.pooling={choice: [attention]}",
              "search.algorithm=grid", "search.num_trials=2", "search.max_concurrent=1")
#: Columns of the report's CSV files that differ from run to run: wall-clock times and the Ray node that ran a fold.
TIME_COLUMNS = ("started", "finished", "seconds", "node")
#: Columns that say which fold chain built a phase and which found it cached: history, not results.
PROVENANCE_COLUMNS = ("built", "cached")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "study.cli", *args]


def first_wav(manifest: Path) -> Path:
    """The audio file of a manifest's first utterance."""
    with open(manifest, newline="") as handle:
        return Path(next(csv.DictReader(handle))["path"])


def run_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=timeout)


def study_args(manifest: Path, encoder: Path, study_dir: Path, *extra: str) -> list[str]:
    """``run smoke.yaml`` on the small corpus with the tiny test encoder: one epoch per phase, two folds; ``extra`` are --set values."""
    sets = [
        f"name=e2e-{study_dir.name}",
        f"data.manifest={manifest}",
        f"encoder={encoder}",
        "folds=[1, 2]",
        "phases.epochs=1",
        "phases.kmeans.max_fit_frames=5000",
        "search.space.layer={choice: [2]}",
        "baselines=[]",  # the study-level tests are about the search; tests/test_study_e2e.py runs the baselines
        *extra,
    ]
    return ["run", str(SMOKE), "--study-dir", str(study_dir)] + [item for s in sets for item in ("--set", s)]


def cache_events(study_dir: Path | str) -> list[dict[str, Any]]:
    """The phase cache's events (hits, builds, corrupt artifacts), oldest first (a local study or an s3:// one)."""
    paths = sorted(storage.list_files(storage.join(layout.cache_dir(study_dir), "events"), suffix=".json"))
    return [json.loads(text) for text in storage.read_texts(paths) if text is not None]


def built_phases(study_dir: Path | str) -> collections.Counter:
    """How many artifacts of each phase the study's cache built (from its events); an artifact built twice fails the test."""
    built = [(e["phase"], e["key"]) for e in cache_events(study_dir) if e["event"] == "built"]
    assert len(built) == len(set(built)), f"an artifact was built twice: {built}"
    return collections.Counter(phase for phase, _ in built)


def trial_names(study_dir: Path) -> dict[str, str]:
    """Tune's trial ids (random per experiment) -> a name made of the trial's parameters."""
    return {r["trial_id"]: "trial(" + " ".join(f"{k}={v}" for k, v in sorted(r["params"].items())) + ")" for r in read_trial_records(study_dir)}


def normalized_report(study_dir: Path, drop: tuple[str, ...] = TIME_COLUMNS) -> dict[str, str]:
    """The report's text files with trial ids replaced by their parameters and the CSV columns ``drop`` dropped.

    Everything else (every metric, to the last digit, the table, the best
    configuration, the audit line) must match between runs of one study file.
    """
    names = trial_names(study_dir)
    files: dict[str, str] = {}
    for path in sorted(storage.list_files(layout.report_dir(study_dir))):
        suffix = "." + storage.name(path).rsplit(".", 1)[-1]
        if suffix not in (".md", ".csv", ".json"):
            continue  # the PNGs draw the same numbers
        text = storage.read_text(path)
        for trial_id, name in names.items():
            text = text.replace(trial_id, name)
        if suffix == ".csv":
            text = _drop_columns(text, drop)
        files[storage.name(path)] = text
    return files


def _drop_columns(text: str, columns: tuple[str, ...]) -> str:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        return text
    keep = [c for c in rows[0] if c not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, keep, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
