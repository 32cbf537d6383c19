"""The saved model on the validation split, run as it will be served: what calibrates its age
interval and the `saved_val_*` metrics by which `utkface promote` ranks registered versions.

Training histories show each model during fit; these figures are of the file `train` saved
(the head's ONNX graph, the CNN after its BatchNorm statistics and test-time flip), answered
by the one rule the served model uses (`families.to_answers`: the age clamped)."""

from __future__ import annotations

from utkface import paths
from utkface.data.labels import AGE
from utkface.inference.evaluation import served_inputs
from utkface.inference.families import P_FEMALE, calibrate_interval, load_family, to_answers
from utkface.params import Family
from utkface.scoring.age_interval import AgeInterval
from utkface.scoring.metrics import age_metrics, gender_metrics


def judge_saved_model(family: Family, age_max: int) -> tuple[AgeInterval, dict[str, float]]:
    """The age interval calibrated on the validation split and the saved model's validation
    metrics there, the family fed what the served model gives it (`served_inputs`)."""
    val = served_inputs(family, "val")
    outputs = load_family(family, paths.served_file(family))(val.images)
    interval = calibrate_interval(outputs, val.age, age_max)
    answers = to_answers(outputs, age_max)
    age = age_metrics(val.age, answers[AGE])
    gender = gender_metrics(val.gender, answers[P_FEMALE])
    return interval, {
        "saved_val_age_mae": age["age_mae"],
        "saved_val_age_bias": age["age_bias"],
        "saved_val_gender_accuracy": gender["gender_accuracy"],
    }
