"""Benchmark: the data stages on a synthetic face set of UTKFace's full size, on CPU.

Copies `stages/`, `utkface/` and `dvc.yaml` to a temporary directory (outside the repository),
writes a params.yaml of the code's defaults with `ingest.synthetic_count` set to `--count`
(23,708 by default: the size of UTKFace's aligned-and-cropped set) and runs `ingest`,
`validate`, `balance` and `split` there one after the other, each as `python -m stages.<name>`
in its own process. `features` is left out: none of these four depends on its outputs.

The synthetic faces are drawn inside `ingest` (`ingest.source: synthetic`), so a `generate` step
first draws the same JPEGs in a process of its own and throws them away: `ingest` minus
`generate` is roughly what ingesting the same number of real files costs.

Prints, per step: wall time, CPU time, peak RSS of its process (`ru_maxrss` from `os.wait4`)
and the size of what it writes (its `outs` in dvc.yaml), with the CPU it ran on.

`--train` then runs `train` too (after `features` unless `model.family` is scratch), with a
learning rate from `lr` instead of `tune`, into an MLflow store in the temporary project, and
prints its epochs, seconds per epoch and training images per second with the GPU TensorFlow
sees, if any: how long the full set takes to train on this machine, e.g.

    python bench/fullsize_synthetic.py --train --set model.family=scratch --set lr=0.001 \
        --set train.epochs=2 [--set train.batch_size=256 --set train.mixed_precision=true]

    python bench/fullsize_synthetic.py [--count 23708] [--set key=value ...] [--train] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml
from pipeline_real import REPO, cpu_description, override

from utkface.params import Params

FULL_SIZE = 23_708  # UTKFace's aligned-and-cropped faces
STAGES = ["ingest", "validate", "balance", "split"]
PROJECT_FILES = ["stages", "utkface", "dvc.yaml"]
# The synthetic JPEGs alone, as `ingest` draws them; prints where `utkface` was imported from.
GENERATE = """
import json, sys
import utkface
from utkface.data.synthetic import synthetic_files
sizes = [len(data) for _, data in synthetic_files(int(sys.argv[1]), int(sys.argv[2]))]
print(json.dumps({"files": len(sizes), "bytes": sum(sizes), "module": utkface.__file__}))
"""


def prepare(root: Path, count: int, overrides: list[str]) -> dict:
    """The project at `root`, with the code's default params and `count` synthetic faces."""
    for name in PROJECT_FILES:
        source, target = REPO / name, root / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    params = Params().model_dump(mode="json", by_alias=True)
    params["ingest"]["synthetic_count"] = count
    for assignment in overrides:
        override(params, assignment)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def run_measured(
    command: list[str], root: Path, env: dict[str, str], capture: bool = False
) -> tuple[dict, str]:
    """Run `command` in `root`; its wall and CPU seconds, peak RSS (MiB) and exit status."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.PIPE if capture else None, text=True
    )
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.stdout:
        process.stdout.close()
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "returncode": process.returncode,
    }, output


def _bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def stage_outs(root: Path, stage: str) -> list[Path]:
    """What `stage` writes, as its `outs` in dvc.yaml list it."""
    outs = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage].get("outs", [])
    return [root / (out if isinstance(out, str) else next(iter(out))) for out in outs]


def train_stages(params: dict) -> list[str]:
    """The stages `--train` adds: `features` when the model family reads face features."""
    return (["features"] if params["model"]["family"] != "scratch" else []) + ["train"]


GPUS = """
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
print(", ".join(names))
"""


def gpu_description(env: dict[str, str]) -> str:
    """The GPUs TensorFlow sees (what `train` runs on), or that there are none. Asked in a
    process of its own: a child forked from a bench holding TensorFlow would report the bench's
    memory as its own peak RSS."""
    names = subprocess.run(
        [sys.executable, "-c", GPUS], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    return f"GPU: {names}" if names else "no GPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=FULL_SIZE, help="synthetic faces")
    parser.add_argument("--set", action="append", default=[], help="params override key=value")
    parser.add_argument("--train", action="store_true", help="run train too (lr from params)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="utkface-fullsize-"))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "DVC_")) and k != "PYTHONPATH"
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    cpu = f"cores: {os.cpu_count()}, {cpu_description()}"
    if args.train:
        cpu += f"; {gpu_description(env)}"
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    try:
        params = prepare(root, args.count, args.set)
        generate, output = run_measured(
            [sys.executable, "-c", GENERATE, str(args.count), str(params["seed"])],
            root,
            env,
            capture=True,
        )
        if generate["returncode"]:
            sys.exit(f"bench: generating the synthetic faces failed ({generate['returncode']})")
        drawn = json.loads(output)
        if not Path(drawn["module"]).resolve().is_relative_to(root.resolve()):
            sys.exit(f"bench: utkface imported from {drawn['module']}, not the copy in {root}")
        generate["output_mib"] = drawn["bytes"] / 2**20
        results["generate"] = generate
        print(f"bench: generate {generate['seconds']:7.1f} s ({cpu})", flush=True)
        stages = STAGES + (train_stages(params) if args.train else [])
        for stage in stages:
            result, _ = run_measured([sys.executable, "-m", f"stages.{stage}"], root, env)
            if result["returncode"]:
                sys.exit(f"bench: stage {stage} failed ({result['returncode']}); see {root}")
            result["output_mib"] = sum(_bytes(p) for p in stage_outs(root, stage)) / 2**20
            results[stage] = result
            print(f"bench: {stage:8s} {result['seconds']:7.1f} s ({cpu})", flush=True)
        metrics = {
            n: json.loads((root / "metrics" / f"{n}.json").read_text())
            for n in ("ingest", "balance", "split", *(["train"] if args.train else []))
        }
        cache = root / "data" / "ingested" / "images.npy"
        cache_mib = _bytes(cache) / 2**20
    finally:
        if args.keep:
            print(f"bench: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    ingest, balance, split = metrics["ingest"], metrics["balance"], metrics["split"]
    size = ingest["image_size"]
    total = sum(r["seconds"] for r in results.values())
    print(
        f"\n== data stages on {args.count} synthetic faces (default params"
        f"{', ' + ', '.join(args.set) if args.set else ''}), {date.today()} =="
    )
    print(
        f"{cpu}; load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after "
        "(other work on the machine stretches wall time, not CPU time)"
    )
    print(f"{'step':8s} {'wall s':>7s} {'CPU s':>7s} {'peak RSS MiB':>12s} {'output MiB':>10s}")
    for step, r in results.items():
        print(
            f"{step:8s} {r['seconds']:7.1f} {r['cpu_seconds']:7.1f} {r['peak_rss_mib']:12.0f} "
            f"{r['output_mib']:10.1f}"
        )
    print(f"{'total':8s} {total:7.1f} {sum(r['cpu_seconds'] for r in results.values()):7.1f}")
    rate = ingest["images"] / results["ingest"]["seconds"]
    decode = results["ingest"]["seconds"] - results["generate"]["seconds"]
    # Under a few seconds the difference is start-up noise.
    without = (
        f"without drawing ~{decode:.0f} s, {ingest['images'] / decode:.0f} images/s"
        if decode >= 1
        else "too few images to tell drawing from decoding"
    )
    print(
        f"ingest: {ingest['images']} images ({ingest['rejected']} rejected) at {rate:.0f} "
        f"images/s including drawing them; {without}"
    )
    print(
        f"image cache: {cache_mib:.1f} MiB ({size}x{size}x3 uint8 per image); generate's output "
        f"is the JPEG bytes drawn (200 px, not written), like a raw UTKFace folder"
    )
    print(
        f"balance: {balance['rows_before']} images -> {balance['rows_after']} plan rows "
        f"(removed {balance['removed']}, added {balance['added']}); split: train "
        f"{split['train']['rows']} rows, val {split['val']['rows']}, test {split['test']['rows']}"
    )
    if args.train:
        train = metrics["train"]
        print(
            f"train ({params['model']['family']}, batch {params['train']['batch_size']}, "
            f"mixed precision {params['train']['mixed_precision']}): {train['epochs_run']} "
            f"epochs on {train['train_rows']} rows: the stage "
            f"{results['train']['seconds']:.0f} s with loading, saving and logging; the fit's "
            "own seconds and images/s are in its MLflow run (metrics seconds, images_per_second)"
        )
    print(f"total: {total / 60:.1f} min ({cpu})")


if __name__ == "__main__":
    main()
