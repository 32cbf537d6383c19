"""params.yaml: defaults, typed parsing, one readable message per offending key."""

from __future__ import annotations

from pathlib import Path
from typing import get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from stages import check_params
from utkface.params import (
    PILLOW_MAX_PIXELS,
    Params,
    ParamsError,
    load_params,
    parse_params,
    run_main,
)

REPO = Path(__file__).resolve().parents[2]


def error_of(raw: dict) -> str:
    with pytest.raises(ParamsError) as error:
        parse_params(raw)
    return str(error.value)


def test_repo_params_yaml_loads():
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # the typed view carries what the file says (aliases included)
    assert params.seed == raw["seed"]
    assert params.ingest.image_size == raw["ingest"]["image_size"]
    assert params.validate_.age_max == raw["validate"]["age_max"]
    assert params.register_.model_name == raw["register"]["model_name"]
    assert params.age_buckets == raw["age_buckets"]


def test_code_defaults():
    params = parse_params({})
    assert params.seed == 42
    assert params.lr is None and params.fixed_lr is None
    assert params.age_buckets == [0, 3, 10, 20, 30, 40, 50, 60, 70]
    assert params.ingest.source == "synthetic" and params.ingest.is_synthetic
    assert params.ingest.image_size == 64
    assert params.ingest.max_image_pixels == 25_000_000
    assert params.validate_.age_max == 116
    assert (params.balance.min_per_age, params.balance.max_per_age) == (20, 200)
    assert params.split.train == pytest.approx(0.7)
    assert params.tune.search_space == {}


def test_a_copy_of_the_repo_file_and_an_empty_file_load(tmp_path):
    copy = tmp_path / "params.yaml"
    copy.write_text((REPO / "params.yaml").read_text())
    assert load_params(copy) == load_params(REPO / "params.yaml")
    copy.write_text("# nothing but a comment\n")
    assert load_params(copy) == parse_params({})


def test_params_are_frozen():
    params = parse_params({})
    with pytest.raises(ValueError, match="frozen"):
        params.seed = 1
    with pytest.raises(ValueError, match="frozen"):
        params.ingest.image_size = 32


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"ingest": {"image_size": "abc"}},
            "ingest.image_size must be an int between 32 and 256, got 'abc'",
        ),
        (
            {"ingest": {"image_size": 16}},
            "ingest.image_size must be an int between 32 and 256, got 16",
        ),
        (
            {"ingest": {"image_size": 300}},
            "ingest.image_size must be an int between 32 and 256, got 300",
        ),
        (
            {"ingest": {"image_size": 64.5}},
            "ingest.image_size must be an int between 32 and 256, got 64.5",
        ),
        (
            {"ingest": {"image_size": True}},
            "ingest.image_size must be an int between 32 and 256, got True",
        ),
        (
            {"ingest": {"max_image_pixels": 99}},
            f"ingest.max_image_pixels must be an int between 10000 and {PILLOW_MAX_PIXELS}, got 99",
        ),
        (
            {"ingest": {"max_image_pixels": PILLOW_MAX_PIXELS + 1}},  # Pillow would refuse first
            f"ingest.max_image_pixels must be an int between 10000 and {PILLOW_MAX_PIXELS}, "
            f"got {PILLOW_MAX_PIXELS + 1}",
        ),
        ({"seed": -1}, "seed must be an int between 0 and 2147483647, got -1"),
        ({"split": {"val": 0.5}}, "split.val must be a number between 0.0 and 0.5, got 0.5"),
        (
            {"split": {"test": "a lot"}},
            "split.test must be a number between 0.0 and 0.5, got 'a lot'",
        ),
        ({"validate": {"age_max": 0}}, "validate.age_max must be an int between 1 and 150, got 0"),
        (
            {"balance": {"augment": {"rotation_deg": 90}}},
            "balance.augment.rotation_deg must be a number between 0 and 45, got 90",
        ),
        ({"balance": {"enabled": "yes"}}, "balance.enabled must be true or false, got 'yes'"),
        ({"train": {"age_loss": "mse"}}, "train.age_loss:"),
        ({"register": {"model_name": "my model"}}, "register.model_name:"),
        ({"ingest": {"source": 3}}, "ingest.source must be a string, got 3"),
    ],
)
def test_wrong_type_or_range_names_the_key(raw, message):
    assert message in error_of(raw)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"bogus": 1}, "bogus"),
        ({"ingest": {"imagesize": 64}}, "ingest.imagesize"),
        ({"train": {"loss_weights": {"age": 1.0, "colour": 2.0}}}, "train.loss_weights.colour"),
        ({"validate": {"age_min": 1}}, "validate.age_min"),
    ],
)
def test_unknown_keys_are_rejected(raw, key):
    assert f"{key} is not a known parameter (typo?)" in error_of(raw)


@pytest.mark.parametrize("value", ["fast", "AUTO", "0.001", 0, 1, 1.5, -0.01, True, [0.01]])
def test_bad_lr(value):
    message = error_of({"lr": value})
    assert "lr: " in message
    assert "must be null, 'auto' or a number between 0 and 1" in message
    assert repr(value) in message


@pytest.mark.parametrize(("value", "fixed"), [(None, None), ("auto", None), (0.003, 0.003)])
def test_good_lr(value, fixed):
    params = parse_params({"lr": value})
    assert params.lr == value
    assert params.fixed_lr == fixed


def _float_keys(model: type[BaseModel] = Params, prefix: str = "") -> dict[str, bool]:
    """Every key of `model` holding a number, dotted as in params.yaml: True for a list of them."""
    keys = {}
    for name, field in model.model_fields.items():
        key, annotation = f"{prefix}{field.alias or name}", field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _float_keys(annotation, f"{key}.")
        elif annotation is float or float in get_args(annotation):
            keys[key] = False
        elif get_origin(annotation) is list and get_args(get_args(annotation)[0])[:1] == (float,):
            keys[key] = True
    return keys


FLOAT_KEYS = _float_keys()


def _nested(key: str, text: str) -> str:
    """`key: text` as params.yaml nests a dotted key, e.g. `train:\n  epochs: 5`."""
    *parents, leaf = key.split(".")
    lines = [f"{'  ' * depth}{part}:" for depth, part in enumerate(parents)]
    return "\n".join([*lines, f"{'  ' * len(parents)}{leaf}: {text}\n"])


def test_the_float_keys_include_those_dvc_writes_in_scientific_notation():
    assert {"lr", "train.reduce_lr.min_lr", "model.finetune.backbone_lr_ratio"} <= set(FLOAT_KEYS)
    assert FLOAT_KEYS["tune.learning_rates"] and FLOAT_KEYS["tune.head.learning_rates"]
    assert "train.epochs" not in FLOAT_KEYS  # an int


@pytest.mark.parametrize("text", ["5e-06", "3e-05", "1E-4"])
@pytest.mark.parametrize("key", sorted(FLOAT_KEYS))
def test_every_float_key_reads_scientific_notation_as_dvc_writes_it(tmp_path, key, text):
    # `dvc exp run -S train.reduce_lr.min_lr=0.000005` writes `min_lr: 5e-06`: a number in
    # YAML 1.2 (as DVC reads it), a string in YAML 1.1
    path = tmp_path / "params.yaml"
    path.write_text(_nested(key, f"[{text}]" if FLOAT_KEYS[key] else text))
    value = load_params(path).model_dump(by_alias=True)
    for part in key.split("."):
        value = value[part]
    assert value == ([float(text)] if FLOAT_KEYS[key] else float(text))


def test_values_as_dvc_writes_them_read_as_before(tmp_path):
    # what `dvc exp run -S` wrote for ints, lists, booleans, null and a flow mapping
    path = tmp_path / "params.yaml"
    path.write_text(
        "lr: null\n"
        "balance:\n  enabled: false\n  max_per_age: 020\n"
        "model:\n  filters:\n  - 32\n  - 64\n  dropout: 0\n"
        "train:\n  epochs: 5\n  reduce_lr: {monitor: val_loss, factor: 0.5, min_lr: 1.0e-06}\n"
        "tune:\n  search_space:\n    dropout:\n    - 0.2\n    - 0.4\n"
    )
    params = load_params(path)
    assert params.lr is None and params.balance.enabled is False
    assert params.balance.max_per_age == 20  # YAML 1.2 has no octal without `0o`
    assert params.model.filters == [32, 64] and params.model.dropout == 0.0
    assert params.train.epochs == 5 and params.train.reduce_lr.min_lr == 1e-06
    assert params.tune.search_space == {"dropout": [0.2, 0.4]}


def test_yaml_1_1_booleans_and_duplicate_keys_are_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("balance:\n  enabled: yes\n")  # a string in YAML 1.2, as DVC reads it
    with pytest.raises(ParamsError, match=r"balance\.enabled must be true or false, got 'yes'"):
        load_params(path)
    path.write_text("seed: 1\nseed: 2\n")
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert str(error.value) == (
        f'{path}: not valid YAML: while constructing a mapping: found duplicate key "seed" with '
        'value "2" (original value: "1") (line 2, column 1)'
    )


def test_min_per_age_above_max_per_age():
    message = error_of({"balance": {"min_per_age": 300, "max_per_age": 200}})
    assert "balance.min_per_age (300) must not exceed balance.max_per_age (200)" in message
    assert (
        parse_params({"balance": {"min_per_age": 50, "max_per_age": 50}}).balance.max_per_age == 50
    )


@pytest.mark.parametrize("buckets", [[0, 10, 10, 20], [0, 20, 10], [5, 10, 20], [3]])
def test_age_buckets_must_increase_from_zero(buckets):
    message = error_of({"age_buckets": buckets})
    assert message.count("age_buckets") == 1
    if len(buckets) > 1:
        assert "must start at 0 and increase strictly" in message


def test_unknown_search_space_knob():
    message = error_of({"tune": {"search_space": {"dropout": [0.2, 0.4], "colour": [1]}}})
    assert "tune.search_space" in message
    assert "unknown knob(s) ['colour']" in message
    assert "dropout" in message.split("allowed:")[1]  # the allowed list is shown


def test_search_space_knob_without_values():
    message = error_of({"tune": {"search_space": {"dense_units": []}}})
    assert "tune.search_space" in message and "['dense_units'] need at least one value" in message


def test_the_finetuned_familys_members_are_not_a_search_knob():
    # a trial fits one member: searching how many would compare nothing
    space = {"finetune": {"search_space": {"members": [1, 2]}}}
    message = error_of({"tune": space})
    assert "unknown knob(s) ['members']" in message
    assert "backbone_lr_ratio" in message.split("allowed:")[1]


def test_known_search_space_knobs_are_accepted():
    space = {"dropout": [0.2, 0.4], "dense_units": [64, 128], "separable": [True, False]}
    assert parse_params({"tune": {"search_space": space}}).tune.search_space == space


def test_several_errors_are_listed_at_once():
    message = error_of(
        {
            "seed": "x",
            "ingest": {"image_size": 8, "colour": True},
            "split": {"val": 0.9},
            "lr": "soon",
        }
    )
    lines = message.splitlines()
    assert lines[0] == "invalid params.yaml:"
    for key in ("seed", "ingest.image_size", "ingest.colour", "split.val", "lr"):
        assert sum(line.strip().startswith(key) for line in lines[1:]) == 1, (key, message)
    assert len(lines) == 6


def test_dvc_exp_run_set_values_ints_for_floats_are_accepted():
    # `dvc exp run -S train.huber_delta=5` hands YAML ints to float fields
    params = parse_params(
        {
            "train": {"huber_delta": 5, "loss_weights": {"age": 1, "gender": 3}},
            "model": {"dropout": 0, "l2": 0},
            "balance": {"augment": {"rotation_deg": 10, "shear_deg": 0}},
            "tune": {"gender_weight": 2},
            "promote": {"max_age_mae_increase": 1},
        }
    )
    assert params.train.huber_delta == 5.0 and isinstance(params.train.huber_delta, float)
    assert params.train.loss_weights.gender == 3.0
    assert params.model.dropout == 0.0
    assert params.balance.augment.rotation_deg == 10.0
    assert params.tune.gender_weight == 2.0


def test_load_params_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_load_params_invalid_yaml_and_non_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("ingest: [unclosed\n")
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert str(error.value) == (  # one line: what is wrong, and where
        f"{path}: not valid YAML: while parsing a flow sequence: expected ',' or ']', but got "
        "'<stream end>' (line 2, column 1)"
    )
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="must hold a mapping of keys, got list"):
        load_params(path)


def test_load_params_reports_the_offending_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("ingest:\n  image_size: abc  # oops\n")
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert "ingest.image_size must be an int between 32 and 256, got 'abc'" in str(error.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"tune": {"learning_rates": [0.001, 2.0]}},
            "tune.learning_rates.1 must be a number between 0.0 and 1.0, got 2.0",
        ),
        ({"age_buckets": [0, -1]}, "age_buckets.1 must be an int of at least 0, got -1"),
        ({"model": {"filters": [64, 0]}}, "model.filters.1 must be an int of at least 1, got 0"),
    ],
)
def test_list_item_errors_describe_the_item(raw, message):
    assert message in error_of(raw)


@pytest.mark.parametrize(
    ("model", "line"),
    [
        ("backbone: finetuned", "model.backbone: renamed to model.family"),
        (
            "family: ensemble",
            "model.family: the ensemble family was retired, beaten on accuracy and time by "
            "finetuned (docs/models.md): use finetuned (the default), pretrained or scratch, "
            "got 'ensemble'",
        ),
    ],
    ids=["renamed-key", "retired-family"],
)
def test_check_params_tells_an_old_params_yaml_what_changed_in_one_line(
    model: str,
    line: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"model:\n  {model}\n")
    with pytest.raises(SystemExit) as stopped:
        run_main("check_params", check_params.main)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[:2] == [
        "check_params: invalid params.yaml:",
        f"  {line}",
    ]
    with pytest.raises(ParamsError) as error:
        load_params(tmp_path / "params.yaml")
    assert str(error.value) == f"invalid params.yaml:\n  {line}"
