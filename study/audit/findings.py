"""What the leakage audit finds: findings per check, and their summary per fold, trial and study.

See :mod:`study.audit.checks` for what is checked and :mod:`study.audit.study` for a whole study.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from trainables.phases.kinds import PHASE_KINDS, PHASES

LEAK, SHARED, UNVERIFIED, OK = "leak", "shared", "unverified", "ok"
KINDS = (LEAK, SHARED, UNVERIFIED, OK)

#: Phases of a finding besides the phase kinds: the split itself and the initial encoder's pretraining.
SPLIT, ENCODER = "split", "encoder"
PHASE_LABELS = {**{phase: kind.label for phase, kind in PHASE_KINDS.items()}, SPLIT: "validation/test", ENCODER: "encoder pretraining"}
AUDIT_FILE = "audit.json"

@dataclass(frozen=True)
class Finding:
    """One check of one fold: ``kind`` (leak | shared | unverified | ok), where, and what was found."""

    kind: str
    phase: str  # a phase kind (trainables.phases.kinds), "split" or "encoder"
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
            "status": {phase: self.status(phase) for phase in (*PHASES, SPLIT, ENCODER) if self.status(phase) != "-" or phase in (SPLIT, ENCODER)},
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
        seen = {finding.phase for fold in self.folds for finding in fold.findings}
        columns = [p for p in PHASES if p in seen] + [SPLIT] + ([ENCODER] if ENCODER in seen else [])
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
