"""Stage `tune`: Keras Tuner searches the learning rate (and optional model knobs) of the
model family `model.family` chooses, and hands the winners to `train` (`models/tuned.json`).
`metrics/tune.json` holds the search's summary.

Each trial is a nested MLflow run under one `tune` parent run; trials fit exactly as `train`
does (`utkface.model.search`). The pretrained head searches on the cached face features
(`tune.head`), the scratch CNN on images (`tune.*`).

Distributed search uses Keras Tuner's own chief/worker mode: with KERASTUNER_TUNER_ID=chief
this process serves the oracle and writes the results; with KERASTUNER_TUNER_ID=tuner0,
tuner1, ... it runs trials for the chief at KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT and logs
them under the chief's parent run.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from typing import Any

import keras_tuner as kt
import mlflow

from utkface import paths
from utkface.data.dataset import SplitData
from utkface.mlops import tracking
from utkface.mlops.keras_logging import EpochLogger, tracked_tuner
from utkface.mlops.runs import stage_run
from utkface.model.fitting import load_inputs
from utkface.model.search import OBJECTIVE, is_worker, search, tuned_values
from utkface.outputs import write_json
from utkface.params import Family, Params, Tuned, load_params, run_main

ORACLE_TAG = "keras_tuner_oracle"


def _metric_at(trial: Any, name: str) -> float | None:
    history = trial.metrics.get_history(name) if trial.metrics.exists(name) else []
    at_best = [o.value[0] for o in history if o.step == trial.best_step]
    return float(at_best[0]) if at_best else None


def summarize(tuner: kt.Tuner, params: Params, member: Family) -> dict:
    """Best hyperparameters and the trial table of `member`'s search, for metrics/tune.json
    (no timings or run ids: a DVC-tracked metric changes only when the result does; MLflow has
    them)."""
    trials = list(tuner.oracle.trials.values())
    table = [
        {
            "trial_id": t.trial_id,
            "status": t.status,
            "hyperparameters": t.hyperparameters.values,
            "best_epoch": t.best_step,
            "val_age_mae": _metric_at(t, "val_age_mae"),
            "val_gender_accuracy": _metric_at(t, "val_gender_accuracy"),
            OBJECTIVE: None if t.score is None else float(t.score),
        }
        for t in sorted(trials, key=lambda t: t.trial_id)
    ]
    completed = [row for row in table if row[OBJECTIVE] is not None]
    if not completed:
        messages = "\n".join(f"trial {t.trial_id}: {t.message}" for t in trials if t.message)
        raise RuntimeError(f"tune: no trial completed; the trials failed with:\n{messages}")
    best = min(completed, key=lambda row: row[OBJECTIVE])
    return {
        "best": best["hyperparameters"],
        "best_" + OBJECTIVE: best[OBJECTIVE],
        "best_val_age_mae": best["val_age_mae"],
        "best_val_gender_accuracy": best["val_gender_accuracy"],
        "objective": f"val_age_mae + {params.tune.gender_weight} * (1 - val_gender_accuracy)",
        "tuner": params.tune.search(member).tuner,
        "trials": table,
    }


def _parent_run_for_worker(oracle: str, wait_s: float = 60.0) -> str | None:
    """The chief's parent run, found by its oracle address tag."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        runs = mlflow.search_runs(
            filter_string=f"tags.{ORACLE_TAG} = '{oracle}' and attributes.status = 'RUNNING'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
            output_format="list",
        )
        if runs:
            return runs[0].info.run_id
        time.sleep(1.0)
    return None


def tracked_search(
    params: Params, member: Family, train: SplitData, val: SplitData, parent_run_id: str | None
) -> kt.Tuner:
    """`member`'s search with every trial a nested MLflow run under `parent_run_id`, each epoch
    logged."""
    wrap = functools.partial(tracked_tuner, parent_run_id=parent_run_id)
    return search(params, train, val, wrap, callbacks=[EpochLogger()], member=member)


def search_member(params: Params, member: Family, parent_run_id: str | None) -> kt.Tuner:
    """`tracked_search` on `member`'s training and validation inputs."""
    train, val = load_inputs(member, "train"), load_inputs(member, "val")
    return tracked_search(params, member, train, val, parent_run_id)


def main() -> None:
    params = load_params()
    family = params.model.family
    role = os.environ.get("KERASTUNER_TUNER_ID", "single")
    oracle = f"{os.environ.get('KERASTUNER_ORACLE_IP')}:{os.environ.get('KERASTUNER_ORACLE_PORT')}"
    experiment_id = tracking.use_experiment(tracking.TUNE_EXPERIMENT)
    if is_worker():
        search_member(params, family, _parent_run_for_worker(oracle))
        print(f"tune: worker {role} finished its trials for the chief at {oracle}")
        return
    if paths.TUNER_DIR.exists():
        shutil.rmtree(paths.TUNER_DIR)
    version = tracking.data_version()
    tags = {"stage": "tune", **tracking.lineage_tags(version)}
    if role == "chief":
        tags[ORACLE_TAG] = oracle
    with stage_run("tune", experiment_id, run_name=tracking.run_name("tune"), tags=tags) as run:
        tracking.log_split_datasets(["train", "val"], version)
        logged = {"seed": params.seed, "model.family": family}
        mlflow.log_params(logged | tracking.flatten({"tune": params.tune.model_dump()}))
        started = time.perf_counter()
        tuner = search_member(params, family, run.info.run_id)
        seconds = time.perf_counter() - started
        summary = summarize(tuner, params, family)
        tuned = tuned_values(summary["best"])
        mlflow.log_params({f"best.{k}": v for k, v in summary["best"].items()})
        best = {k: v for k, v in summary.items() if k.startswith("best_") and v is not None}
        mlflow.log_metrics(best | {"seconds": seconds})
        write_json(paths.TUNE_METRICS, summary)
        paths.TUNED.parent.mkdir(parents=True, exist_ok=True)
        paths.TUNED.write_text(Tuned(**{family: tuned}).model_dump_json(indent=2) + "\n")
        mlflow.log_artifact(str(paths.TUNE_METRICS))
    print(
        f"tune: {family}: best {tuned.model_dump()} ({OBJECTIVE} "
        f"{summary['best_' + OBJECTIVE]:.3f}) of {len(summary['trials'])} trials in "
        f"{seconds:.0f}s -> {paths.TUNED} (MLflow run {run.info.run_id})"
    )


if __name__ == "__main__":
    run_main("tune", main)
