"""The DVC stages: one module per stage of `dvc.yaml`, run as `python -m stages.<name>`.

Each holds the stage's own small functions and a thin `main()` that reads params and files,
calls into the `utkface` package and writes the outputs. Nothing imports this package.
"""

import utkface  # noqa: F401  (quiets TensorFlow and co. before a stage module imports them)
