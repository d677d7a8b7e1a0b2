"""The study driver: configuration, CLI, Ray Tune runs, the phase cache, MLflow and reports."""
