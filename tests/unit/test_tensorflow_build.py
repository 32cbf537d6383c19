"""TensorFlow comes with exactly one of the `cpu` and `gpu` extras, and the package says how to
fix a missing or doubled install."""

from __future__ import annotations

import tomllib
from importlib import metadata, util
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from utkface import tensorflow_build
from utkface.mlops.code import PROJECT_ROOT

PROJECT = "utkface-pipeline"


def _extras() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    extras = {
        name: [Requirement(line) for line in lines]
        for name, lines in project["optional-dependencies"].items()
    }
    return [Requirement(line) for line in project["dependencies"]], extras


def _tensorflow_names(requirements: list[Requirement], machine: str) -> set[str]:
    environment = {"platform_machine": machine, "sys_platform": "linux", "extra": ""}
    return {
        r.name
        for r in requirements
        if r.name.startswith("tensorflow") and (r.marker is None or r.marker.evaluate(environment))
    }


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_the_cpu_and_gpu_extras_each_bring_one_build_and_nothing_else_does(machine: str) -> None:
    base, extras = _extras()
    assert _tensorflow_names(base, machine) == set()
    assert (
        _tensorflow_names(extras["cpu"], machine)
        == {
            "x86_64": {"tensorflow-cpu"},
            "aarch64": {"tensorflow"},
        }[machine]
    )
    (gpu,) = [r for r in extras["gpu"] if r.name != PROJECT]
    assert (gpu.name, gpu.extras) == ("tensorflow", {"and-cuda"})
    for build in ("cpu", "gpu"):  # each is the whole pipeline with its TensorFlow
        assert [r.extras for r in extras[build] if r.name == PROJECT] == [{"pipeline"}], build
    # `.[gpu,dev]` must not install the CPU build beside the CUDA one, directly or through
    # the project's own extras
    for name in extras.keys() - {"cpu", "gpu"}:
        assert _tensorflow_names(extras[name], machine) == set(), name
        assert not [r for r in extras[name] if r.name == PROJECT and r.extras & {"cpu", "gpu"}]


def test_this_environment_has_one_build_and_pins_the_one_that_provides_tensorflow() -> None:
    (build,) = tensorflow_build.installed_builds()
    pinned = tensorflow_build.distribution()
    # what pip knows independently: the distribution whose files hold the `tensorflow` package
    # that imports here (`tensorflow/__init__.py`), found without importing it
    origin = Path(util.find_spec("tensorflow").origin).resolve()
    owners = [
        canonicalize_name(name)
        for name in metadata.packages_distributions()["tensorflow"]
        if origin in {Path(f.locate()).resolve() for f in metadata.files(name) or []}
    ]
    assert owners == [canonicalize_name(build)]
    assert canonicalize_name(pinned) == owners[0]
    tensorflow_build.require_tensorflow()


def test_a_missing_tensorflow_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = util.find_spec
    monkeypatch.setattr(
        util, "find_spec", lambda name, *a: None if name == "tensorflow" else find_spec(name, *a)
    )
    with pytest.raises(ImportError, match=r'pip install -e "\.\[cpu\]", or "\.\[gpu\]"'):
        tensorflow_build.require_tensorflow()


def _pretend_installed(monkeypatch: pytest.MonkeyPatch, names: set[str]) -> None:
    def version(name: str) -> str:
        if name not in names:
            raise metadata.PackageNotFoundError(name)
        return "2.21.0"

    monkeypatch.setattr(metadata, "version", version)


@pytest.mark.parametrize(
    ("installed", "pinned"),
    [
        ({"tensorflow-cpu"}, "tensorflow-cpu"),
        ({"tensorflow"}, "tensorflow"),
        ({"tensorflow-cpu", "tensorflow"}, "tensorflow"),  # the last install's files win
    ],
)
def test_the_pinned_distribution_is_the_installed_build(
    monkeypatch: pytest.MonkeyPatch, installed: set[str], pinned: str
) -> None:
    _pretend_installed(monkeypatch, installed)
    assert tensorflow_build.distribution() == pinned


def test_both_builds_installed_warn_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_installed(monkeypatch, {"tensorflow-cpu", "tensorflow"})
    with pytest.warns(UserWarning, match="pip uninstall -y tensorflow-cpu tensorflow"):
        tensorflow_build.require_tensorflow()
