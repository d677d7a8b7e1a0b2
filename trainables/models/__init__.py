"""Encoders, pooling layers and heads."""
