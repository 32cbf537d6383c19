"""Benchmark: latency and memory of the served model on CPU.

Loads a registered model (default: the champion) as the pyfunc `mlflow models serve` runs, and
times `predict` on base64 JPEGs of synthetic faces: one image at a time and batches of 64
(median of repeated calls after warm-up), then prints the resident memory of the process.

    python bench/predict_latency.py [--model models:/utkface-age-gender@champion] [--repeats 30]
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import time

import pandas as pd
from PIL import Image

from utkface.data.synthetic import synthetic_files
from utkface.inference.answering import FACES, IMAGE, to_base64
from utkface.mlops import store
from utkface.mlops.registry import champion_uri
from utkface.params import load_params

# the synthetic cartoons are answered whole, as tight crops are: the face check doubts some
WHOLE = {FACES: "crop"}


def _frame(count: int) -> pd.DataFrame:
    """`count` synthetic faces as 200x200 JPEGs, like UTKFace crops, base64-encoded."""
    rows = []
    for _, data in synthetic_files(count, seed=7):
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buffer, format="JPEG", quality=90)
        rows.append(to_base64(buffer.getvalue()))
    return pd.DataFrame({IMAGE: rows})


def _median_ms(call, repeats: int) -> float:
    for _ in range(3):
        call()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model URI (default: the registered champion)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    import mlflow

    mlflow.set_tracking_uri(store.tracking_uri())
    uri = args.model or champion_uri(load_params().register_.model_name)
    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(uri)
    load_s = time.perf_counter() - started
    single, batch = _frame(1), _frame(64)
    single_ms = _median_ms(lambda: model.predict(single, params=WHOLE), args.repeats)
    batch_ms = _median_ms(lambda: model.predict(batch, params=WHOLE), max(5, args.repeats // 3))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"== predict latency ({uri}) ==")
    print(f"model load: {load_s:.1f} s")
    print(f"1 image:    {single_ms:7.1f} ms")
    print(
        f"64 images:  {batch_ms:7.1f} ms ({batch_ms / 64:.2f} ms/image, "
        f"{64000 / batch_ms:.0f} images/s)"
    )
    print(f"peak RSS:   {peak_mib:7.0f} MiB")


if __name__ == "__main__":
    main()
