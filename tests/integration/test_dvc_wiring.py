"""`dvc.yaml` against the code: each stage depends on every project module it imports
(transitively) and lists every params key it reads, so `dvc repro` re-runs what a change
affects. Keys read are recorded while every stage's `main()` runs on a tiny project."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from tiny import REPO, dag_params, enter_project

from utkface.mlops.code import code_files
from utkface.params import load_params

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
STAGES = list(DVC)


def test_the_stages_are_the_pipeline() -> None:
    # every stage after the check depends on its output, so DVC runs it first
    assert all("data/params.checked" in DVC[s]["deps"] for s in STAGES[1:])
    assert DVC["check_params"]["params"] == [{"params.yaml": None}]  # the whole file
    # validation right after ingest: the stages that read ingest's outputs first wait for its
    # verdict, and every later stage reads theirs
    assert [s for s in STAGES if "data/validated" in DVC[s]["deps"]] == ["features", "balance"]
    assert next(iter(DVC["validate"]["outs"][0])) == "data/validated"
    assert STAGES == [
        "check_params",
        "ingest",
        "validate",
        "features",
        "prefix",
        "balance",
        "split",
        "tune",
        "train",
        "evaluate",
    ]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_depends_on_exactly_the_project_modules_it_imports(stage: str) -> None:
    entry = DVC[stage]
    assert entry["cmd"] == f"python -m stages.{stage}"
    imported = {p.relative_to(REPO).as_posix() for p in code_files([f"stages.{stage}"])}
    listed = {d for d in entry["deps"] if d.endswith(".py")}
    assert sorted(imported - listed) == [], f"{stage}: imported modules missing from its deps"
    assert sorted(listed - imported) == [], f"{stage}: deps on modules it does not import"


class Recorder:
    """Stands in for a params section and records the dotted key of every field read; a
    pydantic method such as `model_dump` reads the whole section."""

    def __init__(self, section: BaseModel, prefix: str, reads: set[str]) -> None:
        self._section, self._prefix, self._reads = section, prefix, reads

    def __getattr__(self, name: str) -> Any:
        fields = type(self._section).model_fields
        prop = getattr(type(self._section), name, None)
        if isinstance(prop, property):  # e.g. Params.fixed_lr: record what it reads
            return prop.fget(self)
        if name not in fields:
            self._reads.add(self._prefix.rstrip(".") or "<all params>")
            return getattr(self._section, name)
        key = fields[name].alias or name
        value = getattr(self._section, name)
        if isinstance(value, BaseModel):
            return Recorder(value, f"{self._prefix}{key}.", self._reads)
        self._reads.add(f"{self._prefix}{key}")
        return value


def covered(key: str, listed: list[str]) -> bool:
    return any(key == entry or key.startswith(f"{entry}.") for entry in listed)


# Each model family: the default (finetuned), the pretrained head and the scratch CNN
FAMILIES = ({}, {"model": {"family": "pretrained"}}, {"model": {"family": "scratch"}})
# The stages whose work depends on the family: those that list a `model` key. The others run
# once; were one of them to read `model.*`, the first run would see it unlisted.
MODEL_STAGES = [
    s for s in STAGES if any(str(key).startswith("model") for key in DVC[s].get("params", []))
]


@pytest.fixture(scope="module")
def reads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    """The params keys each stage's main() reads, running the whole DAG on a tiny project, then
    `MODEL_STAGES` again for every other entry of `FAMILIES` (a key read only under other
    settings, e.g. `train.reduce_lr` for the plateau schedule, is listed in dvc.yaml all the
    same)."""
    recorded: dict[str, set[str]] = {stage: set() for stage in STAGES}
    root = tmp_path_factory.mktemp("wiring")
    with pytest.MonkeyPatch.context() as patch:
        enter_project(patch, root)
        for family in FAMILIES:
            (root / "params.yaml").write_text(yaml.safe_dump(dag_params(family)))
            for stage in STAGES if family == FAMILIES[0] else MODEL_STAGES:
                module = importlib.import_module(f"stages.{stage}")
                stage_reads = recorded[stage]
                patch.setattr(
                    module, "load_params", lambda r=stage_reads: Recorder(load_params(), "", r)
                )
                module.main()
    yield recorded


def test_the_family_stages_are_those_after_the_data() -> None:
    assert MODEL_STAGES == ["prefix", "tune", "train", "evaluate"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_lists_every_params_key_it_reads(stage: str, reads: dict[str, set[str]]) -> None:
    listed = DVC[stage]["params"]
    missing = sorted(key for key in reads[stage] if not covered(key, listed))
    assert missing == [], f"{stage} reads params that dvc.yaml does not list for it"


def test_the_recorder_sees_what_a_stage_reads(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("lr: 0.01\n")
    seen: set[str] = set()
    params = Recorder(load_params(tmp_path / "params.yaml"), "", seen)
    assert params.fixed_lr == 0.01 and params.validate_.age_max == 116
    params.model.model_dump()
    assert seen == {"lr", "validate.age_max", "model"}


def _outputs() -> dict[str, dict]:
    """Every declared output and metrics file: path -> its options."""
    found: dict[str, dict] = {}
    for entry in DVC.values():
        for item in entry.get("outs", []) + entry.get("metrics", []):
            path, options = next(iter(item.items())) if isinstance(item, dict) else (item, {})
            found[path] = options or {}
    return found


def test_metrics_and_plot_tables_are_git_files_and_nothing_is_auto_plotted() -> None:
    """`cache: false` files are committed with dvc.lock (so `dvc exp show` and `dvc plots diff`
    read them from any commit or experiment); images and Data Docs stay in the cache; plots
    are only the top-level definitions, never a stage's whole files."""
    outputs = _outputs()
    assert not [stage for stage, entry in DVC.items() if "plots" in entry]
    top = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    plotted = set()
    for definition in top:
        if isinstance(definition, str):  # an image
            plotted.add(definition)
            continue
        (props,) = definition.values()
        plotted |= set(props["y"])
    for path in plotted:
        assert path in outputs, path
        committed = outputs[path].get("cache", True) is False
        assert committed == (not path.endswith(".png")), path
    metrics = {p for e in DVC.values() for i in e.get("metrics", []) for p in i}
    assert metrics == {"metrics/tune.json", "metrics/train.json", "metrics/evaluate.json"}
    assert all(outputs[p]["cache"] is False for p in metrics)
