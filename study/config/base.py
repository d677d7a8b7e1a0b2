"""What every section of the study file shares: unknown keys are errors, and problems name their field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from study.errors import UserError
from trainables.config import FieldError


class StudyConfigError(UserError):
    """A study file (or ``--set`` override) that cannot be used; the message says where and how to fix it."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        super().__init__(message)
        self.source = source
        self.field = field


class Invalid(FieldError):
    """A problem found by a model validator at ``field`` (dotted, relative to the model validated)."""


class Strict(BaseModel):
    """Base of every section: unknown keys are errors; numbers are accepted where text is expected."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
