"""Every file the pipeline reads or writes, relative to the repository root.

DVC runs each stage with the repository root as working directory, so these relative paths are
what `dvc.yaml` lists. Nothing else in the project spells a path.
"""

from pathlib import Path

PARAMS = Path("params.yaml")
DVC_LOCK = Path("dvc.lock")

DATA = Path("data")
RAW = DATA / "raw"
PARAMS_CHECKED = DATA / "params.checked"  # what every stage depends on: see stages/check_params
VALIDATED = DATA / "validated"  # what every stage after validate depends on: see stages/validate

INGESTED = DATA / "ingested"
IMAGES = INGESTED / "images.npy"
LABELS = INGESTED / "labels.parquet"

FEATURES = DATA / "features"
FEATURE_TABLE = FEATURES / "features.npy"  # row i: the face features of image cache row i
LANDMARKS = FEATURES / "landmarks.parquet"
AGE_CHIPS = FEATURES / "age_chips.npy"  # row i: image cache row i aligned for the age network

PREFIX = DATA / "prefix"
PREFIX_ACTIVATIONS = PREFIX / "activations.npy"  # the age network's frozen prefix, per view

BALANCED = DATA / "balanced"
PLAN = BALANCED / "plan.parquet"

SPLIT = DATA / "split"
SPLIT_NAMES = ("train", "val", "test")


def split_table(name: str) -> Path:
    """The table of one split: train.parquet, val.parquet or test.parquet."""
    if name not in SPLIT_NAMES:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
    return SPLIT / f"{name}.parquet"


METRICS = Path("metrics")
INGEST_METRICS = METRICS / "ingest.json"
INGEST_REJECTIONS = METRICS / "ingest_rejections.csv"
FEATURES_METRICS = METRICS / "features.json"
PREFIX_METRICS = METRICS / "prefix.json"
VALIDATION = METRICS / "validation.json"
VALIDATION_DOCS = METRICS / "validation_docs"
BALANCE_METRICS = METRICS / "balance.json"
BALANCE_HISTOGRAM = METRICS / "balance_ages.csv"
SPLIT_METRICS = METRICS / "split.json"
TUNE_METRICS = METRICS / "tune.json"
TRAIN_METRICS = METRICS / "train.json"
TRAIN_HISTORY = METRICS / "train_history.csv"
EVALUATE_METRICS = METRICS / "evaluate.json"
SUBGROUPS = METRICS / "subgroups.json"
EVALUATE_PLOTS = METRICS / "evaluate_plots"
AGE_PREDICTIONS = EVALUATE_PLOTS / "age_predictions.csv"
GENDER_CONFUSION = EVALUATE_PLOTS / "gender_confusion.csv"
BY_AGE_BUCKET = EVALUATE_PLOTS / "by_age_bucket.csv"  # age MAE and gender accuracy per bucket
SAMPLE_GRID = EVALUATE_PLOTS / "sample_faces.png"

MODELS = Path("models")
MODEL = MODELS / "model"  # per family trained: its .keras, and .onnx for the head families
FINETUNED_AGE_NETWORK = MODEL / "finetuned_age.onnx"  # the fine-tuned age network, served


def member_model(member: str, folder: Path = MODEL) -> Path:
    """The saved Keras model of one model family."""
    return folder / f"{member}.keras"


def served_file(member: str, folder: Path = MODEL) -> Path:
    """What the served model runs for one family: a head's ONNX graph (exported by train
    beside its Keras file), the scratch CNN's Keras model."""
    return folder / f"{member}.onnx" if member != "scratch" else member_model(member, folder)


AGE_INTERVAL = MODEL / "age_interval.json"  # the interval's calibration (train, on val)

# Keras Tuner's working state during a search, cleared by the next one. Not a DVC output:
# DVC could not restore `tune` from its cache in a queued experiment if it were.
TUNER_DIR = MODELS / "tuner"
TUNED = MODELS / "tuned.json"  # what tune hands to train
TRAIN_RUN = MODELS / "train_run.json"
REGISTERED = MODELS / "registered.json"

MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
CHAMPION_CACHE = "champions.json"  # beside a SQLite store: see registry.champion_files
