"""The study driver: configuration, CLI, Ray Tune runs, the phase cache, MLflow and reports.

For notebooks::

    from study import load_study, run_study
    results = run_study(load_study("search_spaces/smoke.yaml", ["storage.study_dir=studies/nb"]))
    results.get_best_result().metrics

``run_trial`` is the Tune function trainable; for your own ``tune.Tuner`` or
``tune.run``, lay out the study directory first with ``prepare_study_dir``::

    study_dir = prepare_study_dir(load_study("search_spaces/smoke.yaml"))
    tune.run(run_trial, config={"study_dir": str(study_dir), "layer": 2, "clusters": 8,
                                "mask_ratio": 0.2, "pooling": "attention"})

Importing this package loads Ray and torch; the command line (:mod:`study.cli`)
and the config (:mod:`study.config`) do not.
"""

from study.config.loading import load_study
from study.tune.runner import prepare_study_dir, resume_study, run_study
from study.tune.trial import run_trial

__all__ = ["load_study", "prepare_study_dir", "resume_study", "run_study", "run_trial"]
