"""The DVC stages: one module per stage of `dvc.yaml`, run as `python -m stages.<name>`.

Each holds the stage's own small functions and a thin `main()` that reads params and files,
calls into the `utkface` package and writes the outputs. Nothing imports this package.
"""

from utkface import tensorflow_build  # importing utkface quiets TensorFlow and co. first

tensorflow_build.require_tensorflow()  # the pipeline's install, not a serving one (pyproject)
