"""The leakage audit: proof, fold by fold, that the test session entered no phase but the test.

Every phase artifact's ``record.json`` names the utterances it trained, fit,
embedded, selected or tested on (:class:`trainables.phases.artifacts.PhaseRecord`:
``used[role] = {"fingerprint", "count", "sessions"}``), and every fold of a trial
record names its test session, its split's fingerprints and the cache key of
each phase artifact (:class:`study.chain.FoldResult`). The audit reads the five
records of each fold from the cache and checks them against the fold:

========== ============== ================================================ ==================
phase      role           what it saw                                      must be
========== ============== ================================================ ==================
tapt       trained_on     utterances with labels                           the fold's train
tapt       selected_on    validation (checkpoint selection), with labels   the fold's val
embeddings embedded       audio (the input of k-means and CPT)             train+val(+test)
clustering fit_on         audio (k-means fit)                              train+val(+test)
cpt        trained_on     audio, with k-means pseudo labels                train+val(+test)
finetune   trained_on     utterances with labels                           the fold's train
finetune   selected_on    validation (early stopping, model selection)     the fold's val
finetune   tested_on      the test                                         the fold's test
========== ============== ================================================ ==================

For each (phase, role) the test session must be absent from the recorded
``sessions`` (``tested_on``: the sessions must be exactly the test session),
and fingerprint and count must equal those of the fold's set. Each artifact's
``upstream`` must point at the fold's previous artifact, so the five records
are one chain. The validation set must not be the test set; when the manifest
is at hand (``splits``: the folds rebuilt from it, see :func:`rebuild_splits`)
the audit also checks by utterance id that validation and training share no
utterance with the test. When the initial encoder is a local directory
holding a ``pretraining_record.json`` (``ser-study tiny-encoder --pretrain-on``),
its pretraining utterances are audited too.

Findings have a *kind*:

* ``leak``: test-session utterances where the fold's protocol allows none
  (named: the phase, what it did with them, the artifact's path);
* ``shared``: test-session data that the fold's *looser* protocol allows:
  test-session audio without labels in embeddings, k-means and CPT
  (``protocol.unsupervised_audio: train+test``), a test-session speaker as
  validation in TAPT and fine-tuning (``validation: test_session_speaker``), or
  test-session audio in the initial encoder's own pretraining;
* ``unverified``: the audit cannot vouch for the fold (a record is missing, or
  does not describe the fold's split or chain);
* ``ok``: a check that passed.

A fold is *clean* when it has no ``leak`` and no ``unverified`` finding, and
*strict* when it is clean and shares nothing either. ``ser-study audit DIR``
prints :meth:`StudyAudit.format`, writes ``DIR/report/audit.json`` and exits 1
unless the study is clean. :func:`log_audit` puts a trial's audit on its MLflow
run (tags ``audit``, ``audit_shared``; artifact ``audit.json``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from study import paths, storage
from study.mlflow_store import get_client, uri_of_run, with_retries
from trainables.atomic import atomic_write_text
from trainables.data.folds import Fold, Validation, build_fold
from trainables.data.manifest import fingerprint
from trainables.phases.artifacts import RECORD_FILE

logger = logging.getLogger(__name__)

LEAK, SHARED, UNVERIFIED, OK = "leak", "shared", "unverified", "ok"
KINDS = (LEAK, SHARED, UNVERIFIED, OK)

PHASES = ("tapt", "embeddings", "clustering", "cpt", "finetune")
#: Phases of a finding besides the five: the split itself and the initial encoder's pretraining.
SPLIT, ENCODER = "split", "encoder"
PHASE_LABELS = {
    "tapt": "TAPT",
    "embeddings": "embeddings",
    "clustering": "k-means",
    "cpt": "CPT",
    "finetune": "fine-tuning",
    SPLIT: "validation/test",
    ENCODER: "encoder pretraining",
}
AUDIT_FILE = "audit.json"
_MAX_TAG_CHARS = 5000  # MLflow allows 8000
PRETRAINING_RECORD = "pretraining_record.json"

#: What each phase did with the utterances of each role of its record.
ROLES: dict[str, dict[str, str]] = {
    "tapt": {"trained_on": "trained on (with labels)", "selected_on": "selected its checkpoint on (validation, with labels)"},
    "embeddings": {"embedded": "embedded (audio, the input of k-means and CPT)"},
    "clustering": {"fit_on": "fit k-means on (audio)"},
    "cpt": {"trained_on": "pretrained on (audio with k-means pseudo labels)"},
    "finetune": {
        "trained_on": "trained on (with labels)",
        "selected_on": "early-stopped and selected on (validation, with labels)",
        "tested_on": "tested on",
    },
}
#: Which of the fold's sets each (phase, role) must be.
EXPECTED_SET = {
    ("tapt", "trained_on"): "train",
    ("tapt", "selected_on"): "val",
    ("embeddings", "embedded"): "unsupervised",
    ("clustering", "fit_on"): "unsupervised",
    ("cpt", "trained_on"): "unsupervised",
    ("finetune", "trained_on"): "train",
    ("finetune", "selected_on"): "val",
    ("finetune", "tested_on"): "test",
}
#: How each (phase, role) may see the test session: never ("labels"), as validation, as unlabelled audio, or as the test.
ACCESS = {
    ("tapt", "trained_on"): "labels",
    ("tapt", "selected_on"): "validation",
    ("embeddings", "embedded"): "audio",
    ("clustering", "fit_on"): "audio",
    ("cpt", "trained_on"): "audio",
    ("finetune", "trained_on"): "labels",
    ("finetune", "selected_on"): "validation",
    ("finetune", "tested_on"): "test",
}
#: For each phase: the upstream field that must name the fold's artifact of another phase.
UPSTREAM_LINKS = {"embeddings": ("encoder", "tapt"), "clustering": ("embeddings", "embeddings"), "finetune": ("encoder", "cpt")}


@dataclass(frozen=True)
class Finding:
    """One check of one fold: ``kind`` (leak | shared | unverified | ok), where, and what was found."""

    kind: str
    phase: str  # one of PHASES, "split" or "encoder"
    message: str
    role: str = ""  # the record's role ("trained_on" ...), "" for checks not about one utterance set
    artifact: str = ""  # the artifact directory the finding is about

    def line(self) -> str:
        where = f" [{self.artifact}]" if self.artifact and self.kind != OK else ""
        return f"{self.kind.upper():<10} {PHASE_LABELS.get(self.phase, self.phase)}: {self.message}{where}"


def _status(findings: Sequence[Finding]) -> str:
    kinds = {f.kind for f in findings}
    if LEAK in kinds:
        return "LEAK"
    if UNVERIFIED in kinds:
        return "?"
    if SHARED in kinds:
        return "shared"
    return "✓" if kinds else "-"


def _shared_statements(findings: Iterable[Finding]) -> list[str]:
    """What a looser protocol shared, in words: which test-session data, which phases."""
    audio, validation, encoder = [], [], False
    for f in findings:
        if f.kind != SHARED:
            continue
        label = PHASE_LABELS[f.phase]
        if f.phase == ENCODER:
            encoder = True
        elif f.role == "selected_on":
            if label not in validation:
                validation.append(label)
        elif label not in audio:
            audio.append(label)
    statements = []
    if audio:
        order = [PHASE_LABELS[p] for p in PHASES]
        statements.append("test-session audio without labels in " + ", ".join(sorted(audio, key=order.index)))
    if validation:
        statements.append("a test-session speaker's labelled utterances as validation (early stopping, model selection) in " + ", ".join(validation))
    if encoder:
        statements.append("test-session audio without labels in the initial encoder's pretraining")
    return statements


@dataclass
class FoldAudit:
    """The audit of one fold: its protocol and every finding."""

    test_session: int
    validation: str
    unsupervised_audio: str
    findings: list[Finding] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def leaks(self) -> list[Finding]:
        return self.of_kind(LEAK)

    @property
    def shared(self) -> list[Finding]:
        return self.of_kind(SHARED)

    @property
    def unverified(self) -> list[Finding]:
        return self.of_kind(UNVERIFIED)

    @property
    def clean(self) -> bool:
        """No leak, and every record there and consistent with the fold."""
        return not self.leaks and not self.unverified

    @property
    def strict(self) -> bool:
        """Clean, and no test-session data shared under a looser protocol either."""
        return self.clean and not self.shared

    def status(self, phase: str) -> str:
        """``✓``, ``LEAK``, ``shared``, ``?`` (unverified) or ``-`` (not audited) for one phase."""
        return _status([f for f in self.findings if f.phase == phase])

    def shared_statements(self) -> list[str]:
        return _shared_statements(self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "test_session": self.test_session,
            "validation": self.validation,
            "unsupervised_audio": self.unsupervised_audio,
            "clean": self.clean,
            "strict": self.strict,
            "shared": self.shared_statements(),
            "status": {phase: self.status(phase) for phase in (*PHASES, SPLIT, ENCODER)},
            "findings": [asdict(f) for f in self.findings],
        }


@dataclass
class TrialAudit:
    """The audit of every finished fold of one trial."""

    trial_id: str
    protocol: dict[str, Any]
    folds: list[FoldAudit] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return all(f.clean for f in self.folds)

    @property
    def strict(self) -> bool:
        return all(f.strict for f in self.folds)

    @property
    def leaks(self) -> list[Finding]:
        return [f for fold in self.folds for f in fold.leaks]

    def shared_statements(self) -> list[str]:
        return _shared_statements(f for fold in self.folds for f in fold.findings)

    def verdict(self) -> str:
        """One word: ``leak``, ``unverified``, ``shared`` or ``clean``."""
        if any(fold.leaks for fold in self.folds):
            return LEAK
        if not self.clean:
            return UNVERIFIED
        return "clean" if self.strict else SHARED

    def summary(self) -> dict[str, Any]:
        """The few fields a trial record, a report row or an MLflow run carries: verdict, flags, what was shared."""
        return {"verdict": self.verdict(), "clean": self.clean, "strict": self.strict, "shared": self.shared_statements(), "leaks": len(self.leaks)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            "protocol": self.protocol,
            "verdict": self.verdict(),
            "clean": self.clean,
            "strict": self.strict,
            "shared": self.shared_statements(),
            "folds": [f.to_dict() for f in self.folds],
        }

    def format(self) -> str:
        lines = [f"trial {self.trial_id}: {self.verdict().upper()}   protocol: {self.protocol.get('description') or ('strict' if self.protocol.get('strict', True) else 'NOT strict')}"]
        if not self.folds:
            lines.append("  no finished folds")
            return "\n".join(lines)
        columns = list(PHASES) + [SPLIT] + ([ENCODER] if any(fold.status(ENCODER) != "-" for fold in self.folds) else [])
        header = ["fold"] + [PHASE_LABELS[c] for c in columns]
        rows = [[str(fold.test_session)] + [fold.status(c) for c in columns] for fold in self.folds]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        for statement in self.shared_statements():
            lines.append(f"  shared: {statement}")
        for fold in self.folds:
            for finding in fold.findings:
                if finding.kind in (LEAK, UNVERIFIED):
                    lines.append(f"  fold {fold.test_session}  {finding.line()}")
        return "\n".join(lines)


@dataclass
class StudyAudit:
    """The audit of every trial record of a study."""

    study_dir: str
    trials: list[TrialAudit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """No fold of any trial leaked, and every fold could be audited."""
        return all(t.clean for t in self.trials)

    @property
    def strict(self) -> bool:
        """Clean, and nothing of any test session shared under a looser protocol."""
        return all(t.strict for t in self.trials)

    @property
    def leaks(self) -> list[Finding]:
        return [f for t in self.trials for f in t.leaks]

    def headline(self) -> str:
        folds = sum(len(t.folds) for t in self.trials)
        scope = f"{len(self.trials)} trial(s), {folds} fold(s)"
        if self.leaks:
            leaky = {(t.trial_id, fold.test_session) for t in self.trials for fold in t.folds if fold.leaks}
            return f"LEAK: test-session data where the protocol allows none, in {len(leaky)} fold(s) ({scope})"
        if not self.clean:
            return f"UNVERIFIED: some folds could not be audited ({scope})"
        if not self.strict:
            shared = _shared_statements(f for t in self.trials for fold in t.folds for f in fold.findings)
            return f"CLEAN, NOT strict: no leak, but shared under the protocol: {'; '.join(shared)} ({scope})"
        return f"CLEAN, strict: no test-session utterance entered TAPT, k-means, CPT or fine-tuning; validation never overlapped test ({scope})"

    def format(self) -> str:
        lines = [f"Leakage audit of {self.study_dir}", self.headline()]
        lines.extend(f"note: {note}" for note in self.notes)
        for trial in self.trials:
            lines.append("")
            lines.append(trial.format())
        if not self.trials:
            lines.append("no trial records")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_dir": self.study_dir,
            "headline": self.headline(),
            "clean": self.clean,
            "strict": self.strict,
            "shared": _shared_statements(f for t in self.trials for fold in t.folds for f in fold.findings),
            "notes": list(self.notes),
            "trials": [t.to_dict() for t in self.trials],
        }


# ----------------------------------------------------------------------------
# Reading records
# ----------------------------------------------------------------------------


def artifact_location(cache_root: str | Path, phase: str, key: str) -> str:
    """Where the cache keeps an artifact: ``cache_root/<phase>/<key>`` (a URI for a remote cache)."""
    if storage.is_uri(cache_root):
        return storage.join(cache_root, phase, key)
    return str(Path(cache_root) / phase / key)


def _read_artifact_record(location: str, memo: dict[str, Any] | None) -> dict[str, Any] | str:
    """The record at ``location`` or, if it cannot be read, why."""
    if memo is not None and location in memo:
        return memo[location]
    record_path = storage.join(location, RECORD_FILE) if storage.is_uri(location) else str(Path(location) / RECORD_FILE)
    try:
        text = storage.read_text(record_path) if storage.is_uri(record_path) else Path(record_path).read_text()
        result: dict[str, Any] | str = json.loads(text)
        if not isinstance(result, dict):
            result = f"{record_path} is not a JSON object"
    except FileNotFoundError:
        result = f"{record_path} is missing (artifact deleted from the cache?)"
    except (OSError, ValueError) as err:
        result = f"{record_path} cannot be read ({err})"
    if memo is not None:
        memo[location] = result
    return result


def _mentions(reference: Any, key: str) -> bool:
    """True if the path or URI ``reference`` has ``key`` as one of its components."""
    return isinstance(reference, str) and key in re.split(r"[/\\]", reference)


def _sessions(used: Mapping[str, Any]) -> list[int]:
    return sorted(int(s) for s in used.get("sessions") or [])


# ----------------------------------------------------------------------------
# The audit of one fold
# ----------------------------------------------------------------------------


def audit_fold(
    fold_record: Mapping[str, Any],
    cache_root: str | Path,
    split: Fold | None = None,
    *,
    _memo: dict[str, Any] | None = None,
) -> FoldAudit:
    """Audit one fold of a trial record (a :meth:`study.chain.FoldResult.to_dict`).

    ``cache_root`` is the artifact cache the fold's keys refer to (a study's
    ``<study_dir>/cache``, local or a URI). ``split``, the fold rebuilt from the
    manifest (:func:`rebuild_splits`), adds checks by utterance id.
    """
    summary: Mapping[str, Any] = fold_record.get("fold") or {}
    test_session = int(fold_record.get("test_session", summary.get("test_session", -1)))
    validation = str(summary.get("validation", Validation.STRATIFIED.value))
    unsupervised_audio = str(summary.get("unsupervised_audio", "train"))
    audit = FoldAudit(test_session, validation, unsupervised_audio)
    add = audit.findings.append
    test_validation = validation == Validation.TEST_SESSION_SPEAKER.value
    audio_shared = unsupervised_audio == "train+test"

    def count(name: str) -> int | None:
        value = summary.get(name)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    train_n, val_n, test_n = count("train"), count("val"), count("test")
    expected: dict[str, tuple[str | None, int | None]] = {
        "train": (summary.get("train_fingerprint"), train_n),
        "val": (summary.get("val_fingerprint"), val_n),
        "test": (summary.get("test_fingerprint"), test_n),
        "unsupervised": (
            summary.get("unsupervised_fingerprint"),
            None if None in (train_n, val_n, test_n) else train_n + val_n + (test_n if audio_shared else 0),  # type: ignore[operator]
        ),
    }
    artifacts: Mapping[str, str] = fold_record.get("artifacts") or {}
    records: dict[str, dict[str, Any]] = {}
    locations: dict[str, str] = {}
    for phase in PHASES:
        key = artifacts.get(phase)
        if not key:
            add(Finding(UNVERIFIED, phase, f"the fold names no {phase} artifact"))
            continue
        location = artifact_location(cache_root, phase, key)
        locations[phase] = location
        record = _read_artifact_record(location, _memo)
        if isinstance(record, str):
            add(Finding(UNVERIFIED, phase, f"cannot audit: {record}", artifact=location))
            continue
        if record.get("phase") != phase:
            add(Finding(UNVERIFIED, phase, f"the record is of phase {record.get('phase')!r}, not {phase!r}", artifact=location))
            continue
        records[phase] = record
        _audit_phase(audit, phase, record, location, expected, test_validation, audio_shared)

    _audit_chain(audit, records, locations, artifacts)
    _audit_split(audit, summary, records, locations, split, test_validation, audio_shared)
    _audit_encoder(audit, records, locations)
    return audit


def _audit_phase(
    audit: FoldAudit,
    phase: str,
    record: Mapping[str, Any],
    location: str,
    expected: Mapping[str, tuple[str | None, int | None]],
    test_validation: bool,
    audio_shared: bool,
) -> None:
    test = audit.test_session
    used: Mapping[str, Any] = record.get("used") or {}
    for role, doing in ROLES[phase].items():
        what = used.get(role)
        if not isinstance(what, Mapping):
            audit.findings.append(Finding(UNVERIFIED, phase, f"the record does not say which utterances it {doing.split(' (')[0]} (no used.{role})", role, location))
            continue
        sessions, n, fp = _sessions(what), what.get("count"), what.get("fingerprint")
        described = f"{n} utterances (fingerprint {fp}) of sessions {sessions}"
        access = ACCESS[(phase, role)]
        if access == "test":
            if sessions != [test]:
                audit.findings.append(Finding(UNVERIFIED, phase, f"{doing} {described}: the test must be session {test} alone", role, location))
            else:
                audit.findings.append(Finding(OK, phase, f"{doing} {described}: session {test} alone", role, location))
        elif test in sessions:
            if access == "audio" and audio_shared:
                audit.findings.append(Finding(SHARED, phase, f"{doing} {described}: test-session audio without labels (protocol unsupervised_audio: train+test)", role, location))
            elif access == "validation" and test_validation:
                audit.findings.append(Finding(SHARED, phase, f"{doing} {described}: a test-session speaker as validation (protocol validation: test_session_speaker)", role, location))
            else:
                audit.findings.append(Finding(LEAK, phase, f"{doing} {described}, which include test session {test}", role, location))
        else:
            audit.findings.append(Finding(OK, phase, f"{doing} {described}: test session {test} absent", role, location))
        set_name = EXPECTED_SET[(phase, role)]
        want_fp, want_n = expected[set_name]
        problems = []
        if want_fp and fp != want_fp:
            problems.append(f"fingerprint {fp}, the fold's {set_name} set has {want_fp}")
        if want_n is not None and n != want_n:
            problems.append(f"count {n}, the fold's {set_name} set has {want_n}")
        if problems:
            audit.findings.append(Finding(UNVERIFIED, phase, f"what it {doing.split(' (')[0]} is not the fold's {set_name} set: " + "; ".join(problems), role, location))


def _audit_chain(audit: FoldAudit, records: Mapping[str, Mapping[str, Any]], locations: Mapping[str, str], artifacts: Mapping[str, str]) -> None:
    """Each artifact was built from the fold's previous one (its ``upstream`` names that key)."""
    for phase, (field_name, source) in UPSTREAM_LINKS.items():
        if phase not in records or not artifacts.get(source):
            continue
        reference = (records[phase].get("upstream") or {}).get(field_name)
        if not _mentions(reference, artifacts[source]):
            audit.findings.append(Finding(UNVERIFIED, phase, f"built from {reference!r}, not from the fold's {source} artifact {artifacts[source]}", artifact=locations[phase]))
    if "cpt" in records and artifacts.get("clustering"):
        upstream = records["cpt"].get("upstream") or {}
        clusterings = [v for k, v in upstream.items() if k.startswith("clustering_")]
        if not any(_mentions(v, artifacts["clustering"]) for v in clusterings):
            audit.findings.append(Finding(UNVERIFIED, "cpt", f"its pseudo labels come from {clusterings}, not from the fold's clustering artifact {artifacts['clustering']}", artifact=locations["cpt"]))


def _audit_split(
    audit: FoldAudit,
    summary: Mapping[str, Any],
    records: Mapping[str, Mapping[str, Any]],
    locations: Mapping[str, str],
    split: Fold | None,
    test_validation: bool,
    audio_shared: bool,
) -> None:
    """Validation never overlapped test; with the rebuilt split, by utterance id."""
    add = audit.findings.append
    test = audit.test_session
    val_fp, test_fp = summary.get("val_fingerprint"), summary.get("test_fingerprint")
    ft_used = (records.get("finetune") or {}).get("used") or {}
    if val_fp is not None and val_fp == test_fp:
        add(Finding(LEAK, SPLIT, f"validation is the test set (both fingerprint {test_fp}): early stopping and model selection used the test", "selected_on", locations.get("finetune", "")))
    for role in ("selected_on", "trained_on"):
        what, tested = ft_used.get(role), ft_used.get("tested_on")
        if isinstance(what, Mapping) and isinstance(tested, Mapping) and what.get("fingerprint") == tested.get("fingerprint"):
            add(Finding(LEAK, SPLIT, f"fine-tuning {'selected' if role == 'selected_on' else 'trained'} on the very set it was tested on (fingerprint {tested.get('fingerprint')})", role, locations.get("finetune", "")))
    if split is None:
        selected, tested = ft_used.get("selected_on"), ft_used.get("tested_on")
        if not isinstance(selected, Mapping) or not isinstance(tested, Mapping):
            return  # no usable fine-tuning record: already unverified
        if test not in _sessions(selected) and _sessions(tested) == [test]:
            add(Finding(OK, SPLIT, f"validation comes from sessions {_sessions(selected)}, the test from session {test} alone: they cannot overlap"))
        elif test_validation and val_fp != test_fp:
            add(Finding(OK, SPLIT, f"validation and test are both from session {test} (a speaker each) and differ by fingerprint ({val_fp} vs {test_fp}); no manifest given, so not checked by utterance id"))
        return
    rebuilt = {"train": split.train, "val": split.val, "test": split.test}
    stale = [name for name, part in rebuilt.items() if summary.get(f"{name}_fingerprint") not in (None, part.fingerprint)]
    if split.spec.test_session != test or stale:
        add(Finding(UNVERIFIED, SPLIT, f"the study's manifest and protocol no longer give this fold's split ({', '.join(stale) or 'test session'} differ); checks by utterance id skipped"))
        return
    train_ids, val_ids, test_ids = (set(part.utt_ids) for part in (split.train, split.val, split.test))
    for name, ids in (("validation", val_ids), ("training", train_ids)):
        overlap = sorted(ids & test_ids)
        if overlap:
            add(Finding(LEAK, SPLIT, f"{len(overlap)} test utterances are also in {name}: {', '.join(overlap[:5])}{' ...' if len(overlap) > 5 else ''}"))
        else:
            add(Finding(OK, SPLIT, f"{name} ({len(ids)} utterances) and test ({len(test_ids)}) share no utterance id"))
    unsupervised_fp = fingerprint(train_ids | val_ids | (test_ids if audio_shared else set()))
    recorded = summary.get("unsupervised_fingerprint")
    if recorded is not None and recorded != unsupervised_fp:
        add(Finding(UNVERIFIED, SPLIT, f"the unsupervised set's fingerprint {recorded} is not train+val{'+test' if audio_shared else ''} of the manifest ({unsupervised_fp})"))


def _audit_encoder(audit: FoldAudit, records: Mapping[str, Mapping[str, Any]], locations: Mapping[str, str]) -> None:
    """The initial encoder's own pretraining, when it left a record (``ser-study tiny-encoder --pretrain-on``)."""
    encoders = []
    tapt_upstream = (records.get("tapt") or {}).get("upstream") or {}
    cpt_upstream = (records.get("cpt") or {}).get("upstream") or {}
    for reference in (tapt_upstream.get("encoder"), cpt_upstream.get("init_encoder")):
        if isinstance(reference, str) and reference not in encoders and not storage.is_uri(reference):
            encoders.append(reference)
    for reference in encoders:
        path = Path(reference) / PRETRAINING_RECORD
        if not path.is_file():
            continue  # a checkpoint pretrained elsewhere (e.g. HuBERT on LibriSpeech), or a fold's own TAPT encoder
        try:
            used = (json.loads(path.read_text()).get("used") or {}).get("trained_on") or {}
        except (OSError, ValueError) as err:
            audit.findings.append(Finding(UNVERIFIED, ENCODER, f"{path} cannot be read ({err})", artifact=reference))
            continue
        sessions = _sessions(used)
        described = f"{used.get('count')} utterances (fingerprint {used.get('fingerprint')}) of sessions {sessions}"
        if audit.test_session in sessions:
            audit.findings.append(Finding(SHARED, ENCODER, f"the initial encoder was self-supervised on {described}: test-session audio without labels, before the fold's chain", "trained_on", reference))
        else:
            audit.findings.append(Finding(OK, ENCODER, f"the initial encoder was self-supervised on {described}: test session {audit.test_session} absent", "trained_on", reference))


# ----------------------------------------------------------------------------
# Trials and studies
# ----------------------------------------------------------------------------


def audit_trial(
    record: Mapping[str, Any],
    cache_root: str | Path,
    splits: Mapping[int, Fold] | None = None,
    *,
    _memo: dict[str, Any] | None = None,
) -> TrialAudit:
    """Audit every fold of a trial record (``<study_dir>/trials/<id>.json``).

    ``splits`` (test session -> fold rebuilt from the manifest) adds checks by utterance id.
    """
    memo = {} if _memo is None else _memo
    protocol = dict(record.get("protocol") or {})
    audit = TrialAudit(str(record.get("trial_id", "?")), protocol)
    for fold in record.get("folds") or []:
        session = fold.get("test_session")
        audit.folds.append(audit_fold(fold, cache_root, (splits or {}).get(session), _memo=memo))
    return audit


def rebuild_splits(study_dir: str | Path, sessions: Iterable[int] | None = None) -> dict[int, Fold]:
    """The folds of a study rebuilt from its manifest and protocol (``study.yaml``), for checks by utterance id.

    Raises what loading the study or the manifest raises.
    """
    from study.config import load_resolved_study
    from trainables.data.manifest import read_manifest

    study = load_resolved_study(study_dir)
    utterances = read_manifest(study.data.manifest)
    protocol = study.protocol()
    wanted = sorted(set(sessions)) if sessions is not None else study.fold_sessions(utterances)
    present = {u.session for u in utterances}
    return {s: build_fold(utterances, protocol.fold_spec(s)) for s in wanted if s in present}


def audit_study(study_dir: str | Path, records: Sequence[Mapping[str, Any]] | None = None, check_ids: bool = True) -> StudyAudit:
    """Audit every trial record of a study directory (local or a URI).

    With ``check_ids`` and a readable ``study.yaml`` and manifest, the folds are
    rebuilt from the manifest for checks by utterance id; otherwise a note says
    they were skipped.
    """
    from study.trial import read_trial_records

    location = paths.location(study_dir)
    records = list(records) if records is not None else read_trial_records(study_dir)
    audit = StudyAudit(str(location))
    splits: dict[int, Fold] | None = None
    if check_ids:
        sessions = {int(f["test_session"]) for r in records for f in r.get("folds") or [] if "test_session" in f}
        if not storage.is_file(paths.study_file(study_dir)):
            audit.notes.append("no study.yaml: validation/test overlap checked by session and fingerprint, not by utterance id")
        else:
            try:
                splits = rebuild_splits(study_dir, sessions)
            except Exception as err:  # noqa: BLE001 - the id-level checks are extra; say why they were skipped
                logger.warning("audit of %s: folds not rebuilt from the manifest (%s)", study_dir, err)
                audit.notes.append(f"the manifest could not be read ({err}); validation/test overlap checked by session and fingerprint, not by utterance id")
    memo: dict[str, Any] = {}
    cache_root = paths.cache_dir(study_dir)
    for record in records:
        audit.trials.append(audit_trial(record, cache_root, splits, _memo=memo))
    return audit


def write_audit(study_dir: str | Path, audit: StudyAudit) -> str:
    """Write ``audit.to_dict()`` to ``<study_dir>/report/audit.json`` atomically; returns where."""
    target = storage.join(paths.report_dir(study_dir), AUDIT_FILE) if paths.is_remote(study_dir) else Path(paths.report_dir(study_dir)) / AUDIT_FILE
    text = json.dumps(audit.to_dict(), indent=2, ensure_ascii=False)
    if isinstance(target, Path):
        atomic_write_text(target, text)
    else:
        storage.write_text(target, text)  # one PUT on an object store: visible all at once or not at all
    return str(target)


def log_audit(run_id: str, audit: TrialAudit, *, uri: str | None = None) -> None:
    """Put a trial's audit on its MLflow run: tags ``audit`` (clean | shared | leak | unverified),
    ``audit_shared`` (what a looser protocol shared), ``audit_leaks`` (the leaks, if any),
    metric ``audit_leak_count`` and artifact ``audit.json``."""
    client = get_client(uri_of_run(run_id, uri))  # the URI the trial's run was started with
    tags = {"audit": audit.verdict(), "audit_strict": str(audit.strict).lower()}
    shared = audit.shared_statements()
    if shared:
        tags["audit_shared"] = "; ".join(shared)
    if audit.leaks:
        tags["audit_leaks"] = "; ".join(f"fold {fold.test_session} {PHASE_LABELS[f.phase]}: {f.message}" for fold in audit.folds for f in fold.leaks)
    for name, value in tags.items():
        with_retries(client.set_tag, run_id, name, value[:_MAX_TAG_CHARS])
    with_retries(client.log_metric, run_id, "audit_leak_count", float(len(audit.leaks)))
    with_retries(client.log_text, run_id, json.dumps(audit.to_dict(), indent=2, ensure_ascii=False), AUDIT_FILE)
