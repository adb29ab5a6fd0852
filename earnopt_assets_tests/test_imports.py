"""Importing earnopt is cheap and side-effect free (issue #10).

Each import runs in a fresh interpreter, so what one test imported cannot hide what another pulls in:

* the package, the client, the features and every domain module load neither TensorFlow/Keras, nor Dagster,
  nor the code location (``earnopt_assets.definitions``) — the domain never imports Dagster (docs/ARCHITECTURE.md);
* the code location itself loads without TensorFlow/Keras (models are imported inside the functions that train);
* importing the asset modules does not read the catalog (partitions must not be frozen at import).
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import earnopt_assets

pytestmark = pytest.mark.slow  # one fresh interpreter per import

REPO_ROOT = Path(__file__).resolve().parent.parent

# Entry points users import directly. Add a module here when it becomes one.
LIGHT_MODULES = [
    "earnopt_assets",
    "earnopt_assets.api_schemas",
    "earnopt_assets.client",
    "earnopt_assets.ingestion.features",
]

# Every module of these plain-Python packages is checked, so a renamed or new module (the forecasting package
# is being split into a predictor subpackage) is covered without editing this file.
DOMAIN_PACKAGES = ["numerics", "ingestion", "forecasting", "anomaly", "allocation"]

HEAVY = ("tensorflow", "keras")
CODE_LOCATION = "earnopt_assets.definitions"


def _domain_modules() -> list[str]:
    names = []
    for package in DOMAIN_PACKAGES:
        path = Path(earnopt_assets.__file__).parent / package
        names.append(f"earnopt_assets.{package}")
        for info in pkgutil.walk_packages([str(path)], prefix=f"earnopt_assets.{package}."):
            names.append(info.name)
    return sorted(names)


def _loaded_after_import(module: str, code: str = "", env: dict | None = None) -> dict:
    """Import ``module`` in a fresh interpreter; return which of the watched modules it loaded."""
    script = (
        f"import importlib, json, sys\nimportlib.import_module({module!r})\n{code}\n"
        "watched = ('tensorflow', 'keras', 'dagster', 'earnopt_assets.definitions')\n"
        "print(json.dumps({name: name in sys.modules for name in watched}))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert completed.returncode == 0, f"import {module} failed:\n{completed.stderr[-3000:]}"
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", sorted(set(LIGHT_MODULES + _domain_modules())))
def test_module_imports_without_tensorflow_dagster_or_the_code_location(module: str) -> None:
    loaded = _loaded_after_import(module)
    assert not any(loaded[name] for name in HEAVY), f"import {module} loads TensorFlow/Keras: import it inside the function that trains or predicts"
    assert not loaded[CODE_LOCATION], f"import {module} builds the Dagster definitions"
    assert not loaded["dagster"], f"import {module} imports dagster: domain and client code stay Dagster-free"


def test_domain_module_list_is_not_empty() -> None:
    # Guards the discovery above: an empty walk would make the parametrized test vacuous.
    modules = _domain_modules()
    assert "earnopt_assets.ingestion.features" in modules
    assert any(name.startswith("earnopt_assets.forecasting.") for name in modules)


def test_code_location_loads_without_tensorflow() -> None:
    loaded = _loaded_after_import(CODE_LOCATION, "sys.modules['earnopt_assets.definitions'].defs.get_repository_def()")
    assert loaded[CODE_LOCATION] and loaded["dagster"]
    assert not any(loaded[name] for name in HEAVY), "loading the code location imports TensorFlow/Keras"


@pytest.mark.parametrize("module", ["earnopt_assets.defs.ingestion", "earnopt_assets.defs.forecasting",
                                    "earnopt_assets.defs.anomalies", "earnopt_assets.defs.allocation"])
def test_asset_modules_do_not_read_the_catalog_at_import(module: str, tmp_path: Path) -> None:
    """Partitions and assets are built from the catalog when the Definitions are built, not when a module is
    imported: a module-level read freezes the protocol list and fails imports on a machine without a catalog."""
    loaded = _loaded_after_import(module, env={"EARNOPT_CATALOG": str(tmp_path / "no_catalog.yaml"),
                                               "EARNOPT_DATA_DIR": str(tmp_path / "no_data")})
    assert not any(loaded[name] for name in HEAVY)
    assert not (tmp_path / "no_data").exists(), f"import {module} created the data directory"
