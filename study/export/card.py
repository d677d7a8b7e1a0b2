"""The model card (``README.md``) of an exported model: what it is, the study's numbers, protocol and audit, how to load it."""

from __future__ import annotations

import math
from typing import Any, Mapping

from study.report.model import Report
from study.report.text import best_section, method_title

USAGE = """```python
import soundfile as sf
from transformers import pipeline

classify = pipeline("audio-classification", model="PATH_TO_THIS_DIRECTORY", trust_remote_code=True)
samples, rate = sf.read("utterance.wav", dtype="float32")  # mono; resample to {rate} Hz first if needed
print(classify({{"raw": samples, "sampling_rate": rate}}))
```"""


def model_card(report: Report, best: Mapping[str, Any], test_session: int, test_ua: float, sample_rate: int) -> str:
    """Markdown with a HuggingFace front matter; the numbers are the study report's, for the trial the model comes from."""
    method = str(best.get("method", "alignment"))
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: audio-classification",
        "tags: [speech-emotion-recognition, ser-study, " + method + "]",
        "---",
        "",
        f"# {report.name}: {method_title(report, method)}",
        "",
        f"One fold model of the best configuration of the ser-study study `{report.name}`: the model trained with session "
        f"{test_session} held out (its test UA {_pct(test_ua)}). The numbers below are over every fold of that configuration, "
        "each fold scored on its own held-out session; this one model saw the other sessions' labels.",
        "",
        f"- Protocol: {report.protocol}",
        f"- Leakage audit: {report.audit or 'not recorded for this study (run `ser-study audit STUDY_DIR`)'}",
        f"- Classes: {', '.join(map(str, best.get('classes') or []))}",
        f"- Data fingerprint: {report.data_fingerprint or 'n/a'}; code version: {report.code_version or 'n/a'}",
        "",
        *best_section(report),
        "## Use",
        "",
        USAGE.format(rate=sample_rate),
        "",
    ]
    return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %" if math.isfinite(value) else "n/a"
