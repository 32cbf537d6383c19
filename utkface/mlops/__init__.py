"""MLOps: the MLflow store and lineage, Keras logging, the model registry and the promotion
gate."""
