"""Paired comparisons: does a candidate beat a baseline, fold by fold?

A candidate and a baseline are scored on the same folds (the same training,
validation and test utterances) and, with ``study.seeds``, the same repeat
seeds. The comparison pairs their test scores by (test session, seed), takes
the differences d_i = candidate_i - baseline_i, and reports their mean with a
95 % **t-interval over the pairs**: mean ± t(0.975, n - 1) · sd(d, ddof=1) / sqrt(n).
With one pair there is no interval. Folds are few (5 on IEMOCAP), so the
interval is wide; it says how far the mean difference can be trusted, not
just its sign.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

#: What every report says of how its intervals are made.
INTERVAL_METHOD = "95 % t-interval over the paired folds (and seeds): mean ± t(0.975, n-1) · sd / √n, sd with ddof 1"
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison:
    """Candidate minus baseline on ``metric`` over ``n`` paired folds: the mean difference and its 95 % interval (NaN without one)."""

    metric: str
    n: int
    mean: float
    low: float
    high: float

    @property
    def beyond(self) -> bool:
        """The whole interval is above zero: the candidate beats the baseline beyond the interval."""
        return self.n > 1 and self.low > 0

    @property
    def below(self) -> bool:
        """The whole interval is below zero: the baseline beats the candidate beyond the interval."""
        return self.n > 1 and self.high < 0


def _score(fold: Mapping[str, Any], metric: str) -> float | None:
    value = (fold.get("test") or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def pair_key(fold: Mapping[str, Any]) -> tuple[int, int]:
    """How folds of two records are paired: (test session, seed)."""
    return int(fold.get("test_session", -1)), int(fold.get("seed", 0))


def differences(candidate: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], metric: str = "ua") -> list[float]:
    """``candidate - baseline`` test ``metric`` for every (test session, seed) both have, in that order."""
    theirs = {pair_key(fold): _score(fold, metric) for fold in baseline}
    pairs = []
    for fold in sorted(candidate, key=pair_key):
        ours, other = _score(fold, metric), theirs.get(pair_key(fold))
        if ours is not None and other is not None:
            pairs.append(ours - other)
    return pairs


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and two-sided ``confidence`` t-interval of ``values`` (NaN bounds for fewer than two)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def compare(candidate: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]], metric: str = "ua") -> Comparison:
    """The paired comparison of two records' folds on test ``metric``."""
    diffs = differences(candidate, baseline, metric)
    mean, low, high = t_interval(diffs)
    return Comparison(metric, len(diffs), mean, low, high)


def comparison_text(comparison: Comparison) -> str:
    """``"+3.2 [-1.0, +7.4]"`` in percentage points (``n/a`` without pairs; no interval with one pair)."""
    if comparison.n == 0 or not math.isfinite(comparison.mean):
        return "n/a"
    mean = f"{100 * comparison.mean:+.1f}"
    if not math.isfinite(comparison.low):
        return f"{mean} (1 fold)"
    return f"{mean} [{100 * comparison.low:+.1f}, {100 * comparison.high:+.1f}]"


def verdict(name: str, comparison: Comparison) -> str:
    """Whether the candidate beats baseline ``name`` beyond the interval, in words."""
    if comparison.n == 0:
        return f"not compared with {name} (no common fold)"
    text = f"{comparison_text(comparison)} points of test {comparison.metric.upper()} vs {name}"
    if comparison.n < 2:
        return f"{text}: one fold, no interval"
    if comparison.beyond:
        return f"beats {name} beyond the interval ({text})"
    if comparison.below:
        return f"is beaten by {name} beyond the interval ({text})"
    return f"does not beat {name} beyond the interval ({text})"
