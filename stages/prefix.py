"""Stage `prefix`: the finetuned family's frozen part of the age network, run once.

For `model.family: finetuned`, every aligned age chip `features` cached and
`model.finetune.views` jittered copies of it, each with its mirror, go through the age network
up to its last stage (`utkface.model.prefix_cache`); row i of `data/prefix/activations.npy`
belongs to image cache row i. For the other families the array is empty: the stage costs
nothing, DVC runs it again when `model.family` changes, and a change of `model.finetune`
alone leaves its output, and so what follows, as it was.
"""

from __future__ import annotations

import time

import numpy as np

from utkface import paths
from utkface.model.face_backbone import FaceBackbone, package_files
from utkface.model.prefix_cache import Prefix, activations
from utkface.outputs import write_json
from utkface.params import load_params, run_main


def main() -> None:
    params = load_params()
    cfg = params.model.finetune
    started = time.perf_counter()
    if params.model.family == "finetuned":
        chips = np.load(paths.AGE_CHIPS)
        prefix = Prefix(FaceBackbone(package_files()))
        cached = activations(chips, cfg, params.seed, prefix)
        summary = {"faces": len(cached), "views": cfg.views + 1}
    else:  # nothing to cache, whatever model.finetune says
        cached, summary = np.zeros(0, np.float16), {"faces": 0, "views": 0}
    seconds = time.perf_counter() - started
    paths.PREFIX.mkdir(parents=True, exist_ok=True)
    np.save(paths.PREFIX_ACTIVATIONS, cached)
    write_json(paths.PREFIX_METRICS, summary)
    print(
        f"prefix: {summary['faces']} faces x {summary['views']} views (each with its mirror) "
        f"in {seconds:.0f}s -> {paths.PREFIX_ACTIVATIONS}"
    )


if __name__ == "__main__":
    run_main("prefix", main)
