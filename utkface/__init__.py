"""utkface-pipeline: the library behind the DVC stages, the `utkface` command and the web app.

Layers, each importing only from those below it (docs/architecture.md; `lint-imports` checks
pyproject.toml's contracts): `cli` -> `app` -> `inference` -> `mlops` -> `model`, `scoring`,
`checks` -> `data` -> `params` -> `paths`, `console`, `outputs`, `tensorflow_build`.
"""

from utkface import console

console.quiet_libraries()
