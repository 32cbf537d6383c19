"""Inference: the served pyfunc and its logging to MLflow, the prediction client used by
`utkface predict` and the app, and face detection."""
