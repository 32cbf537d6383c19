"""The model: the dual-head network, its fit loop (shared by tune and train), precise BatchNorm
statistics and the Keras Tuner search."""
