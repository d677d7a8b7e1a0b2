"""The data side: IEMOCAP reading, manifests, folds, audio and batches."""
