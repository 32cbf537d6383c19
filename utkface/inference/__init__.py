"""Inference: the served pyfunc, the prediction client used by `utkface predict` and the app,
and face detection."""
