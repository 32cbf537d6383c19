"""Which TensorFlow build is installed: it comes with the `cpu` or the `gpu` extra, not with
the project itself (pyproject.toml), so a missing or doubled install is named with its fix here
rather than surfacing as an ImportError deep inside Keras."""

from __future__ import annotations

import warnings
from importlib import metadata, util

CPU_BUILD = "tensorflow-cpu"
STANDARD_BUILD = "tensorflow"  # the `gpu` extra's, and the `cpu` extra's off x86_64
INSTALL_HINT = 'pip install -e ".[cpu]", or ".[gpu]" for NVIDIA GPUs on Linux'


def installed_builds() -> list[str]:
    """The TensorFlow distributions installed, of `tensorflow-cpu` and `tensorflow`."""
    found = []
    for name in (CPU_BUILD, STANDARD_BUILD):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def distribution() -> str:
    """The distribution to pin for this environment's TensorFlow."""
    return CPU_BUILD if installed_builds() == [CPU_BUILD] else STANDARD_BUILD


def require_tensorflow() -> None:
    """Raise ImportError with the install command when TensorFlow is missing; warn when both
    builds are installed, since they share the files of the `tensorflow` package and removing
    either breaks the other."""
    if util.find_spec("tensorflow") is None:
        raise ImportError(f"utkface-pipeline needs TensorFlow, from an extra: {INSTALL_HINT}")
    if len(installed_builds()) == 2:
        warnings.warn(
            "both tensorflow-cpu and tensorflow are installed and share one package folder: "
            f"pip uninstall -y tensorflow-cpu tensorflow, then {INSTALL_HINT}",
            stacklevel=2,
        )
