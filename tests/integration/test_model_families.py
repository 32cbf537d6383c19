"""The model families end to end on a tiny synthetic project with a throwaway MLflow store:
every stage's `main()` for the pretrained family, then, in a copy, the stages again for the
finetuned family; the registered pyfunc predicts what the stages' in-process models do."""

from __future__ import annotations

import importlib
from pathlib import Path

import keras
import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
import yaml
from dvc_project import copied_project
from mlflow import MlflowClient
from onnx import numpy_helper
from tiny import AGE_MAX, dag_params, enter_project, with_overrides

from utkface import paths
from utkface.data.synthetic import synthetic_files
from utkface.inference.answering import SYNTHETIC_TRAINING, to_base64
from utkface.inference.evaluation import served_inputs
from utkface.inference.families import OnnxHead, to_answers
from utkface.model.face_backbone import flush_subnormals, package_files
from utkface.model.finetuned import FEATURES, PREFIX
from utkface.model.fitting import load_inputs
from utkface.model.prefix_cache import prefix_graph

pytestmark = pytest.mark.slow

COUNT, SEED = 200, 5
FAMILIES = {
    "seed": SEED,
    "ingest": {"synthetic_count": COUNT},
    "model": {"finetune": {"members": 2}},  # the default's ensemble (TINY_DAG fits one)
    "train": {"epochs": 3},
    "tune": {"head": {"learning_rates": [0.001, 0.003], "max_trials": 2, "epochs": 2}},
    "register": {"model_name": "families"},
}
DAG = [
    "ingest", "features", "prefix", "validate", "balance", "split", "tune", "train", "evaluate"
]  # fmt: skip


def write_params(root: Path, family: str) -> None:
    params = dag_params(with_overrides(FAMILIES, {"model": {"family": family}}))
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def run(stages: list[str]) -> None:
    for stage in stages:
        importlib.import_module(f"stages.{stage}").main()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny project after the whole DAG with `model.family: pretrained`."""
    root = tmp_path_factory.mktemp("families")
    with pytest.MonkeyPatch.context() as patch:
        enter_project(patch, root)
        write_params(root, "pretrained")
        run(DAG)
        yield root


def enter(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`root` as the working directory and MLflow store (also MLflow's process-wide URI, which
    a stage sets and which outranks the environment)."""
    monkeypatch.chdir(root)
    uri = f"sqlite:///{root}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return root


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return enter(project, monkeypatch)


@pytest.fixture
def in_copy(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project, for a test that changes it."""
    return enter(copied_project(project, tmp_path / "families"), monkeypatch)


def test_features_are_one_row_per_ingested_image(in_project: Path) -> None:
    labels = pd.read_parquet(paths.LABELS)
    features = np.load(paths.FEATURE_TABLE)
    assert features.shape[0] == len(labels) == COUNT
    assert np.isfinite(features).all()
    assert pd.read_parquet(paths.LANDMARKS)["cache_index"].tolist() == list(range(COUNT))


def test_the_pretrained_family_trains_only_its_head(in_project: Path) -> None:
    assert sorted(p.name for p in paths.MODEL.iterdir()) == [
        "age_interval.json",
        "pretrained.keras",
        "pretrained.onnx",
    ]
    head = keras.saving.load_model(paths.member_model("pretrained"), compile=False)
    assert sorted(head.output) == ["age", "gender"]
    tuned = yaml.safe_load(paths.TUNED.read_text())
    assert tuned["scratch"] is None and tuned["pretrained"]["lr"] in (0.001, 0.003)


def test_the_registered_card_says_what_trained_the_model(in_project: Path) -> None:
    client = MlflowClient()
    version = client.get_model_version_by_alias("families", "challenger")
    assert version.tags["family"] == "pretrained"
    assert version.tags["trained_on"] == SYNTHETIC_TRAINING
    assert int(version.tags["training_images"]) > 0
    assert "synthetic" in version.description and "CC0 1.0" in version.description
    assert "Test accuracy per age band" in version.description
    assert "Trained on UTKFace" not in client.get_registered_model("families").description


def _test_images() -> list[str]:
    """base64 bytes of the first test images, as the source produced them."""
    test = pd.read_parquet(paths.split_table("test")).head(6)
    labels = pd.read_parquet(paths.LABELS).set_index("cache_index")
    files = dict(synthetic_files(COUNT, SEED))
    return [to_base64(files[labels.loc[i, "file"]]) for i in test["cache_index"]]


def _in_process(family: str) -> pd.DataFrame:
    """The stages' answer for the first test faces: the saved Keras model run by Keras on the
    cached inputs, clamped."""
    model = keras.saving.load_model(paths.member_model(family), compile=False)
    outputs = model.predict(load_inputs(family, "test").images[:6], verbose=0)
    p = outputs["gender"].ravel()
    return pd.DataFrame(
        {
            "age": np.clip(outputs["age"].ravel(), 1, AGE_MAX),
            "gender": np.where(p > 0.5, "female", "male"),
            "p_female": p,
        }
    )


def test_the_onnx_head_equals_the_keras_head_on_the_test_split(in_project: Path) -> None:
    features = load_inputs("pretrained", "test").images
    keras_head = keras.saving.load_model(paths.member_model("pretrained"), compile=False)
    expected = keras_head.predict(features, verbose=0)
    served = OnnxHead(paths.served_file("pretrained"))(features)
    np.testing.assert_allclose(served.age, expected["age"].ravel(), atol=1e-4)
    np.testing.assert_allclose(served.p_female, expected["gender"].ravel(), atol=1e-4)
    np.testing.assert_allclose(served.age_bins.sum(axis=1), 1, atol=1e-5)


def test_evaluate_reports_the_intervals_coverage(in_project: Path) -> None:
    interval = yaml.safe_load(paths.AGE_INTERVAL.read_text())
    assert interval["kind"] == "bins" and len(interval["centres"]) > 1
    metrics = yaml.safe_load(paths.EVALUATE_METRICS.read_text())
    assert metrics["test_age_interval_coverage"] >= 0.5  # of 80 %, on 36 test faces: a wide margin
    assert metrics["test_age_interval_width"] > 0
    buckets = pd.read_csv(paths.BY_AGE_BUCKET)
    assert {"age_interval_coverage", "age_interval_width"} <= set(buckets.columns)


def _served(version: str) -> pd.DataFrame:
    """The registered version's answers on the test images, each read whole (faces="crop"), as
    the stages read them: the default would look for faces in a cartoon its check doubts."""
    model = mlflow.pyfunc.load_model(f"models:/families/{version}")
    return model.predict(pd.DataFrame({"image": _test_images()}), params={"faces": "crop"})


def test_the_served_pretrained_model_predicts_as_the_stages_do(in_project: Path) -> None:
    registered = yaml.safe_load(paths.REGISTERED.read_text())
    served = _served(str(registered["version"]))
    expected = _in_process("pretrained")
    np.testing.assert_allclose(served["age"], expected["age"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(served["p_female"], expected["p_female"], rtol=1e-5, atol=1e-5)
    assert served["gender"].tolist() == expected["gender"].tolist()


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_the_finetuned_family_trains_the_age_networks_last_stage(in_copy: Path) -> None:
    write_params(in_copy, "finetuned")
    run(["prefix", "tune", "train", "evaluate"])
    assert sorted(p.name for p in paths.MODEL.iterdir()) == [
        "age_interval.json",
        "finetuned.keras",
        "finetuned.onnx",
        "finetuned_age.onnx",
    ]
    cached = np.load(paths.PREFIX_ACTIVATIONS)
    assert cached.shape == (COUNT, 2, 2, 7, 7, 128)  # each face: itself and 1 view, + mirrors
    assert not np.array_equal(cached[:, 0], cached[:, 1])  # the view is jittered
    # two members over one prefix: the prefix's constants are the wheel's, each member holds
    # the rest, and only the last stage's convolutions and the dense layer learned (dlib's
    # affine layers are frozen); the members learned apart
    wheel = flush_subnormals(onnx.load(str(package_files().network("age"))))
    before, after = _initializers(wheel), _initializers(onnx.load(paths.FINETUNED_AGE_NETWORK))
    prefix = {i.name for i in prefix_graph(wheel).graph.initializer}
    members = [{k.split("/", 1)[1]: v for k, v in after.items() if k.startswith(m)}
               for m in ("member0/", "member1/")]  # fmt: skip
    assert {k for k in after if "/" not in k} == prefix
    assert all(np.array_equal(before[name], after[name]) for name in prefix)
    assert members[0].keys() == members[1].keys() == before.keys() - prefix
    op_of = {name: node.op_type for node in wheel.graph.node for name in node.input}
    for member in members:
        changed = {k for k, v in member.items() if not np.array_equal(before[k], v)}
        assert changed and {op_of[name] for name in changed} <= {"Conv", "Gemm"}
    assert any(not np.array_equal(members[0][k], members[1][k]) for k in members[0])
    # the served model: its own age network in the backbone, the head on ONNX Runtime
    registered = yaml.safe_load(paths.REGISTERED.read_text())
    uri = f"models:/families/{registered['version']}"
    local = Path(mlflow.artifacts.download_artifacts(uri))
    requirements = (local / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "tensorflow" not in requirements
    assert "keras" not in requirements
    served = _served(str(registered["version"]))
    inputs = served_inputs("finetuned", "test")
    expected = to_answers(OnnxHead(paths.served_file("finetuned"))(inputs.images[:6]), AGE_MAX)
    np.testing.assert_allclose(served["age"], expected["age"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(served["p_female"], expected["p_female"], atol=1e-5)
    # ... and the Keras ensemble as trained, on the cached (float16) prefix of each face
    keras_model = keras.saving.load_model(paths.member_model("finetuned"), compile=False)
    test = load_inputs("finetuned", "test")
    trained = keras_model.predict(
        {PREFIX: test.images[PREFIX][:6, 0, 0].astype("float32"),
         FEATURES: test.images[FEATURES][:6]},
        verbose=0,
    )  # fmt: skip
    np.testing.assert_allclose(served["age"], trained["age"].ravel(), atol=0.05)
    np.testing.assert_allclose(served["p_female"], trained["gender"].ravel(), atol=5e-3)
    train = yaml.safe_load(paths.TRAIN_METRICS.read_text())
    assert train["family"] == "finetuned" and "val_age_mae" in train
    # each member's epochs in MLflow; the history file and MLflow's val_age_mae their mean
    run_id = yaml.safe_load(paths.TRAIN_RUN.read_text())["run_id"]
    logged = [
        MlflowClient().get_metric_history(run_id, f"member{member}_val_age_mae")
        for member in (0, 1)
    ]
    history = pd.read_csv(paths.TRAIN_HISTORY)
    assert history["epoch"].tolist() == [1, 2] and [len(m) for m in logged] == [2, 2]
    mean = [(first.value + second.value) / 2 for first, second in zip(*logged, strict=True)]
    np.testing.assert_allclose(history["val_age_mae"], mean, rtol=1e-6)
    steps = MlflowClient().get_metric_history(run_id, "val_age_mae")
    assert [m.step for m in steps] == [0, 1]
    np.testing.assert_allclose([m.value for m in steps], history["val_age_mae"], rtol=1e-9)
