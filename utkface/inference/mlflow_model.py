"""A served model loaded by MLflow (`mlflow.pyfunc.load_model`), for what
`utkface.inference.local_model` leaves to it: a `models:/` or remote URI, or a model whose
code is not the installed code. Importing this module imports MLflow."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel

from utkface.inference.answering import InvalidInput
from utkface.mlops import store, tracking


@dataclass(frozen=True)
class MlflowModel:
    """A pyfunc with `local_model.LocalModel`'s interface: a request it refuses raises
    `InvalidInput`, as the answerer does."""

    pyfunc: PyFuncModel

    @property
    def model_config(self) -> dict[str, Any]:
        return self.pyfunc.model_config

    def predict(self, data: pd.DataFrame, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        try:
            return self.pyfunc.predict(data, params=dict(params or {}))
        except MlflowException as error:
            raise InvalidInput(error.message) from None


def load(uri: str, local: bool, overrides: Mapping[str, Any] | None = None) -> MlflowModel:
    """The pyfunc at `uri` (`local`: a folder on this machine, which needs no store), with
    `overrides` of its model config; raises `MlflowException`, `OSError` or `ImportError` (a
    scratch CNN without Keras)."""
    mlflow.set_tracking_uri(store.tracking_uri())
    if not local:
        tracking.check_store()
    # MLflow's check of the environment scans every installed distribution (0.3-0.6 s of a
    # cold start); a local model's few pins are checked by the client instead
    return MlflowModel(
        mlflow.pyfunc.load_model(
            uri, suppress_warnings=local, model_config=dict(overrides) if overrides else None
        )
    )
