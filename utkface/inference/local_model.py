"""A logged model's folder answered without importing MLflow: how `utkface predict` loads the
champion, about 1 s sooner than `mlflow.pyfunc.load_model`, which imports all of MLflow first
(a cold start of 1.1-1.5 s against 2.3-2.5 s on a 2-core Intel Xeon: docs/benchmarks.md).

MLflow runs a model with the project code the model carries (its `code` folder, put first on
the path); here the code is the one installed. So only a model that both would run the same
way is loaded here: logged as code by `utkface.inference.pyfunc_logging` (MLflow's
`code_model` loader), whose code folder and `served_model.py` are, file for file, the
installed ones. `load` returns None for any other model, which the caller leaves to MLflow
(`utkface.inference.client.load_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ruamel.yaml import YAML, YAMLError

from utkface.inference.answering import FaceAnswerer
from utkface.mlops.code import PROJECT_ROOT

MLMODEL = "MLmodel"
PYFUNC_FLAVOR = "python_function"
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
SERVED_MODEL = Path(__file__).with_name("served_model.py")  # imports MLflow: not imported here


def pyfunc_flavor(folder: Path) -> dict[str, Any]:
    """The python_function flavor of the model in `folder` (its `MLmodel`); empty when there
    is none or it cannot be read."""
    try:
        description = YAML(typ="safe").load((folder / MLMODEL).read_text())
    except (OSError, YAMLError):
        return {}
    flavors = description.get("flavors") if isinstance(description, dict) else None
    flavor = flavors.get(PYFUNC_FLAVOR) if isinstance(flavors, dict) else None
    return flavor if isinstance(flavor, dict) else {}


def _same_file(logged: Path, installed: Path) -> bool:
    return installed.is_file() and logged.read_bytes() == installed.read_bytes()


def runs_installed_code(folder: Path, flavor: Mapping[str, Any]) -> bool:
    """Whether MLflow would run the model in `folder` with this installed code: a model logged
    as code whose `served_model.py` and code files are all the installed ones."""
    if flavor.get("loader_module") != CODE_LOADER or not flavor.get("code"):
        return False
    script = folder / Path(str(flavor.get("model_code_path", ""))).name
    code = folder / str(flavor["code"])
    if not script.is_file() or not code.is_dir():
        return False
    logged = sorted(code.rglob("*.py"))
    return _same_file(script, SERVED_MODEL) and all(
        _same_file(path, PROJECT_ROOT / path.relative_to(code)) for path in logged
    )


@dataclass(frozen=True)
class LocalModel:
    """The served model of a local folder, with the pyfunc's `model_config` and `predict`."""

    model_config: dict[str, Any]
    answerer: FaceAnswerer

    def predict(self, data: pd.DataFrame, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        """As the pyfunc's `predict`; raises `answering.InvalidInput`."""
        return self.answerer.predict(data, params)


def load(
    folder: Path, flavor: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> LocalModel | None:
    """The model in `folder`, whose `pyfunc_flavor` is `flavor`, when this installed code runs
    it as MLflow would (see the module), else None; `overrides` replace the entries its model
    config has, as MLflow's `load_model(model_config=...)` does."""
    if not runs_installed_code(folder, flavor):
        return None
    config = dict(flavor.get("config") or {})
    config |= {key: value for key, value in (overrides or {}).items() if key in config}
    artifacts = {
        name: str(folder / spec["path"]) for name, spec in (flavor.get("artifacts") or {}).items()
    }
    return LocalModel(config, FaceAnswerer.load(config, artifacts))
