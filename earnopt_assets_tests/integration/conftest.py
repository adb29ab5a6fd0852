"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from earnopt_assets_tests.conftest import REPO_ROOT


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A persistent DAGSTER_HOME with the local deploy config, as ``scripts/run.sh`` sets it up."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "deploy" / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home
