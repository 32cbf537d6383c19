"""Stage `check_params`: validate the whole of params.yaml before any other stage runs.

DVC removes a stage's outputs before it runs the stage, so a bad value that only `train` would
have refused (`dvc exp run -S lr=-1`) used to cost the trained model first. Every stage depends
on this stage's output, so DVC runs it first and stops here, with every output still in place.
The output's content never changes, so a valid change re-runs only the stages that read it.
"""

from __future__ import annotations

from utkface import paths
from utkface.params import ParamsError, load_params, run_main

CHECKED = "params.yaml is valid: every stage may run\n"
UNDO = (
    "nothing was removed; undo the change with `git checkout params.yaml`, or run the "
    "experiment again with a valid value (`dvc exp run -S key=value`)"
)


def main() -> None:
    try:
        load_params()
    except ParamsError as error:
        raise ParamsError(f"{error}\n{UNDO}") from None
    paths.PARAMS_CHECKED.parent.mkdir(parents=True, exist_ok=True)
    paths.PARAMS_CHECKED.write_text(CHECKED)


if __name__ == "__main__":
    run_main("check_params", main)
