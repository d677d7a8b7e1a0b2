"""The study driver: configuration, CLI, Ray Tune runs, the phase cache, MLflow and reports.

For notebooks::

    from study import load_study, run_study
    results = run_study(load_study("search_spaces/smoke.yaml", ["storage.study_dir=studies/nb"]))
    results.get_best_result().metrics

``run_trial`` is the Tune function trainable, for your own ``tune.Tuner``/``tune.run``.
Imports are lazy so the command line starts without loading Ray.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "load_study": "study.config",
    "run_study": "study.runner",
    "resume_study": "study.runner",
    "run_trial": "study.trial",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'study' has no attribute {name!r}")
