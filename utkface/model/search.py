"""The Keras Tuner search: the hypermodel, its objective and the tuner.

Objective (minimised), one number for both tasks because Keras Tuner would sum a list of
objectives unweighted and years of MAE would swamp accuracy:

    val_objective = val_age_mae + tune.gender_weight * (1 - val_gender_accuracy)

With gender_weight = 10, one percentage point of gender accuracy is worth 0.1 year of MAE.

Each model family has its own search: the scratch CNN's (`tune.*`), the finetuned family's
(`tune.finetune.*`) and the pretrained head's
(`tune.head.*`). Every trial builds the model with `build_member` and fits it with `fit_model`,
the loop `train` uses: the same learning-rate schedule (over the search's `epochs`) and the
same callbacks. The winner's values, all of them, reach `train` as one `TunedValues` per
family.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import keras
import keras_tuner as kt

from utkface import paths
from utkface.data.dataset import SplitData, sample_rows
from utkface.model.fitting import (
    build_member,
    fit_model,
    seed_everything,
    stops_early,
)
from utkface.params import Family, ModelParams, Params, TunedValues

OBJECTIVE = "val_objective"
TUNERS: dict[str, type[kt.Tuner]] = {
    "random": kt.RandomSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
}


def combined_objective(
    val_age_mae: float, val_gender_accuracy: float, gender_weight: float
) -> float:
    """Lower is better; see the module docstring."""
    return val_age_mae + gender_weight * (1.0 - val_gender_accuracy)


class ObjectiveCallback(keras.callbacks.Callback):
    """Adds `val_objective` to each epoch's logs, where the tuner and History read it."""

    def __init__(self, gender_weight: float) -> None:
        super().__init__()
        self.gender_weight = gender_weight

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        if logs is not None and "val_age_mae" in logs:
            logs[OBJECTIVE] = combined_objective(
                logs["val_age_mae"], logs["val_gender_accuracy"], self.gender_weight
            )


def member_params(params: Params, member: Family, knobs: dict[str, Any]) -> ModelParams:
    """`params.model` with one trial's knobs applied to `member`'s part (the head's,
    fine-tuning's or the CNN's)."""
    if member == "pretrained":
        return params.model.model_copy(update={"head": params.model.head.model_copy(update=knobs)})
    if member == "finetuned":
        finetune = params.model.finetune.model_copy(update=knobs)
        return params.model.model_copy(update={"finetune": finetune})
    return params.model.model_copy(update=knobs)


class DualHeadHyperModel(kt.HyperModel):
    """A model of family `member` (`build_member`) for each trial's values, fitted by
    `fit_model` on `train` (which also adapts the head's normalisation and age bins).

    Keras Tuner calls `fit(hp, model, *args, **kwargs)` with what `search` was given: here the
    training and validation `SplitData`.
    """

    def __init__(self, params: Params, member: Family, train: SplitData) -> None:
        super().__init__(name=f"dual_head_{member}")
        self.params, self.member, self.train = params, member, train
        self.search_cfg = params.tune.search(member)

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        hp.Choice("lr", self.search_cfg.learning_rates)
        knobs = {k: hp.Choice(k, values) for k, values in self.search_cfg.search_space.items()}
        keras.utils.set_random_seed(self.params.seed)  # every trial starts from the same init
        cfg = member_params(self.params, self.member, knobs)
        model, self.compile_fn = build_member(
            self.member, cfg, self.params.train, self.train, self.params.seed
        )
        return model

    def fit(
        self,
        hp: kt.HyperParameters,
        model: keras.Model,
        train: SplitData,
        val: SplitData,
        callbacks: list[keras.callbacks.Callback] | None = None,
        epochs: int | None = None,
        initial_epoch: int = 0,
        **_: Any,
    ) -> keras.callbacks.History:
        """`epochs` and `initial_epoch` come from Hyperband; other tuners use the search's
        `epochs`."""
        return fit_model(
            model,
            self.params.train,
            hp.get("lr"),
            train,
            val,
            self.params.seed,
            epochs or self.search_cfg.epochs,
            callbacks=[ObjectiveCallback(self.params.tune.gender_weight), *(callbacks or [])],
            early_stopping=stops_early(self.member),
            initial_epoch=initial_epoch,
            compile_fn=self.compile_fn,
            epoch_lines=False,  # Keras Tuner reports each trial itself
        )


def is_worker() -> bool:
    """A Keras Tuner worker of a distributed search (the chief's id is `chief`)."""
    return os.environ.get("KERASTUNER_TUNER_ID", "chief") != "chief"


TunerWrapper = Callable[[type[kt.Tuner]], type[kt.Tuner]]


def make_tuner(
    params: Params, hypermodel: DualHeadHyperModel, wrap: TunerWrapper | None = None
) -> kt.Tuner:
    """The search of `hypermodel`'s family, its tuner class adapted by `wrap` (e.g. to track
    trials), in `models/tuner/<family>`."""
    cfg = hypermodel.search_cfg
    common = {
        "hypermodel": hypermodel,
        "objective": kt.Objective(OBJECTIVE, direction="min"),
        "seed": params.seed,
        "directory": str(paths.TUNER_DIR),
        "project_name": hypermodel.member,
        # the stage clears the directory for a new search; a worker must keep what others write
        "overwrite": not is_worker(),
        "executions_per_trial": cfg.executions_per_trial,
        "max_consecutive_failed_trials": 2,
    }
    budget = (
        {"max_epochs": cfg.epochs} if cfg.tuner == "hyperband" else {"max_trials": cfg.max_trials}
    )
    tuner_class = TUNERS[cfg.tuner] if wrap is None else wrap(TUNERS[cfg.tuner])
    return tuner_class(**budget, **common)


def subsample(data: SplitData, fraction: float, seed: int) -> SplitData:
    """A seeded random share of the training split, so trials stay cheap on CPU."""
    return sample_rows(data, max(1, int(len(data.age) * fraction)), seed)


def search(
    params: Params,
    train: SplitData,
    val: SplitData,
    wrap: TunerWrapper | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    member: Family = "scratch",
) -> kt.Tuner:
    """Run `member`'s search on its `train_fraction` of `train`, validated on `val`."""
    seed_everything(params.seed)
    subset = subsample(train, params.tune.search(member).train_fraction, params.seed)
    hypermodel = DualHeadHyperModel(params, member, subset)
    tuner = make_tuner(params, hypermodel, wrap)
    tuner.search(subset, val, callbacks=list(callbacks or []))
    return tuner


def tuned_values(hyperparameters: dict[str, Any]) -> TunedValues:
    """The hand-over to `train` from a trial's values: `lr` and every searched model knob
    (Keras Tuner's own `tuner/...` bookkeeping values left out)."""
    knobs = {k: v for k, v in hyperparameters.items() if k != "lr" and not k.startswith("tuner/")}
    return TunedValues(lr=float(hyperparameters["lr"]), model=knobs)
