"""The audit of a whole study directory: every trial record, its folds rebuilt from the manifest; ``report/audit.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from study.audit.checks import audit_trial
from study.audit.findings import AUDIT_FILE, StudyAudit
from study.config.loading import load_resolved_study
from study.io import layout, storage
from study.io.records import read_baseline_records, read_trial_records
from trainables.atomic import atomic_write_text
from trainables.data.folds import Fold, build_fold
from trainables.data.manifest import Utterance, read_manifest

logger = logging.getLogger(__name__)


def rebuild_splits(study_dir: str | Path, sessions: Iterable[int] | None = None) -> tuple[dict[int, Fold], list[Utterance]]:
    """The folds of a study rebuilt from its manifest and protocol (``study.yaml``), and the manifest's utterances.

    For checks by utterance id and by audio content. Raises what loading the study or the manifest raises.
    """
    study = load_resolved_study(study_dir)
    utterances = read_manifest(study.data.manifest)
    protocol = study.protocol()
    wanted = sorted(set(sessions)) if sessions is not None else study.fold_sessions(utterances)
    present = {u.session for u in utterances}
    return {s: build_fold(utterances, protocol.fold_spec(s)) for s in wanted if s in present}, utterances


def audit_study(study_dir: str | Path, records: Sequence[Mapping[str, Any]] | None = None, check_ids: bool = True) -> StudyAudit:
    """Audit every trial and baseline record of a study directory (local or a URI).

    With ``check_ids`` and a readable ``study.yaml`` and manifest, the folds are
    rebuilt from the manifest for checks by utterance id; otherwise a note says
    they were skipped.
    """
    location = layout.location(study_dir)
    records = list(records) if records is not None else read_trial_records(study_dir) + read_baseline_records(study_dir)
    audit = StudyAudit(str(location))
    splits: dict[int, Fold] | None = None
    utterances: list[Utterance] | None = None
    if check_ids:
        sessions = {int(f["test_session"]) for r in records for f in r.get("folds") or [] if "test_session" in f}
        if not storage.is_file(layout.study_file(study_dir)):
            audit.notes.append("no study.yaml: validation/test overlap checked by session and fingerprint, not by utterance id")
        else:
            try:
                splits, utterances = rebuild_splits(study_dir, sessions)
            except Exception as err:  # noqa: BLE001 - the id-level checks are extra; say why they were skipped
                logger.warning("audit of %s: folds not rebuilt from the manifest (%s)", study_dir, err)
                audit.notes.append(f"the manifest could not be read ({err}); validation/test overlap checked by session and fingerprint, not by utterance id")
    memo: dict[str, Any] = {}
    cache_root = layout.cache_dir(study_dir)
    for record in records:
        audit.trials.append(audit_trial(record, cache_root, splits, utterances, _memo=memo))
    return audit


def write_audit(study_dir: str | Path, audit: StudyAudit) -> str:
    """Write ``audit.to_dict()`` to ``<study_dir>/report/audit.json`` atomically; returns where."""
    target = storage.join(layout.report_dir(study_dir), AUDIT_FILE) if layout.is_remote(study_dir) else Path(layout.report_dir(study_dir)) / AUDIT_FILE
    text = json.dumps(audit.to_dict(), indent=2, ensure_ascii=False)
    if isinstance(target, Path):
        atomic_write_text(target, text)
    else:
        storage.write_text(target, text)  # one PUT on an object store: visible all at once or not at all
    return str(target)
