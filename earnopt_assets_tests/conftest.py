"""Shared fixtures: a tmp data directory with a real catalog, and resources pointing at it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CATALOG = REPO_ROOT / "data" / "catalog.yaml"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty earnopt data dir; EARNOPT_DATA_DIR points at it for the test."""
    directory = tmp_path / "data"
    directory.mkdir()
    monkeypatch.setenv("EARNOPT_DATA_DIR", str(directory))
    return directory


@pytest.fixture
def catalog_path(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the default catalog inside the tmp data dir; EARNOPT_CATALOG points at it."""
    path = data_dir / "catalog.yaml"
    shutil.copy(DEFAULT_CATALOG, path)
    monkeypatch.setenv("EARNOPT_CATALOG", str(path))
    return path


@pytest.fixture
def small_catalog_path(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default catalog cut down to three protocols (one per kind), for fast tests."""
    raw = yaml.safe_load(DEFAULT_CATALOG.read_text())
    keep = {"honeygain", "storj", "akash"}
    raw["protocols"] = [p for p in raw["protocols"] if p["name"] in keep]
    path = data_dir / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.setenv("EARNOPT_CATALOG", str(path))
    return path


@pytest.fixture
def catalog(catalog_path: Path):
    from earnopt_assets.catalog import load_catalog

    return load_catalog(catalog_path)


@pytest.fixture
def small_catalog(small_catalog_path: Path):
    from earnopt_assets.catalog import load_catalog

    return load_catalog(small_catalog_path)


@pytest.fixture
def resources(data_dir: Path, catalog_path: Path) -> dict:
    from earnopt_assets.resources import resources_for

    return resources_for(data_dir, catalog_path)


@pytest.fixture
def small_resources(data_dir: Path, small_catalog_path: Path) -> dict:
    from earnopt_assets.resources import resources_for

    return resources_for(data_dir, small_catalog_path)
