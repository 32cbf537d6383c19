"""The saved model on the validation split, run as it will be served: what calibrates its age
interval and the `saved_val_*` metrics by which `utkface promote` ranks registered versions.

Training histories show each model during fit; these figures are of the files `train` saved
(the head's ONNX graph, the CNN after its BatchNorm statistics and test-time flip), combined
by the one rule the served model uses (`families.combine`: averaged, then clamped)."""

from __future__ import annotations

from collections.abc import Sequence

from utkface import paths
from utkface.data.labels import AGE
from utkface.inference.evaluation import served_inputs
from utkface.inference.families import P_FEMALE, calibrate_interval, combine, load_family
from utkface.params import Member
from utkface.scoring.age_interval import AgeInterval
from utkface.scoring.metrics import age_metrics, gender_metrics


def judge_saved_model(
    members: Sequence[Member], age_max: int
) -> tuple[AgeInterval, dict[str, float]]:
    """The age interval calibrated on the validation split and the saved model's validation
    metrics there, each family fed what the served model gives it (`served_inputs`)."""
    val = {m: served_inputs(m, "val") for m in members}
    outputs = [load_family(m, paths.served_file(m))(inputs.images) for m, inputs in val.items()]
    truth = next(iter(val.values()))
    interval = calibrate_interval(outputs, truth.age, age_max)
    answers = combine(outputs, age_max)
    age = age_metrics(truth.age, answers[AGE])
    gender = gender_metrics(truth.gender, answers[P_FEMALE])
    return interval, {
        "saved_val_age_mae": age["age_mae"],
        "saved_val_age_bias": age["age_bias"],
        "saved_val_gender_accuracy": gender["gender_accuracy"],
    }
