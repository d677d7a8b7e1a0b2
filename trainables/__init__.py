"""What does the work: data, encoders, the method's phases and metrics.

Everything here is plain Python/PyTorch, callable without Ray.
"""
