"""The DVC stages: one module per stage of `dvc.yaml`, run as `python -m stages.<name>`.

Each holds the stage's own small functions and a thin `main()` that reads params and files,
calls into the `utkface` package and writes the outputs. Nothing imports this package.
"""

import sys

from utkface import console, tensorflow_build  # quiets TensorFlow and co. before they load

tensorflow_build.require_tensorflow()  # the pipeline's install, not a serving one (pyproject)
if sys.argv[0] == "-m":  # run as `python -m stages.<name>` (DVC), not imported by a test
    console.filter_native_stderr()
