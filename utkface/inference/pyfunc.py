"""The served model as an MLflow pyfunc: `utkface.inference.answering.FaceAnswerer` behind
MLflow's interface, and the signature it is logged with.

Its input, output, parameters and errors are the answerer's (see that module); a request it
cannot answer raises `INVALID_PARAMETER_VALUE`, which `mlflow models serve` answers with HTTP
400 and a message naming each bad row.

This module and the few it imports are all the project code a logged model carries
(`utkface.inference.pyfunc_logging`): no training, tracking or app code.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from utkface.data.labels import AGE, GENDER
from utkface.inference.answering import (
    ANSWER_COLUMNS,
    BOX,
    ERROR,
    FACE,
    FACE_CHECK,
    FACE_MODES,
    FACES,
    IMAGE,
    ON_ERROR,
    ROW,
    FaceAnswerer,
    InvalidInput,
)
from utkface.inference.families import AGE_HIGH, AGE_LOW, P_FEMALE

COLUMN_TYPES = {
    ROW: "long",
    FACES: "long",
    FACE: "long",
    **dict.fromkeys(BOX, "long"),
    AGE: "double",
    AGE_LOW: "double",
    AGE_HIGH: "double",
    GENDER: "string",
    P_FEMALE: "double",
    FACE_CHECK: "string",
    ERROR: "string",
}
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", IMAGE)]),
    outputs=Schema(
        [
            ColSpec(COLUMN_TYPES[name], name, required=name in (ROW, FACES))
            for name in [*ANSWER_COLUMNS, ERROR]
        ]
    ),
    params=ParamSchema(
        [ParamSpec(ON_ERROR, "string", "raise"), ParamSpec(FACES, "string", FACE_MODES[0])]
    ),
)


class AgeGenderModel(mlflow.pyfunc.PythonModel):
    """The pyfunc behind the registered model; its settings live in the model config."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.answerer = FaceAnswerer.load(context.model_config, context.artifacts)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        try:
            return self.answerer.predict(model_input, params)
        except InvalidInput as error:
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None
