"""utkface-pipeline: one module per DVC stage plus the small shared modules they use."""

import os

# Before any TensorFlow import: Keras on TensorFlow, and no C++ info-log spam in stage output.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
