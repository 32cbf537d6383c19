"""Shared fixtures. The tests come in tiers, one folder each:

- unit/: pure functions on tiny in-memory data;
- data/: the data stages (ingest, validate, balance, split), sources and the GX suite;
- model/: the network, the fit loop, tune and train on tiny synthetic projects;
- integration/: the MLflow store, registry, served model, CLI, web app and the DVC DAG;
- realdata/: ../shared/utkface when it exists (skipped otherwise).

Helpers imported by name live beside this file: `tiny` (tiny configs, data and projects),
`model_fixtures` (a throwaway MLflow store and registered tiny models), `raw_files`.
"""

from __future__ import annotations

import pytest

from utkface.model.fitting import seed_everything


@pytest.fixture
def seeded() -> None:
    """Initialisers draw from Keras' global generator: unseeded, a tiny ReLU head can start dead
    (constant outputs) and make a test pass or fail by chance."""
    seed_everything(0)
