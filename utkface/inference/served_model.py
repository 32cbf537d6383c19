"""The served model as MLflow "models from code": logging copies this file into the model, and
loading the model runs it (with the project code the model carries on the path) instead of
unpickling a Python object, so a model store holds no pickle that could run code on load.
"""

from mlflow.models import set_model

from utkface.inference.pyfunc import AgeGenderModel

set_model(AgeGenderModel())
