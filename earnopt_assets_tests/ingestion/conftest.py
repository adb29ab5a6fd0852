"""Fixtures of the ingestion tests: a data dir with landing/archive and a one-call ingestion."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from earnopt_assets.ingestion.run import ingest_landing
from earnopt_assets.settings import EarnoptPaths


@pytest.fixture
def paths(data_dir: Path) -> EarnoptPaths:
    return EarnoptPaths(data_dir).ensure()


@pytest.fixture
def ingest(paths, small_catalog):
    def run():
        with duckdb.connect(str(paths.warehouse)) as conn:
            return ingest_landing(conn, paths, small_catalog)

    return run
