"""``ser-study plan``: the artifacts a study would build are exactly those its run built; a finished study's are all cached."""

from __future__ import annotations

import re

import pytest

from study.cli import main
from study_runs import KILL_STUDY, built_phases, study_args

pytestmark = pytest.mark.slow


def _plan_table(text: str) -> dict[str, tuple[int, int]]:
    """phase -> (to build, cached) from the plan's table."""
    rows = re.findall(r"^(\w+)\s+(\d+)\s+(\d+)$", text, flags=re.MULTILINE)
    return {phase: (int(build), int(cached)) for phase, build, cached in rows if phase != "total"}


def test_the_plan_counts_what_the_run_built(reference_study, small_manifest, tiny_encoder, tmp_path, capsys):
    built = built_phases(reference_study)

    fresh = tmp_path / "fresh"
    assert main(["plan", *study_args(small_manifest, tiny_encoder, fresh, *KILL_STUDY)[1:]]) == 0
    planned = capsys.readouterr().out
    assert "2 candidate(s)" in planned and "Baselines: none" in planned
    assert {phase: build for phase, (build, _) in _plan_table(planned).items()} == dict(built)
    assert "no build timings in this cache yet" in planned
    assert not fresh.exists()  # a dry run writes nothing

    # The reference study's own directory and cache: everything it needs is there, with the study's build times.
    args = study_args(small_manifest, tiny_encoder, reference_study, *KILL_STUDY)[1:]
    assert main(["plan", *args]) == 0
    planned = capsys.readouterr().out
    assert {phase: cached for phase, (_, cached) in _plan_table(planned).items()} == dict(built)
    assert all(build == 0 for build, _ in _plan_table(planned).values()) and "nothing to build" in planned


def test_the_plan_refuses_bad_input_before_walking_anything(small_manifest, tmp_path, capsys):
    args = study_args(small_manifest, tmp_path / "no-encoder", tmp_path / "study")[1:]
    assert main(["plan", *args]) == 2
    assert "no-encoder" in capsys.readouterr().err
