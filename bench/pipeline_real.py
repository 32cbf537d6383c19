"""Benchmark: the default pipeline on real UTKFace images, timed stage by stage.

Copies the project to a temporary directory (never the repository: nothing derived from
UTKFace may be committed), points `ingest.source` at the real folder, runs each DVC stage in
order with `dvc repro -s`, and prints wall time per stage, training throughput and the
test-split age MAE and gender accuracy against the performance targets.

    python bench/pipeline_real.py [--data ../shared/utkface/crop_part1_dev] [--set key=value ...]

For one model family; `bench/families_real.py` compares the families over several seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "utkface" / "crop_part1_dev"
STAGES = [
    *("check_params", "ingest", "validate", "features", "prefix", "balance", "split"),
    *("tune", "train", "evaluate"),
]
PROJECT_FILES = [
    "stages",
    "utkface",
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "data/raw/README.md",
]
TARGETS = {"minutes_ingest_to_train": 30.0, "age_mae": 6.0, "gender_accuracy": 0.87}


def override(params: dict, assignment: str) -> None:
    key, value = assignment.split("=", 1)
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[leaf] = yaml.safe_load(value)


def prepare(root: Path, data: Path, overrides: list[str]) -> None:
    for name in PROJECT_FILES:
        source, target = REPO / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["ingest"]["source"] = str(data.resolve())
    for assignment in overrides:
        override(params, assignment)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run([*git, *command], cwd=root, check=True)


def cpu_description() -> str:
    """The CPU's model, family/model numbers and widest vector extension. Two 2-core machines
    of this project differed 1.9x in training throughput (249 vs 133 img/s), so the figures
    below are only comparable on the same kind of CPU."""
    info = Path("/proc/cpuinfo")
    fields: dict[str, str] = {}
    for line in info.read_text().splitlines() if info.exists() else []:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    flags = fields.get("flags", "").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    numbers = ""
    if "cpu family" in fields and "model" in fields:
        numbers = f"family {fields['cpu family']}, model {fields['model']}, "
    return f"{name} ({numbers}{vector})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--set", action="append", default=[], help="params override key=value")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"bench: {args.data} not found")
    root = Path(tempfile.mkdtemp(prefix="utkface-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        prepare(root, args.data, args.set)
        seconds: dict[str, float] = {}
        for stage in STAGES:
            started = time.perf_counter()
            subprocess.run(["dvc", "repro", "-s", stage], cwd=root, env=env, check=True)
            seconds[stage] = time.perf_counter() - started
            print(f"bench: {stage:9s} {seconds[stage]:7.1f} s", flush=True)
        metrics = {
            n: json.loads((root / "metrics" / f"{n}.json").read_text())
            for n in ("ingest", "split", "train", "evaluate", "subgroups")
        }
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    to_train = sum(seconds[s] for s in STAGES[: STAGES.index("train") + 1]) / 60
    evaluate, train = metrics["evaluate"], metrics["train"]
    print(
        "\n== utkface-pipeline benchmark (real data, default params"
        f"{', ' + ', '.join(args.set) if args.set else ''}) =="
    )
    print(
        f"data: {args.data} -> {metrics['ingest']['images']} images, "
        f"{metrics['ingest']['rejected']} rejected; cores: {os.cpu_count()}, {cpu_description()}"
    )
    for stage in STAGES:
        print(f"  {stage:9s} {seconds[stage]:7.1f} s")
    print(f"ingest..train: {to_train:.1f} min (target < {TARGETS['minutes_ingest_to_train']:.0f})")
    print(
        f"training: {train['epochs_run']} epochs in {seconds['train']:.0f} s (the stage), "
        f"lr={train['lr_used']} ({train['lr_source']})"
    )
    print(
        f"test age MAE: {evaluate['test_age_mae']:.2f} years (target <= {TARGETS['age_mae']}; "
        f"median baseline {evaluate['test_baseline_age_mae']:.2f})"
    )
    print(
        f"test gender accuracy: {evaluate['test_gender_accuracy']:.3f} "
        f"(target >= {TARGETS['gender_accuracy']})"
    )
    print(f"worst groups: {json.dumps(metrics['subgroups']['worst'])}")
    print_subgroups(metrics["subgroups"])


def print_subgroups(subgroups: dict) -> None:
    """Test-split size, age MAE and gender accuracy of every age bucket, gender and race."""
    print(f"{'group':>16s} {'n':>5s} {'age MAE':>8s} {'gender acc':>10s}")
    for grouping in ("age_bucket", "gender", "race"):
        for group, m in subgroups[grouping]["groups"].items():
            name = f"{grouping}={group}"
            print(f"{name:>16s} {m['n']:5d} {m['age_mae']:8.2f} {m['gender_accuracy']:10.3f}")


if __name__ == "__main__":
    main()
