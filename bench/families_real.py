"""Benchmark: the model families on real UTKFace images, over several seeds.

For each seed (which drives the split, the tuner and the weights), copies the project to a
temporary directory (never the repository: nothing derived from UTKFace may be committed),
points `ingest.source` at the real folder, sets `model.family` and runs every DVC stage with
`dvc repro -s`.

Prints: wall time per stage, feature-extraction images/s, test age MAE, gender accuracy and
the 80 % interval's coverage overall and per age band (0-2, 3-9, 10-19, 20-39, 40-59, 60+) as
mean +- standard deviation over the seeds (each seed's age MAE and gender accuracy too), and the
served model's predict latency per face (one image, and batches of 64 synthetic 200 px JPEGs),
with the CPU they were measured on.

    python bench/families_real.py [--family pretrained] [--seeds 1 2 3] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline_real import DEFAULT_DATA, REPO, cpu_description, prepare
from predict_latency import WHOLE, _frame, _median_ms

from utkface.inference.families import FamilyModel
from utkface.scoring.age_interval import AgeInterval

STAGES = [
    *("check_params", "ingest", "validate", "features", "prefix", "balance", "split"),
    *("tune", "train", "evaluate"),
]
BANDS = [(0, 3), (3, 10), (10, 20), (20, 40), (40, 60), (60, 200)]
RESULTS = REPO / "bench" / "results"  # git-ignored
TARGETS = {"age_mae": 5.2, "gender_accuracy": 0.88, "gender_20_59": 0.95, "minutes": 15.0}


def band_name(low: int, high: int) -> str:
    return f"{low}+" if high >= 200 else f"{low}-{high - 1}"


@contextlib.contextmanager
def inside(root: Path) -> Iterator[None]:
    """The project at `root` as working directory and MLflow store."""
    cwd, uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    try:
        yield
    finally:
        os.chdir(cwd)
        if uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = uri


def score() -> dict:
    """Test metrics of the trained family, as evaluate and the served model answer."""
    from utkface.data.labels import gender_labels
    from utkface.inference.evaluation import predict_split, served_inputs
    from utkface.params import load_params

    params = load_params()
    inputs = served_inputs(params.model.family, "test")
    model, interval = served_model()
    frame = predict_split(model, inputs, params.validate_.age_max, interval)
    correct = gender_labels(frame["p_female"].to_numpy()) == frame["gender"].to_numpy()
    error = (frame["pred_age"] - frame["age"]).abs().to_numpy()
    result = {"age_mae": float(error.mean()), "gender_accuracy": float(correct.mean())}
    inside = frame["age"].between(frame["age_low"], frame["age_high"]).to_numpy()
    for low, high in BANDS:
        rows = frame["age"].between(low, high - 1).to_numpy()
        result[band_name(low, high)] = (
            float(error[rows].mean()),
            float(correct[rows].mean()),
            float(inside[rows].mean()),
        )
    adults = frame["age"].between(20, 59).to_numpy()
    result["gender_20_59"] = float(correct[adults].mean())
    result["interval_coverage"] = float(inside.mean())
    return result


def served_model() -> tuple[FamilyModel, AgeInterval]:
    """The saved family as the served model runs it, and the interval train calibrated."""
    from utkface import paths
    from utkface.inference.families import load_family
    from utkface.params import load_params

    family = load_params().model.family
    model = load_family(family, paths.served_file(family))
    return model, AgeInterval.from_config(json.loads(paths.AGE_INTERVAL.read_text()))


def latency() -> tuple[float, float]:
    """Median ms for one image and for a batch of 64, of the served pyfunc."""
    import mlflow

    from utkface import paths
    from utkface.data.imaging import load_image
    from utkface.data.synthetic import synthetic_files
    from utkface.inference.evaluation import serving_config
    from utkface.inference.pyfunc_logging import log_serving_model
    from utkface.params import load_params

    params = load_params()
    config = serving_config(params, *served_model())
    # a face the model answers: a blank example failed MLflow's check of it, with a warning
    size, pixels = params.ingest.image_size, params.ingest.max_image_pixels
    examples = [load_image(data, size, pixels) for _, data in synthetic_files(2, seed=7)]
    with mlflow.start_run(run_name=f"bench-{params.model.family}"):
        info = log_serving_model(paths.MODEL, config, examples, lineage={})
    model = mlflow.pyfunc.load_model(info.model_uri)
    single, batch = _frame(1), _frame(64)
    return _median_ms(lambda: model.predict(single, params=WHOLE), 20), _median_ms(
        lambda: model.predict(batch, params=WHOLE), 5
    )


def run_seed(data: Path, family: str, seed: int, overrides: list[str], with_latency: bool) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"utkface-families-{seed}-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    try:
        prepare(root, data, [f"model.family={family}", f"seed={seed}", *overrides])
        seconds = {}
        for stage in STAGES:
            started = time.perf_counter()
            subprocess.run(
                ["dvc", "repro", "-s", stage], cwd=root, env=env, check=True, capture_output=True
            )
            seconds[stage] = time.perf_counter() - started
            print(f"bench: seed {seed} {stage:9s} {seconds[stage]:7.1f} s", flush=True)
        metrics = root / "metrics"
        result = {
            "seconds": seconds,
            "features": json.loads((metrics / "features.json").read_text()),
        }
        with inside(root):
            result["scores"] = score()
            if with_latency:
                result["scores"]["latency_ms"] = latency()
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {sd:.3f}"


def per_seed(values: list[float]) -> str:
    """Each seed's figure, in the order of `--seeds`, as the docs quote them."""
    return "(" + ", ".join(f"{value:.3f}" for value in values) + ")"


def report(results: list[dict], args: argparse.Namespace) -> None:
    print(f"\n== model families on real data (family={args.family}, seeds {args.seeds}) ==")
    print(f"data: {args.data}; cores: {os.cpu_count()}, {cpu_description()}")
    first = results[0]
    rates = [r["features"]["images"] / r["seconds"]["features"] for r in results]
    print(
        f"features: {first['features']['images']} faces, {first['features']['feature_size']} "
        f"features, {mean_sd(rates)} images/s (the stage's wall time), "
        f"{first['features']['implausible_landmarks']} with implausible landmarks"
    )
    print("wall time per stage (s, mean over seeds):")
    for stage in STAGES:
        print(f"  {stage:9s} {statistics.mean(r['seconds'][stage] for r in results):7.1f}")
    total = [sum(r["seconds"].values()) / 60 for r in results]
    print(f"  whole dvc repro: {mean_sd(total)} min (target < {TARGETS['minutes']:.0f} min)")
    rows = [r["scores"] for r in results]
    print(f"\n-- {args.family} --")
    maes, accuracies = [r["age_mae"] for r in rows], [r["gender_accuracy"] for r in rows]
    print(f"test age MAE: {mean_sd(maes)} {per_seed(maes)} years (target <= {TARGETS['age_mae']})")
    print(
        f"test gender accuracy: {mean_sd(accuracies)} {per_seed(accuracies)} "
        f"(target >= {TARGETS['gender_accuracy']}); ages 20-59: "
        f"{mean_sd([r['gender_20_59'] for r in rows])} (target >= {TARGETS['gender_20_59']})"
    )
    print(f"80 % age interval coverage: {mean_sd([r['interval_coverage'] for r in rows])}")
    print(f"{'age band':>9s} {'age MAE':>16s} {'gender accuracy':>16s} {'coverage':>16s}")
    for low, high in BANDS:
        name = band_name(low, high)
        mae, acc, coverage = (mean_sd([r[name][i] for r in rows]) for i in range(3))
        print(f"{name:>9s} {mae:>16s} {acc:>16s} {coverage:>16s}")
    if "latency_ms" in rows[0]:
        single, batch = rows[0]["latency_ms"]
        print(
            f"predict latency: 1 image {single:.0f} ms; 64 images {batch:.0f} ms "
            f"({batch / 64:.1f} ms/face)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--family", default="pretrained")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--set", action="append", default=[], help="params override key=value")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"bench: {args.data} not found")
    RESULTS.mkdir(exist_ok=True)
    results = []
    for seed in args.seeds:
        results.append(
            run_seed(args.data, args.family, seed, args.set, with_latency=seed == args.seeds[0])
        )
        saved = RESULTS / f"families-{args.family}-seed{seed}.json"
        saved.write_text(json.dumps(results[-1], indent=2))  # figures, never UTKFace data
    report(results, args)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
