"""Trial and baseline records: one JSON file each, the source of truth of the report and the audit.

Trials live in ``<study_dir>/trials/<trial_id>.json``, baselines in
``<study_dir>/baselines/<name>.json``; a record's ``kind`` says which.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from study.io import layout, storage

logger = logging.getLogger(__name__)


def load_record(study_dir: str, trial_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(layout.trial_record(study_dir, trial_id)))
    except FileNotFoundError:
        return None


def save_record(study_dir: str, record: dict[str, Any]) -> None:
    """Write a trial's or a baseline's record (local: temporary file renamed into place; object store: one PUT)."""
    if record.get("kind") == "baseline":
        target = layout.baseline_record(study_dir, record["method"])
    else:
        target = layout.trial_record(study_dir, record["trial_id"])
    storage.write_text(target, json.dumps(record, indent=2))


def load_baseline_record(study_dir: str | Path, name: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(layout.baseline_record(study_dir, name)))
    except FileNotFoundError:
        return None


def read_baseline_records(study_dir: str | Path) -> list[dict[str, Any]]:
    """Every baseline record of a study, by name."""
    texts = storage.read_texts(storage.list_files(layout.baselines_dir(study_dir), suffix=".json"))
    return sorted((json.loads(text) for text in texts if text is not None), key=lambda r: r.get("method", ""))


def read_trial_records(study_dir: str | Path) -> list[dict[str, Any]]:
    """Every trial record of a study (local or remote), in start order."""
    texts = storage.read_texts(storage.list_files(layout.trials_dir(study_dir), suffix=".json"))
    records = [json.loads(text) for text in texts if text is not None]
    return sorted(records, key=lambda r: r.get("started") or 0.0)


def set_aside_lost_records(study_dir: str | Path, known_trial_ids: set[str]) -> list[dict[str, Any]]:
    """Move the records of trials that Tune does not know to ``trials/lost/``; return them.

    A driver killed between Tune's saving its state and its next save leaves
    behind a trial that Tune, resuming from the saved state, never heard of: it
    suggests that configuration again under a new trial id. The forgotten
    trial's record (usually an error: its cluster went away under it) is not
    part of the study, so it leaves the report; it is kept for the curious.
    """
    lost = [r for r in read_trial_records(study_dir) if r["trial_id"] not in known_trial_ids]
    for record in lost:
        storage.write_text(layout.lost_trial_record(study_dir, record["trial_id"]), json.dumps(record, indent=2))
        storage.delete(layout.trial_record(study_dir, record["trial_id"]))
        logger.warning("trial %s (%s, %s) was lost with an interrupted driver and rerun under a new id; its record is now in %s",
                       record["trial_id"], record.get("params"), record.get("status"), layout.lost_trial_record(study_dir, record["trial_id"]))
    return lost
