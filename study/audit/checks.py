"""The leakage audit: proof, fold by fold, that the test session entered no phase but the test.

Every phase artifact's ``record.json`` names the utterances it trained, fit,
embedded, selected or tested on (:class:`trainables.phases.artifacts.PhaseRecord`:
``used[role] = {"fingerprint", "count", "sessions"}``), and every fold of a trial
record names its test session, its split's fingerprints and the cache key of
each phase artifact (:class:`study.cache.chain.FoldResult`). The audit reads the five
records of each fold from the cache and checks them against the fold:

========== ============== ================================================ ==================
phase      role           what it saw                                      must be
========== ============== ================================================ ==================
tapt       trained_on     utterances with labels                           the fold's train
tapt       selected_on    validation (checkpoint selection), with labels   the fold's val
embeddings embedded       audio (the input of k-means and CPT)             the unsupervised set
clustering fit_on         audio (k-means fit)                              the unsupervised set
cpt        trained_on     audio, with k-means pseudo labels                the unsupervised set
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

import functools
import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from study.audit.findings import ENCODER, LEAK, OK, SHARED, SPLIT, UNVERIFIED, Finding, FoldAudit, TrialAudit
from study.io import layout, storage
from trainables.data.folds import Fold, FoldProtocol, Validation
from trainables.data.manifest import Utterance, fingerprint
from trainables.phases.artifacts import PRETRAINING_RECORD, RECORD_FILE, audio_digest
from trainables.phases.kinds import AUDIO, FIXED, PHASE_KINDS, TEST, VALIDATION

#: The links of a fold recorded before fold records named them: each step built on the one before.
LEGACY_LINKS = {"embeddings": ["tapt"], "clustering": ["embeddings"], "cpt": ["clustering"], "finetune": ["cpt"]}
#: Upstream fields naming an initial encoder (not a fold's artifact), whose own pretraining may be audited.
ENCODER_FIELDS = ("encoder", "init_encoder", "encoder_path")


# ----------------------------------------------------------------------------
# Reading records
# ----------------------------------------------------------------------------


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
    test_audio: Callable[[], set[str]] | None = None,
    _memo: dict[str, Any] | None = None,
) -> FoldAudit:
    """Audit one fold of a trial record (a :meth:`study.cache.chain.FoldResult.to_dict`).

    ``cache_root`` is the artifact cache the fold's keys refer to (a study's
    ``<study_dir>/cache``, local or a URI). ``split``, the fold rebuilt from the
    manifest (:func:`rebuild_splits`), adds checks by utterance id;
    ``test_audio()``, the content ids (:func:`audio_digest`) of the test
    session's audio, lets the initial encoder's own pretraining be checked by
    content (a separate pretraining corpus has sessions too).
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
            # train + val (validation from the test session only with test audio) + the test session's audio if allowed
            None if None in (train_n, val_n, test_n) else train_n + (val_n if audio_shared or not test_validation else 0) + (test_n if audio_shared else 0),  # type: ignore[operator]
        ),
        "fold": (summary.get("fold_fingerprint"), None if None in (train_n, val_n, test_n) else train_n + val_n + test_n),  # type: ignore[operator]
    }
    artifacts: Mapping[str, str] = fold_record.get("artifacts") or {}
    phases: Mapping[str, str] = fold_record.get("phases") or {step: step for step in artifacts}
    links: Mapping[str, list[str]] = fold_record.get("links") or (LEGACY_LINKS if "phases" not in fold_record else {})
    records: dict[str, dict[str, Any]] = {}
    locations: dict[str, str] = {}
    steps = list(dict.fromkeys([*artifacts, *links, *(up for ups in links.values() for up in ups)]))
    if not steps:
        add(Finding(UNVERIFIED, SPLIT, "the fold names no artifact at all"))
    for step in steps:
        phase = phases.get(step, step.split("@", 1)[0])
        key = artifacts.get(step)
        if not key:
            add(Finding(UNVERIFIED, phase, f"the fold names no {step} artifact"))
            continue
        if phase not in PHASE_KINDS:
            add(Finding(UNVERIFIED, phase, f"step {step} is of an unknown phase {phase!r}"))
            continue
        location = str(layout.artifact_location(cache_root, phase, key))
        locations[step] = location
        record = _read_artifact_record(location, _memo)
        if isinstance(record, str):
            add(Finding(UNVERIFIED, phase, f"cannot audit: {record}", artifact=location))
            continue
        if record.get("phase") != phase:
            add(Finding(UNVERIFIED, phase, f"the record is of phase {record.get('phase')!r}, not {phase!r}", artifact=location))
            continue
        records[step] = record
        _audit_phase(audit, phase, record, location, expected, test_validation, audio_shared)

    _audit_chain(audit, records, locations, artifacts, phases, links)
    _audit_split(audit, summary, records, locations, split, test_validation, audio_shared)
    _audit_encoder(audit, records, test_audio)
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
    for role, spec in PHASE_KINDS[phase].roles.items():
        doing, access, set_name = spec.doing, spec.access, spec.set
        what = used.get(role)
        if not isinstance(what, Mapping):
            audit.findings.append(Finding(UNVERIFIED, phase, f"the record does not say which utterances it {doing.split(' (')[0]} (no used.{role})", role, location))
            continue
        sessions, n, fp = _sessions(what), what.get("count"), what.get("fingerprint")
        described = f"{n} utterances (fingerprint {fp}) of sessions {sessions}"
        if access == FIXED:
            audit.findings.append(Finding(OK, phase, f"{doing} {described}: a fixed function, nothing learnt from them", role, location))
        elif access == TEST:
            if sessions != [test]:
                audit.findings.append(Finding(UNVERIFIED, phase, f"{doing} {described}: the test must be session {test} alone", role, location))
            else:
                audit.findings.append(Finding(OK, phase, f"{doing} {described}: session {test} alone", role, location))
        elif test in sessions:
            if access == AUDIO and audio_shared:
                audit.findings.append(Finding(SHARED, phase, f"{doing} {described}: test-session audio without labels (protocol unsupervised_audio: train+test)", role, location))
            elif access == VALIDATION and test_validation:
                audit.findings.append(Finding(SHARED, phase, f"{doing} {described}: a test-session speaker as validation (protocol validation: test_session_speaker)", role, location))
            else:
                audit.findings.append(Finding(LEAK, phase, f"{doing} {described}, which include test session {test}", role, location))
        else:
            audit.findings.append(Finding(OK, phase, f"{doing} {described}: test session {test} absent", role, location))
        want_fp, want_n = expected[set_name]
        problems = []
        if want_fp and fp != want_fp:
            problems.append(f"fingerprint {fp}, the fold's {set_name} set has {want_fp}")
        if want_n is not None and n != want_n:
            problems.append(f"count {n}, the fold's {set_name} set has {want_n}")
        if problems:
            audit.findings.append(Finding(UNVERIFIED, phase, f"what it {doing.split(' (')[0]} is not the fold's {set_name} set: " + "; ".join(problems), role, location))


def _audit_chain(
    audit: FoldAudit,
    records: Mapping[str, Mapping[str, Any]],
    locations: Mapping[str, str],
    artifacts: Mapping[str, str],
    phases: Mapping[str, str],
    links: Mapping[str, list[str]],
) -> None:
    """Each artifact was built from the fold's artifacts it builds on (its ``upstream`` names their keys)."""
    for step, sources in links.items():
        if step not in records:
            continue
        upstream = [v for v in (records[step].get("upstream") or {}).values() if isinstance(v, str)]
        for source in sources:
            key = artifacts.get(source)
            if key and not any(_mentions(reference, key) for reference in upstream):
                phase = phases.get(step, step.split("@", 1)[0])
                audit.findings.append(Finding(UNVERIFIED, phase, f"{step} was built from {upstream}, not from the fold's {source} artifact {key}", artifact=locations[step]))


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
    scored = next((step for step, record in records.items() if "tested_on" in (record.get("used") or {})), None)
    ft_used = (records.get(scored) or {}).get("used") or {} if scored else {}
    scored_label = PHASE_KINDS[records[scored]["phase"]].label if scored else "the scored phase"
    if val_fp is not None and val_fp == test_fp:
        add(Finding(LEAK, SPLIT, f"validation is the test set (both fingerprint {test_fp}): early stopping and model selection used the test", "selected_on", locations.get(scored or "", "")))
    for role in ("selected_on", "trained_on"):
        what, tested = ft_used.get(role), ft_used.get("tested_on")
        if isinstance(what, Mapping) and isinstance(tested, Mapping) and what.get("fingerprint") == tested.get("fingerprint"):
            add(Finding(LEAK, SPLIT, f"{scored_label} {'selected' if role == 'selected_on' else 'trained'} on the very set it was tested on (fingerprint {tested.get('fingerprint')})", role, locations.get(scored or "", "")))
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
    protocol = FoldProtocol(validation=Validation(audit.validation), unsupervised_audio=audit.unsupervised_audio)
    unsupervised_fp = fingerprint(protocol.unsupervised_ids(split))
    recorded = summary.get("unsupervised_fingerprint")
    if recorded is not None and recorded != unsupervised_fp:
        add(Finding(UNVERIFIED, SPLIT, f"the unsupervised set's fingerprint {recorded} is not what the protocol allows of the manifest ({unsupervised_fp})"))


def _audit_encoder(audit: FoldAudit, records: Mapping[str, Mapping[str, Any]], test_audio: Callable[[], set[str]] | None) -> None:
    """The initial encoder's own pretraining, when it left a record (``ser-study tiny-encoder --pretrain-on``).

    By content when the record lists its audio and the test session's audio is
    at hand: a corpus of its own (other speakers and files) shares nothing with
    the test session, whatever its session numbers. Otherwise by session number.
    """
    encoders = []
    for record in records.values():
        upstream = record.get("upstream") or {}
        for reference in (upstream.get(name) for name in ENCODER_FIELDS):
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
        heard = used.get("audio")
        if isinstance(heard, list) and test_audio is not None:
            common = set(heard) & test_audio()
            if common:
                audit.findings.append(Finding(SHARED, ENCODER, f"the initial encoder was self-supervised on {described}, {len(common)} of them the test session's audio (no labels), before the fold's chain", "trained_on", reference))
            else:
                audit.findings.append(Finding(OK, ENCODER, f"the initial encoder was self-supervised on {described}: none of them the test session's audio (compared by content)", "trained_on", reference))
            continue
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
    utterances: Sequence[Utterance] | None = None,
    *,
    _memo: dict[str, Any] | None = None,
) -> TrialAudit:
    """Audit every fold of a trial (or baseline) record.

    ``splits`` (test session -> fold rebuilt from the manifest) adds checks by
    utterance id; with the manifest's ``utterances`` too, an initial encoder's
    pretraining is checked against the test session's audio by content.
    """
    memo = {} if _memo is None else _memo
    protocol = dict(record.get("protocol") or {})
    audit = TrialAudit(str(record.get("trial_id", "?")), protocol)
    paths = {u.utt_id: u.path for u in utterances or ()}
    for fold in record.get("folds") or []:
        split = (splits or {}).get(fold.get("test_session"))
        test_audio = None
        if split is not None and paths:
            test_audio = functools.partial(_test_audio, memo, tuple(paths[i] for i in split.test.utt_ids if i in paths))
        audit.folds.append(audit_fold(fold, cache_root, split, test_audio=test_audio, _memo=memo))
    return audit


def _test_audio(memo: dict[str, Any], files: tuple[str, ...]) -> set[str]:
    """The content ids of ``files`` (memoised: every fold of every trial asks for the same test sessions)."""
    key = ("audio", files)
    if key not in memo:
        memo[key] = {audio_digest(path) for path in files}
    return memo[key]
