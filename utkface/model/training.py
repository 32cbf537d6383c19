"""Training a model family: what `tune` handed over applied to the params, the one fit loop,
the model finished for serving and saved, and the summary `metrics/train.json` holds.

`pretrained` fits the head on the cached face features, `finetuned` the head with the age
network's last stage on the cached prefix activations, `scratch` the CNN on images. What `tune`
found (`models/tuned.json`) is applied in full: the family's best value of every searched knob,
and its learning rate unless params' top-level `lr` is a number, so `dvc exp run -S lr=0.0005`
retrains without re-running `tune`. MLflow is the caller's: this module returns what to log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from utkface import paths
from utkface.data.dataset import SplitData
from utkface.model import finetuned
from utkface.model.batchnorm import recompute_statistics
from utkface.model.fitting import fit, load_inputs, stops_early
from utkface.model.head import serving_head
from utkface.model.head_export import save_head_onnx
from utkface.model.network import with_test_time_flip
from utkface.model.saving import save_model
from utkface.params import (
    EarlyStoppingParams,
    Family,
    ModelParams,
    Params,
    Tuned,
    TunedValues,
)


def resolve_lr(fixed_lr: float | None, tuned: TunedValues | None) -> tuple[float, str]:
    """The learning rate to train with and where it came from ('params' or 'tune')."""
    if fixed_lr is not None:
        return fixed_lr, "params"
    if tuned is None:
        raise ValueError(
            f"lr is null/auto but {paths.TUNED} has no tuned values for this model family: run "
            "the tune stage (dvc repro tune) or set a number, e.g. dvc exp run -S lr=0.001"
        )
    return tuned.lr, "tune"


def load_tuned() -> Tuned:
    """What tune handed over (nothing before tune has run)."""
    if not paths.TUNED.exists():
        return Tuned()
    return Tuned.model_validate_json(paths.TUNED.read_text())


def member_config(params: Params, member: Family, tuned: TunedValues | None) -> ModelParams:
    """`params.model` with the knobs tuned for `member` applied."""
    if tuned is None:
        return params.model
    if member == "pretrained":
        return params.model.model_copy(update={"head": tuned.head_params(params.model.head)})
    if member == "finetuned":
        finetune = tuned.finetune_params(params.model.finetune)
        return params.model.model_copy(update={"finetune": finetune})
    return tuned.model_params(params.model)


def history_table(history: dict[str, list[float]]) -> pd.DataFrame:
    """Per-epoch history as the DVC plots / MLflow table (epoch starts at 1)."""
    table = pd.DataFrame(history)
    table.insert(0, "epoch", np.arange(1, len(table) + 1))
    return table


def best_epoch_metrics(history: pd.DataFrame, es: EarlyStoppingParams | None) -> dict[str, float]:
    """Metrics at the epoch whose weights EarlyStopping kept: the best `es.monitor` from epoch
    `es.start_from_epoch + 1` on, or the last epoch when training ended before that (or
    without early stopping, `es` None)."""
    watched = history.iloc[es.start_from_epoch :] if es else history.iloc[:0]
    row = history.loc[watched[es.monitor].idxmin()] if len(watched) else history.iloc[-1]
    return {k: float(v) for k, v in row.items()} | {"epochs_run": len(history)}


def inference_model(
    model: keras.Model, params: Params, train: SplitData, member: Family = "scratch"
) -> keras.Model:
    """The model to save of the pretrained or scratch family. A head: its `age` and `gender`
    outputs. The CNN: BatchNorm statistics recomputed over the training split
    (`train.precise_batchnorm`), then each face averaged with its mirror
    (`model.test_time_flip`)."""
    if member == "pretrained":
        return serving_head(model)
    if params.train.precise_batchnorm:
        recompute_statistics(model, train.images, params.train.batch_size, params.seed)
    return with_test_time_flip(model) if params.model.test_time_flip else model


def effective_model_params(params: Params, tuned: Tuned) -> dict:
    """The model params train uses, tuned knobs applied, keyed as in params.yaml: the head's
    for `pretrained`, with fine-tuning's for `finetuned`, the CNN's for `scratch`."""
    family = params.model.family
    cfg = member_config(params, family, tuned.of(family))
    if family == "scratch":
        return {"family": family} | cfg.model_dump(exclude={"family", "head", "finetune"})
    logged = {"family": family, "head": cfg.head.model_dump()}
    if family == "finetuned":
        logged["finetune"] = cfg.finetune.model_dump()
    return logged


def epochs(member: Family, cfg: ModelParams, params: Params) -> int:
    """How many epochs `member` fits (the heads: no early stopping)."""
    return {"pretrained": cfg.head.epochs, "finetuned": cfg.finetune.epochs}.get(
        member, params.train.epochs
    )


@dataclass
class TrainedMember:
    """One model family as trained: the saved model, its history, its summary for
    metrics/train.json, the validation inputs it was judged on, its speed and how many models
    it fitted (the finetuned family's members; their mean is its history and summary)."""

    model: keras.Model
    history: pd.DataFrame
    summary: dict
    val: SplitData
    speed: dict[str, float]  # seconds and images per second: MLflow's, not DVC's
    members: int = 1

    def example(self, rows: int = 2) -> np.ndarray | dict[str, np.ndarray]:
        """The first validation inputs, as the saved model takes them (its input example)."""
        if isinstance(self.val.images, dict):
            return finetuned.example_inputs(self.val, rows)
        return self.val.images[:rows]

    def report(self) -> str:
        """E.g. 'lr=0.001 (tune), 12 epochs in 30s (4000 rows/s): val_age_mae=5.10 ...'."""
        s = self.summary
        return (
            f"lr={s['lr_used']} ({s['lr_source']}), {s['epochs_run']} epochs in "
            f"{self.speed['seconds']:.0f}s ({self.speed['images_per_second']:.0f} rows/s): "
            f"val_age_mae={s['val_age_mae']:.2f} "
            f"val_gender_accuracy={s['val_gender_accuracy']:.3f}"
        )


def train_member(
    params: Params,
    member: Family,
    tuned: TunedValues | None,
    lr: float,
    lr_source: str,
    callbacks: Callable[[str], list[keras.callbacks.Callback]],
) -> TrainedMember:
    """Fit, finish and save `member` (its model file, and the ONNX graphs it is served by).
    The finetuned family fits `model.finetune.members` models (`finetuned.member_seed`); its
    history and summary are their mean. `callbacks(prefix)` gives each fit's callbacks, the
    fit's metrics named with `prefix` ('' for one model, `member<k>_` for several)."""
    cfg = member_config(params, member, tuned)
    train, val = load_inputs(member, "train"), load_inputs(member, "val")
    used = {"lr_used": lr, "lr_source": lr_source, "train_rows": len(train.age)}
    count = cfg.finetune.members if member == "finetuned" else 1
    started = time.perf_counter()
    models, histories = [], []
    for index in range(count):
        model, history = fit(
            cfg,
            params.train,
            lr,
            train,
            val,
            finetuned.member_seed(params.seed, index),
            epochs(member, cfg, params),
            callbacks=callbacks(f"member{index}_" if count > 1 else ""),
            member=member,
        )
        models.append(model)
        histories.append(history_table(history))
    seconds = time.perf_counter() - started
    table = pd.concat(histories).groupby("epoch", as_index=False).mean()
    early = params.train.early_stopping if stops_early(member) else None
    rows = len(train.age) * sum(len(history) for history in histories)
    speed = {"seconds": seconds, "images_per_second": rows / seconds}
    summary = best_epoch_metrics(table, early) | used
    paths.MODEL.mkdir(parents=True, exist_ok=True)
    if member == "finetuned":  # served: the members' age networks and heads, averaged
        served = finetuned.ensemble(models)
        finetuned.export(models, paths.served_file(member), paths.FINETUNED_AGE_NETWORK)
    else:
        served = inference_model(models[0], params, train, member)
    if member == "pretrained":  # served on ONNX Runtime, with the bins for its interval
        save_head_onnx(models[0], paths.served_file(member))
    save_model(served, paths.member_model(member))  # the same weights, the same bytes
    return TrainedMember(served, table, summary, val, speed, count)
