"""Export of a study's best model: a HuggingFace directory, an MLflow model."""
