"""Typed view of params.yaml, parsed and validated once per process.

Every stage calls `load_params()` and reads attributes; no stage opens the YAML itself.
Unknown keys, wrong types and out-of-range values fail with one message per offending key,
e.g. ``ingest.image_size must be an int between 32 and 256, got 'abc'``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.error import MarkedYAMLError

from utkface import paths


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PILLOW_MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow warns above it and refuses twice it
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


class IngestParams(_Section):
    source: str = "synthetic"
    image_size: Annotated[int, Field(ge=32, le=256)] = 64
    synthetic_count: Annotated[int, Field(ge=10, le=200_000)] = 1200
    # At most Pillow's own guard, which the project leaves as it is: decode_image's limit rules.
    max_image_pixels: Annotated[int, Field(ge=10_000, le=PILLOW_MAX_PIXELS)] = 25_000_000
    max_file_bytes: Annotated[int, Field(ge=1_000)] = 20_000_000

    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"


class ValidateParams(_Section):
    age_max: Annotated[int, Field(ge=1, le=150)] = 116
    min_rows: Annotated[int, Field(ge=1)] = 100
    max_rows: Annotated[int, Field(ge=1)] = 1_000_000
    min_per_gender: Annotated[int, Field(ge=0)] = 50
    min_per_age_bucket: Annotated[int, Field(ge=0)] = 10
    max_rejected_share: Fraction = 0.05  # of the files ingest saw (crop_part1_dev: 0.007)
    max_duplicate_share: Fraction = 0.05  # near copies of another image (crop_part1_dev: 0.017)
    max_label_drift: Fraction = 0.1  # total variation from the committed run's labels: warns
    max_implausible_share: Fraction = 0.05  # faces whose landmarks are implausible (features)
    warn_only: list[str] = []


class AugmentParams(_Section):
    rotation_deg: Annotated[float, Field(ge=0, le=45)] = 15.0
    shift: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    brightness: Annotated[float, Field(ge=0, le=0.9)] = 0.2
    shear_deg: Annotated[float, Field(ge=0, le=30)] = 8.0
    zoom: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    horizontal_flip: bool = True


class BalanceParams(_Section):
    enabled: bool = True
    age_cap: Annotated[int, Field(ge=1, le=150)] = 100
    min_per_age: Annotated[int, Field(ge=0)] = 20
    max_per_age: PositiveInt = 200
    augment: AugmentParams = AugmentParams()

    @model_validator(mode="after")
    def _min_below_max(self) -> BalanceParams:
        if self.min_per_age > self.max_per_age:
            raise ValueError(
                f"balance.min_per_age ({self.min_per_age}) must not exceed "
                f"balance.max_per_age ({self.max_per_age})"
            )
        return self


class SplitParams(_Section):
    val: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.15
    test: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.15

    @property
    def train(self) -> float:
        return 1.0 - self.val - self.test


class ModelAugmentParams(_Section):
    horizontal_flip: bool = True
    rotation: Annotated[float, Field(ge=0, le=0.5)] = 0.04
    zoom: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    translation: Annotated[float, Field(ge=0, le=0.5)] = 0.05
    contrast: Annotated[float, Field(ge=0, le=0.9)] = 0.15


Family = Literal["pretrained", "finetuned", "scratch"]
RENAMED = {"model.backbone": "model.family"}  # an old params.yaml's key: its new name
ENSEMBLE_RETIRED = (
    "the ensemble family was retired, beaten on accuracy and time by finetuned "
    "(docs/models.md): use finetuned (the default), pretrained or scratch"
)


class HeadParams(_Section):
    """The pretrained family's Keras head on the frozen face features."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 30
    units: PositiveInt = 256
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.6
    age_bins: Annotated[int, Field(ge=2, le=100)] = 12
    age_bin_loss_weight: NonNegativeFloat = 1.0  # cross-entropy over the age bins
    age_loss_weight: NonNegativeFloat = 0.05  # Huber on the expected age in years
    gender_loss_weight: NonNegativeFloat = 1.0


class FinetuneParams(_Section):
    """The finetuned family: the CC0 age network's last stage trained with the head.

    The frozen prefix's activations are cached (stage `prefix`) for each face and for `views`
    augmented copies of its aligned age chip (shifted, scaled, brightness and contrast
    jittered), each with its mirror; training draws one view per face and epoch.

    `members` last stages (each with its head) are fitted over the one cached prefix, member
    k seeded by `seed` + 10 k, and served averaged, each on the aligned chip alone: the
    members, not the chip's mirror, average out the variance (docs/models.md)."""

    epochs: Annotated[int, Field(ge=1, le=1000)] = 20
    members: Annotated[int, Field(ge=1, le=8)] = 2
    backbone_lr_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1  # of the head's rate
    views: Annotated[int, Field(ge=0, le=8)] = 2
    shift: Annotated[float, Field(ge=0.0, le=0.3)] = 0.05  # of the chip's side
    scale: Annotated[float, Field(ge=0.0, le=0.3)] = 0.08
    brightness: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1  # of the full range
    contrast: Annotated[float, Field(ge=0.0, le=0.9)] = 0.15


class FeaturesParams(_Section):
    image_size: Annotated[int, Field(ge=32, le=1024)] = 200


class ModelParams(_Section):
    family: Family = "finetuned"  # the best of 3 split seeds on real faces (benchmarks.md)
    head: HeadParams = HeadParams()
    finetune: FinetuneParams = FinetuneParams()
    stem_filters: PositiveInt = 32
    stem_stride: Annotated[int, Field(ge=1, le=2)] = 2
    filters: Annotated[list[PositiveInt], Field(min_length=1, max_length=6)] = [64, 128, 256]
    convs_per_block: Annotated[int, Field(ge=1, le=4)] = 2
    separable: bool = True
    dense_units: PositiveInt = 128
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    l2: NonNegativeFloat = 0.0
    batchnorm_momentum: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.9
    test_time_flip: bool = True
    augment: ModelAugmentParams = ModelAugmentParams()

    @field_validator("family", mode="before")
    @classmethod
    def _not_retired(cls, value: Any) -> Any:
        """An old params.yaml's `ensemble` is told why it went and what to use instead."""
        if value == "ensemble":
            raise PydanticCustomError("retired", ENSEMBLE_RETIRED)
        return value


class EarlyStoppingParams(_Section):
    monitor: str = "val_loss"
    patience: Annotated[int, Field(ge=1)] = 10
    start_from_epoch: Annotated[int, Field(ge=0)] = 0  # epochs neither watched nor restorable


class ReduceLrParams(_Section):
    monitor: str = "val_loss"
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    patience: Annotated[int, Field(ge=1)] = 3
    min_lr: NonNegativeFloat = 1e-5


class LossWeights(_Section):
    age: NonNegativeFloat = 1.0
    gender: NonNegativeFloat = 10.0


class TrainParams(_Section):
    epochs: Annotated[int, Field(ge=1, le=1000)] = 60
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    lr_schedule: Literal["cosine", "plateau"] = "cosine"
    warmup_epochs: Annotated[int, Field(ge=0)] = 2
    age_loss: Literal["huber", "mae"] = "huber"
    huber_delta: Annotated[float, Field(gt=0.0)] = 5.0
    loss_weights: LossWeights = LossWeights()
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    reduce_lr: ReduceLrParams = ReduceLrParams()
    precise_batchnorm: bool = True
    precise_batchnorm_sample: Annotated[int, Field(ge=1)] = 1024
    mixed_precision: bool = False  # the scratch CNN in float16 with float32 variables (GPUs)


Knobs = dict[str, list[float | int | bool | str]]
LearningRates = Annotated[list[Annotated[float, Field(gt=0.0, lt=1.0)]], Field(min_length=1)]


def _check_knobs(value: Knobs, model: type[_Section], fixed: set[str], prefix: str) -> Knobs:
    """`value` if every knob is a field of `model` (but `fixed`) and every value valid."""
    allowed = sorted(set(model.model_fields) - fixed)
    unknown = set(value) - set(allowed)
    if unknown:
        raise ValueError(f"unknown knob(s) {sorted(unknown)}; allowed: {allowed}")
    empty = [k for k, v in value.items() if not v]
    if empty:
        raise ValueError(f"knob(s) {empty} need at least one value")
    for knob, values in value.items():
        for item in values:
            try:
                model.model_validate({knob: item})
            except ValidationError:
                raise ValueError(f"{item!r} is not a valid {prefix}.{knob}") from None
    return value


class SearchParams(_Section):
    """One Keras Tuner search: which tuner, its budget and the values it tries."""

    tuner: Literal["random", "bayesian", "hyperband"] = "random"
    learning_rates: LearningRates = [0.0005, 0.001, 0.005, 0.01]
    max_trials: Annotated[int, Field(ge=1)] = 4
    epochs: Annotated[int, Field(ge=1)] = 3
    executions_per_trial: Annotated[int, Field(ge=1)] = 1
    train_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    search_space: Knobs = {}


class HeadSearchParams(SearchParams):
    """The head's search: trials take seconds on cached features, so it searches wider."""

    tuner: Literal["random", "bayesian", "hyperband"] = "bayesian"
    learning_rates: LearningRates = [0.0003, 0.001, 0.003]
    max_trials: Annotated[int, Field(ge=1)] = 8
    epochs: Annotated[int, Field(ge=1)] = 15
    train_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    search_space: Knobs = {"units": [256, 512], "dropout": [0.5, 0.6, 0.7]}

    @field_validator("search_space")
    @classmethod
    def _known_knobs(cls, value: Knobs) -> Knobs:
        return _check_knobs(value, HeadParams, set(), "model.head")


class FinetuneSearchParams(SearchParams):
    """The finetuned family's search: its knobs are `model.finetune`'s (e.g.
    `backbone_lr_ratio`); an epoch costs a forward and backward pass through the last stage."""

    learning_rates: LearningRates = [0.0003, 0.001, 0.003]
    max_trials: Annotated[int, Field(ge=1)] = 3
    epochs: Annotated[int, Field(ge=1)] = 3
    train_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0

    @field_validator("search_space")
    @classmethod
    def _known_knobs(cls, value: Knobs) -> Knobs:
        return _check_knobs(value, FinetuneParams, {"members"}, "model.finetune")


class TuneParams(SearchParams):
    """The scratch CNN's search (these keys), the head's (`tune.head`) and the finetuned
    family's (`tune.finetune`)."""

    gender_weight: NonNegativeFloat = 10.0
    head: HeadSearchParams = HeadSearchParams()
    finetune: FinetuneSearchParams = FinetuneSearchParams()

    @field_validator("search_space")
    @classmethod
    def _known_knobs(cls, value: Knobs) -> Knobs:
        return _check_knobs(
            value, ModelParams, {"augment", "filters", "family", "head", "finetune"}, "model"
        )

    def search(self, family: Family) -> SearchParams:
        return {"pretrained": self.head, "finetuned": self.finetune}.get(family, self)


class EvaluateParams(_Section):
    sample_grid: Annotated[int, Field(ge=1, le=64)] = 16


class RegisterParams(_Section):
    model_name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")] = (
        "utkface-age-gender"
    )
    max_image_bytes: Annotated[int, Field(ge=1_000)] = 5_000_000
    # `utkface serve` refuses larger requests (413) before reading them: room for two images
    # at the byte limit, base64-encoded in JSON
    max_request_bytes: Annotated[int, Field(ge=2_000)] = 14_000_000

    @model_validator(mode="after")
    def _one_image_fits(self) -> RegisterParams:
        one = -(-self.max_image_bytes * 4 // 3) + 1_000  # base64 of one image, and the JSON
        if self.max_request_bytes < one:
            raise ValueError(
                f"register.max_request_bytes ({self.max_request_bytes}) must hold one image of "
                f"register.max_image_bytes base64-encoded: at least {one}"
            )
        return self


class PromoteParams(_Section):
    max_age_mae_increase: NonNegativeFloat = 0.1
    max_gender_accuracy_decrease: Annotated[float, Field(ge=0.0, le=1.0)] = 0.005


class Params(_Section):
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42
    lr: float | str | None = None
    age_buckets: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2)] = [
        0,
        3,
        10,
        20,
        30,
        40,
        50,
        60,
        70,
    ]
    ingest: IngestParams = IngestParams()
    features: FeaturesParams = FeaturesParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    balance: BalanceParams = BalanceParams()
    split: SplitParams = SplitParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    tune: TuneParams = TuneParams()
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")
    promote: PromoteParams = PromoteParams()

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_or_auto(cls, value: Any) -> Any:
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ValueError("must be null, 'auto' or a number between 0 and 1")
        return float(value)

    @field_validator("age_buckets")
    @classmethod
    def _increasing_from_zero(cls, value: list[int]) -> list[int]:
        if value[0] != 0 or any(b <= a for a, b in pairwise(value)):
            raise ValueError("must start at 0 and increase strictly, e.g. [0, 3, 10, 20]")
        return value

    @property
    def fixed_lr(self) -> float | None:
        """The learning rate forced by params, or None when the tuner's best is used."""
        return None if self.lr in (None, "auto") else float(self.lr)


class TunedValues(_Section):
    """What `tune` found for one model family: the best learning rate and the best value of
    every searched knob."""

    lr: Annotated[float, Field(gt=0.0, lt=1.0)]
    model: dict[str, float | int | bool | str] = {}

    def model_params(self, base: ModelParams) -> ModelParams:
        """`base` with the tuned CNN knobs applied (validated like params.yaml)."""
        return ModelParams.model_validate(base.model_dump() | self.model)

    def head_params(self, base: HeadParams) -> HeadParams:
        """`base` with the tuned head knobs applied (validated like params.yaml)."""
        return HeadParams.model_validate(base.model_dump() | self.model)

    def finetune_params(self, base: FinetuneParams) -> FinetuneParams:
        """`base` with the tuned fine-tuning knobs applied (validated like params.yaml)."""
        return FinetuneParams.model_validate(base.model_dump() | self.model)


class Tuned(_Section):
    """What `tune` hands to `train` (`models/tuned.json`), per model family trained."""

    pretrained: TunedValues | None = None
    finetuned: TunedValues | None = None
    scratch: TunedValues | None = None

    def of(self, family: Family) -> TunedValues | None:
        return getattr(self, family)


def _describe(annotation: Any, metadata: list[Any]) -> str:
    """Human description of what a field accepts, e.g. 'an int between 32 and 256'."""
    names = {int: "an int", float: "a number", bool: "true or false", str: "a string"}
    kind = names.get(annotation, "a value of the documented form")
    low = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), None)
    low = next((m.gt for m in metadata if isinstance(m, annotated_types.Gt)), low)
    high = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), None)
    high = next((m.lt for m in metadata if isinstance(m, annotated_types.Lt)), high)
    if low is not None and high is not None:
        return f"{kind} between {low} and {high}"
    if low is not None:
        return f"{kind} of at least {low}"
    if high is not None:
        return f"{kind} of at most {high}"
    return kind


def _field_for(loc: tuple[Any, ...]) -> Any:
    model: Any = Params
    field = None
    for part in loc:
        if field is not None and part.isdigit() and get_origin(field.annotation) is list:
            field = FieldInfo.from_annotation(get_args(field.annotation)[0])  # a list item
            model = field.annotation
            continue
        fields = getattr(model, "model_fields", None)
        if not fields:
            return field
        key = f"{part}_" if f"{part}_" in fields else part
        if key not in fields:
            return None
        field = fields[key]
        model = field.annotation
    return field


def _format_errors(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(p.removesuffix("_") for p in loc)
        field = _field_for(loc)
        if err["type"] == "extra_forbidden" and key in RENAMED:
            lines.append(f"{key}: renamed to {RENAMED[key]}")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{key} is not a known parameter (typo?)")
        elif field is not None and err["type"] in {
            "int_type",
            "int_parsing",
            "float_type",
            "float_parsing",
            "bool_type",
            "string_type",
            "greater_than_equal",
            "less_than_equal",
            "greater_than",
            "less_than",
        }:
            expected = _describe(field.annotation, field.metadata)
            lines.append(f"{key} must be {expected}, got {err['input']!r}")
        else:
            lines.append(f"{key or 'params'}: {err['msg']}, got {err.get('input')!r}")
    return "invalid params.yaml:\n  " + "\n  ".join(lines)


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping (as read from YAML) into a frozen `Params`."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_format_errors(error)) from None


def yaml_problem(error: YAMLError) -> str:
    """ruamel.yaml's error (several lines, with excerpts of the file) in one line: what is
    wrong and where."""
    if not isinstance(error, MarkedYAMLError) or error.problem is None:
        return " ".join(str(error).split())
    context = f"{error.context}: " if error.context else ""
    mark = error.problem_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"{context}{error.problem}{where}"


def load_params(path: Path = paths.PARAMS, only: Sequence[str] | None = None) -> Params:
    """Read and validate params.yaml once; every stage starts here. With `only` (top-level
    keys, as in the file), just those sections are read and validated and the rest keep their
    defaults: a command that reads `register` keeps working when another section holds a bad
    value (the `check_params` stage refuses it before the pipeline runs). The file is read as
    YAML 1.2, as DVC reads and writes it: `dvc exp run -S train.reduce_lr.min_lr=0.000005`
    writes `5e-06`, a number in YAML 1.2 and a string in YAML 1.1."""
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the repository root)")
    try:
        raw = YAML(typ="safe", pure=True).load(path) or {}
    except YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {yaml_problem(error)}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must hold a mapping of keys, got {type(raw).__name__}")
    if only is not None:
        raw = {key: value for key, value in raw.items() if key in only}
    return parse_params(raw)


def run_main(prog: str, main: Callable[[], object]) -> None:
    """Run a stage's `main`; invalid params end it with `prog: ` and one line per bad key on
    stderr and exit status 2, not a traceback."""
    try:
        main()
    except ParamsError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        sys.exit(2)
